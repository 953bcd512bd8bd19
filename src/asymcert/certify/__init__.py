"""Certification: the functional core, the result type, and one certifier per method."""

from asymcert.certify.api import certifier_names, certify, register_certifier
from asymcert.certify.result import Certificate, Guarantee, norm_label, normalize_norm

__all__ = ["Certificate", "Guarantee", "certifier_names", "certify", "norm_label", "normalize_norm", "register_certifier"]
