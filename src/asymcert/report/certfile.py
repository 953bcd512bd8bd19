"""Certificate files now live next to :class:`Certificate`: :mod:`asymcert.certify.certfile` (re-exported here)."""

from asymcert.certify.certfile import CERT_FILE, legacy_guarantee, load_certificates, save_certificates

__all__ = ["CERT_FILE", "legacy_guarantee", "load_certificates", "save_certificates"]
