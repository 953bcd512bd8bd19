"""``python -m asymcert`` (and ``torchrun -m asymcert``) runs the command line."""

from asymcert.cli import main

main()
