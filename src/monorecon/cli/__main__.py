"""``python -m monorecon.cli``: the ``monorecon`` command."""

import sys

from .main import main

sys.exit(main())
