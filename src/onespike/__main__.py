"""``python -m onespike ...``: the command line (so ``torchrun ... -m onespike`` works too)."""

import sys

from onespike.cli import main

if __name__ == "__main__":
    sys.exit(main())
