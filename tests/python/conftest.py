"""The Python tests import the roomcast package from the repository (python/src),
and run the server binary named by ROOMCAST_BIN."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "src"))
