"""Certification: the functional core, the result type, and one certifier per method."""

from asymcert.certify.api import CertifierSpec, certifier_names, certifier_options, certify
from asymcert.certify.result import Certificate, Guarantee, norm_label, normalize_norm

__all__ = [
    "Certificate",
    "CertifierSpec",
    "Guarantee",
    "certifier_names",
    "certifier_options",
    "certify",
    "norm_label",
    "normalize_norm",
]
