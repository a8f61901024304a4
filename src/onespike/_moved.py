"""The old module paths of the experiment harness, kept for one release.

``onespike.train``, ``onespike.sweep``, ``onespike.compare`` and ``onespike.gcn`` moved to
``onespike.experiments``. Each old path imports its moved module and hands it to :func:`forward`:
``python -m onespike.X ...`` runs the moved command, ``import onespike.X`` gives the moved
module itself (private names included); both warn with a DeprecationWarning.
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType


def forward(old: str, moved: ModuleType, *, as_main: bool, entry: str = "main") -> None:
    """Make the module ``old`` an alias of ``moved`` (or run ``moved``'s ``entry`` as a
    command when ``as_main``, i.e. the old path was run with ``python -m``)."""
    warnings.warn(
        f"{old} moved to {moved.__name__}; the old path goes in the next release",
        DeprecationWarning,
        stacklevel=2 if as_main else 3,  # the command, or the importer of the old path
    )
    if as_main:
        from onespike.errors import run_command

        sys.exit(run_command(getattr(moved, entry)))
    sys.modules[old] = moved
