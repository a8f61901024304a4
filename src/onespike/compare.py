"""Deprecated path of :mod:`onespike.experiments.compare` (moved there; works for one release).

``python -m onespike.compare ...`` runs ``python -m onespike.experiments.compare ...``;
``import onespike.compare`` gives that module itself.
"""

from onespike._moved import forward
from onespike.experiments import compare as _moved

forward("onespike.compare", _moved, as_main=__name__ == "__main__", entry="_report_main")
