"""``python -m asymcert`` (and ``torchrun -m asymcert``) runs the command line (:func:`asymcert.cli.entry`)."""

from asymcert.cli import entry

entry()
