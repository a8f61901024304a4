"""Deprecated path of :mod:`onespike.experiments.train` (moved there; works for one release).

``python -m onespike.train ...`` runs ``python -m onespike.experiments.train ...``;
``import onespike.train`` gives that module itself.
"""

import sys
import warnings

from onespike.errors import run_command
from onespike.experiments import train as _moved

warnings.warn(
    "onespike.train moved to onespike.experiments.train; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=1 if __name__ == "__main__" else 2,  # the command, or the importer
)

if __name__ == "__main__":
    sys.exit(run_command(_moved.main))
else:  # importers get the moved module itself, private names included
    sys.modules[__name__] = _moved
