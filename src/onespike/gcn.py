"""Deprecated path of :mod:`onespike.experiments.gcn` (moved there; works for one release).

``python -m onespike.gcn ...`` runs ``python -m onespike.experiments.gcn ...``;
``import onespike.gcn`` gives that module itself.
"""

from onespike._moved import forward
from onespike.experiments import gcn as _moved

forward("onespike.gcn", _moved, as_main=__name__ == "__main__")
