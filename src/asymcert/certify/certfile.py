"""``certificates.safetensors``: per test input the label, the decision and the radius per norm.

Tensors only (no pickles); the method, guarantee, timing and norms are JSON strings in the safetensors
metadata. Files written before the guarantee was stored get it from :func:`legacy_guarantee`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from asymcert.certify.result import RAW_UNITS, Certificate, Guarantee, norm_label, normalize_norm
from asymcert.checkpoint import atomic_write
from asymcert.errors import CheckpointError
from asymcert.jsontext import parse_json
from asymcert.runfolder import dumps_strict

_FIXED = ("label", "predicted", "abstained")


def save_certificates(path: Path, cert: Certificate, labels: torch.Tensor) -> None:
    """Per-input certificates (N inputs) as safetensors, written atomically.

    Args:
        path: the file to write.
        cert: N certificates.
        labels: (N,) true labels.
    """
    tensors = {"label": labels.cpu().contiguous(), "predicted": cert.predicted.cpu().contiguous()}
    for p, r in cert.radii.items():
        tensors[f"radius_{norm_label(p)}"] = r.cpu().contiguous()
    for k, v in cert.extra.items():
        tensors[k] = v.detach().cpu().contiguous()
    if cert.abstained is not None:
        tensors["abstained"] = cert.abstained.cpu().contiguous()
    # "deterministic" stays for readers older than "guarantee"
    meta = {
        "method": cert.method,
        "guarantee": dumps_strict(cert.guarantee.value),
        "deterministic": dumps_strict(cert.deterministic),
        "alpha": dumps_strict(cert.alpha),
        "seconds": repr(cert.seconds),
        "binary": dumps_strict(cert.binary),
        "norms": dumps_strict([norm_label(p) for p in cert.radii]),
        "units": dumps_strict(cert.units),
    }
    # serialised in memory and written by Python, so a full disk raises OSError (→ WriteError)
    blob = safetensors_bytes(tensors, metadata=meta)
    atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def legacy_guarantee(deterministic: bool, binary: bool, extra_keys: Iterable[str]) -> Guarantee:
    """The guarantee of a certificate file written before it was stored, as the old readers worked it out.

    Not deterministic → PROBABILISTIC (smoothing); one-vs-rest flags (``predicted_flagged``) or a
    binary sensitive-class decision → FLAG; otherwise (a multiclass argmax) → DECISION.
    """
    if not deterministic:
        return Guarantee.PROBABILISTIC
    return Guarantee.FLAG if binary or "predicted_flagged" in extra_keys else Guarantee.DECISION


def _guarantee(meta: dict[str, str], binary: bool, extra_keys: Iterable[str]) -> Guarantee:
    """The stored guarantee, or for an older file the one :func:`legacy_guarantee` derives."""
    if "guarantee" in meta:
        return Guarantee(parse_json(meta["guarantee"]))
    return legacy_guarantee(bool(parse_json(meta["deterministic"])), binary, extra_keys)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; CheckpointError when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return meta, load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} is not a readable certificates file ({first}); run `asymcert certify` again"
        ) from None


def _shape_check(path: Path, t: dict[str, torch.Tensor], norms: list[Any]) -> None:
    """Every tensor holds one row per input; labels, decisions and radii are vectors, the radii floats ≥ 0 or ∞."""
    for key in ("label", "predicted", *(f"radius_{n}" for n in norms)):
        if key not in t:
            raise CheckpointError(f"{path}: corrupted certificates (no {key!r} tensor); run `asymcert certify` again")
    n = t["label"].shape[0] if t["label"].dim() == 1 else -1
    for key, v in t.items():
        vector = key in ("label", "predicted", "abstained") or key.startswith("radius_")
        if v.dim() == 0 or v.shape[0] != n or (vector and v.dim() != 1):
            raise CheckpointError(
                f"{path}: corrupted certificates ({key!r} has shape {tuple(v.shape)}, "
                f"expected {n if n >= 0 else 'N'} rows); run `asymcert certify` again"
            )
        if key.startswith("radius_") and not (v.is_floating_point() and bool((v >= 0).all())):
            raise CheckpointError(  # (NaN fails v ≥ 0): no certifier writes it, a report would count it uncertified
                f"{path}: corrupted certificates ({key!r} holds {v.dtype} values that are not all radii ≥ 0 or ∞); "
                "run `asymcert certify` again"
            )


def load_certificates(path: Path) -> tuple[Certificate, torch.Tensor]:
    """Inverse of :func:`save_certificates`: (certificate of N inputs, labels (N,)).

    Raises:
        CheckpointError: not a safetensors file, or one that lacks or misshapes a tensor or metadata key,
            holds metadata that is not strict JSON (:func:`asymcert.jsontext.parse_json`: e.g. nested
            too deeply), or whose guarantee and alpha do not fit together.
    """
    path = Path(path)
    meta, t = _read(path)
    try:
        norms = parse_json(meta["norms"])
        if not isinstance(norms, list):
            raise TypeError(f"'norms' is {type(norms).__name__}, not a list")
        _shape_check(path, t, norms)
        radii = {normalize_norm(n): t[f"radius_{n}"] for n in norms}
        extra = {k: v for k, v in t.items() if k not in _FIXED and not k.startswith("radius_")}
        binary = bool(parse_json(meta["binary"]))
        cert = Certificate(
            t["predicted"],
            radii,
            str(meta["method"]),
            _guarantee(meta, binary, extra),
            parse_json(meta["alpha"]),
            t.get("abstained"),
            float(meta["seconds"]),
            binary,
            extra,
            str(parse_json(meta.get("units", json.dumps(RAW_UNITS)))),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # (InputError of Certificate is a ValueError)
        raise CheckpointError(
            f"{path}: corrupted certificates metadata ({type(exc).__name__}: {exc}); run `asymcert certify` again"
        ) from None
    return cert, t["label"]
