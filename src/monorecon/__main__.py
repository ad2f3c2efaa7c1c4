"""``python -m monorecon``: the ``monorecon`` command."""

import sys

from .cli.main import main

sys.exit(main())
