"""Deprecated path of :mod:`onespike.experiments.sweep` (moved there; works for one release).

``python -m onespike.sweep ...`` runs ``python -m onespike.experiments.sweep ...``;
``import onespike.sweep`` gives that module itself.
"""

from onespike._moved import forward
from onespike.experiments import sweep as _moved

forward("onespike.sweep", _moved, as_main=__name__ == "__main__")
