"""Deprecated path of :mod:`onespike.experiments.compare` (moved there; works for one release).

``python -m onespike.compare ...`` runs ``python -m onespike.experiments.compare ...``;
``import onespike.compare`` gives that module itself.
"""

import sys
import warnings

from onespike.errors import run_command
from onespike.experiments import compare as _moved

warnings.warn(
    "onespike.compare moved to onespike.experiments.compare; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=1 if __name__ == "__main__" else 2,  # the command, or the importer
)

if __name__ == "__main__":
    sys.exit(run_command(_moved._report_main))
else:  # importers get the moved module itself, private names included
    sys.modules[__name__] = _moved
