"""Locations of test data outside the repository.

The real meshes of the project's ``shared/data`` folder lie beside the checkout (``<checkout>/../shared``), as on a
developer machine and in CI; ``MONORECON_SHARED_DATA`` overrides the data folder.
"""

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("MONORECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHARED_MESHES = SHARED_DATA / "meshes"
