"""`python -m nami.ablate quality|timing RECORD`: one unit of `nami ablate` work (see worker.py)."""

import sys

from .worker import main

sys.exit(main(sys.argv[1:]))
