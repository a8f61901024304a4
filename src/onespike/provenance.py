"""Where a result came from: the source version recorded beside figures."""

from __future__ import annotations

import subprocess
from pathlib import Path


def source_version() -> str | None:
    """``git describe --always --dirty`` of the source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
