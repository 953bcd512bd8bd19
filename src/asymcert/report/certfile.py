"""Certificate files now live next to :class:`Certificate`: :mod:`asymcert.certify.certfile` (re-exported here)."""

from asymcert.certify.certfile import legacy_guarantee, load_certificates, save_certificates
from asymcert.runfolder import CERT_FILE

__all__ = ["CERT_FILE", "legacy_guarantee", "load_certificates", "save_certificates"]
