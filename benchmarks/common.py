"""Paths shared by the benchmark scripts.

The real meshes of the project's ``shared/data`` folder lie beside the checkout (``<checkout>/../shared``);
``MONORECON_SHARED_DATA`` overrides the data folder, as for the tests.
"""

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("MONORECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHARED_MESHES = SHARED_DATA / "meshes"
