"""Deprecated path of :mod:`onespike.experiments.gcn` (moved there; works for one release).

``python -m onespike.gcn ...`` runs ``python -m onespike.experiments.gcn ...``;
``import onespike.gcn`` gives that module itself.
"""

import sys
import warnings

from onespike.errors import run_command
from onespike.experiments import gcn as _moved

warnings.warn(
    "onespike.gcn moved to onespike.experiments.gcn; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=1 if __name__ == "__main__" else 2,  # the command, or the importer
)

if __name__ == "__main__":
    sys.exit(run_command(_moved.main))
else:  # importers get the moved module itself, private names included
    sys.modules[__name__] = _moved
