"""Deprecated path of :mod:`onespike.experiments.sweep` (moved there; works for one release).

``python -m onespike.sweep ...`` runs ``python -m onespike.experiments.sweep ...``;
``import onespike.sweep`` gives that module itself.
"""

import sys
import warnings

from onespike.errors import run_command
from onespike.experiments import sweep as _moved

warnings.warn(
    "onespike.sweep moved to onespike.experiments.sweep; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=1 if __name__ == "__main__" else 2,  # the command, or the importer
)

if __name__ == "__main__":
    sys.exit(run_command(_moved.main))
else:  # importers get the moved module itself, private names included
    sys.modules[__name__] = _moved
