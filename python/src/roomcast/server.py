"""Where the bundled ``roomcast`` server executable is."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def executable() -> str:
    """The ``roomcast`` executable: ``$ROOMCAST_BIN``, the one this package installed, or one on PATH."""
    given = os.environ.get("ROOMCAST_BIN")
    if given:
        return given
    # The wheel puts it in the scripts directory of the environment it is installed in.
    beside = Path(sys.executable).parent / "roomcast"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("roomcast")
    if found:
        return found
    raise FileNotFoundError("no roomcast executable: pip install roomcast, or set ROOMCAST_BIN")
