"""asymcert: deterministic, closed-form certified robustness for the sensitive class.

Example:
    >>> import torch, asymcert
    >>> from asymcert.models import build_model
    >>> model = build_model({"kind": "feature-convex", "input_shape": [3],
    ...     "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [8]}})
    >>> cert = asymcert.certify(model, torch.rand(4, 3))
    >>> cert.sensitive.shape, cert.radii[2.0].shape
    (torch.Size([4]), torch.Size([4]))
"""

from typing import Any

from asymcert import families as families  # registers the model families
from asymcert.certify import Certificate, certify
from asymcert.checkpoint import load, save
from asymcert.errors import (
    AsymcertError,
    CheckpointError,
    ConfigError,
    ConvexityError,
    DataError,
    InputError,
    ModelError,
    RunFolderBusyError,
    RunFolderConflictError,
    SettingsError,
    UnknownNameError,
    UnsoundOptionError,
    WriteError,
)
from asymcert.runfolder import load_run_threat_model
from asymcert.threat import ResolvedThreatModel, ThreatModel, load_threat_model

__all__ = [
    "AsymcertError",
    "Certificate",
    "CheckpointError",
    "ConfigError",
    "ConvexityError",
    "DataError",
    "InputError",
    "ModelError",
    "ResolvedThreatModel",
    "RunFolderBusyError",
    "RunFolderConflictError",
    "SettingsError",
    "ThreatModel",
    "UnknownNameError",
    "UnsoundOptionError",
    "WriteError",
    "certify",
    "exact_radius",
    "load",
    "load_run_threat_model",
    "load_threat_model",
    "save",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "exact_radius":  # imports SciPy's solvers only when used
        from asymcert.certify.exact import exact_radius

        return exact_radius
    raise AttributeError(f"module 'asymcert' has no attribute {name!r}")
