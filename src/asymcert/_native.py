"""Build and load the package's own C++ kernels: compiled with the system compiler on first use,
cached on disk per source, compiler, flags and CPU, loaded with ctypes. No torch headers, no build
step for users; when no compiler works, callers fall back to PyTorch code."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

# No -ffast-math: the certificates' rounding bounds need IEEE sums in program order
# (contraction into FMA is allowed; it only makes each step more accurate).
COMMON_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno"]
FLAG_SETS: tuple[list[str], ...] = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])


def kernel_dir() -> Path:
    """Where compiled kernels are cached: ``$ASYMCERT_KERNEL_DIR`` or ``~/.cache/asymcert/kernels``."""
    d = os.environ.get("ASYMCERT_KERNEL_DIR")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "asymcert" / "kernels"


def cpu_signature() -> str:
    """The CPU's feature flags (part of the cache key, since -march=native depends on them)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def kernels_disabled() -> bool:
    """True when ``ASYMCERT_NO_KERNELS`` asks for the PyTorch paths only."""
    return os.environ.get("ASYMCERT_NO_KERNELS", "") not in ("", "0")


def build_and_load(
    source: Path,
    abi_symbol: str,
    abi_version: int,
    declare: Callable[[ctypes.CDLL], None],
    common_flags: list[str] | None = None,
    defines: tuple[str, ...] = (),
) -> ctypes.CDLL:
    """Compile ``source`` (trying richer flag sets first) and load it.

    Args:
        source: the C++ file.
        abi_symbol: an exported ``int f(void)`` that must return ``abi_version``.
        declare: sets ``argtypes`` of the library's functions.
        common_flags: compiler flags used with every flag set (default :data:`COMMON_FLAGS`).
        defines: extra preprocessor definitions (``-D`` flags), part of the cache key.
    Raises:
        RuntimeError: no compiler, or no flag set that compiles and loads (the reasons joined).
    """
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX)")
    src = source.read_bytes()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"C++ compiler {cxx} does not run: {e}") from e
    out_dir = kernel_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for extra in FLAG_SETS:
        flags = (COMMON_FLAGS if common_flags is None else common_flags) + extra + [f"-D{d}" for d in defines]
        key = hashlib.sha256(
            b"\0".join([src, version.encode(), " ".join(flags).encode(), cpu_signature().encode(), cxx.encode()])
        ).hexdigest()[:20]
        so = out_dir / f"{source.stem}_{key}.so"
        if not so.exists():
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
            os.close(fd)
            try:
                r = subprocess.run([cxx, *flags, str(source), "-o", tmp], capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                os.unlink(tmp)
                errors.append(f"{' '.join(extra) or 'plain'}: {e}")
                continue
            if r.returncode != 0:
                os.unlink(tmp)
                errors.append(f"{' '.join(extra) or 'plain'}: {r.stderr[-500:]}")
                continue
            os.replace(tmp, so)  # atomic: concurrent builders never see a half-written file
        try:
            lib = ctypes.CDLL(str(so))
            if getattr(lib, abi_symbol)() != abi_version:
                raise RuntimeError("kernel ABI mismatch")
            declare(lib)
            return lib
        except (OSError, AttributeError, RuntimeError) as e:
            errors.append(f"load {so.name}: {e}")
    raise RuntimeError(f"could not build {source.name}: " + " | ".join(errors))


class LazyKernel:
    """A compiled library built on first use, once per process (thread-safe), or None with the reason.

    Args:
        name: what the warning calls it, e.g. "ℓ∞-dist C++ kernels".
        build: compiles (or loads from the cache), self-tests and returns the library; any exception
            means "unavailable" and the callers use their PyTorch paths.
    ``state`` holds ``lib``, ``tried`` and ``error`` (tests and benchmarks may swap ``lib``).
    """

    def __init__(self, name: str, build: Callable[[], ctypes.CDLL]) -> None:
        self.name, self.build = name, build
        self.state: dict = {"lib": None, "tried": False, "error": None}
        self._lock = threading.Lock()

    def get(self) -> ctypes.CDLL | None:
        """The library, building it on the first call; None when unavailable (see :attr:`error`)."""
        if self.state["tried"]:
            return self.state["lib"]
        with self._lock:
            if not self.state["tried"]:
                if kernels_disabled():
                    self.state["error"] = "disabled by ASYMCERT_NO_KERNELS"
                else:
                    try:
                        self.state["lib"] = self.build()
                    except Exception as e:  # any failure means: use the PyTorch path
                        self.state["error"] = str(e)
                        warnings.warn(
                            f"asymcert: {self.name} unavailable, using PyTorch ({e})", RuntimeWarning, stacklevel=3
                        )
                self.state["tried"] = True
        return self.state["lib"]

    @property
    def error(self) -> str | None:
        """Why :meth:`get` returned None (after it was called), else None."""
        return self.state["error"]
