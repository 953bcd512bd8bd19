"""``python -m asymcert`` (and ``torchrun -m asymcert``) runs the command line.

Under ``torchrun`` a rank other than 0 writes no files; when its command is done it leaves at once
(``os._exit``, after flushing its output) instead of through the interpreter's teardown, where gloo's
threads, still connected to rank 0, could abort it ("terminate called without an active exception") and
make torchrun kill rank 0 before it wrote the run folder.
"""

import os
import sys

from asymcert import distributed
from asymcert.cli import main

try:
    main()
except SystemExit as done:
    if distributed.rank() == 0:
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(done.code if isinstance(done.code, int) else (0 if done.code is None else 1))
