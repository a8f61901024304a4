"""Deprecated path of :mod:`onespike.experiments.train` (moved there; works for one release).

``python -m onespike.train ...`` runs ``python -m onespike.experiments.train ...``;
``import onespike.train`` gives that module itself.
"""

from onespike._moved import forward
from onespike.experiments import train as _moved

forward("onespike.train", _moved, as_main=__name__ == "__main__")
