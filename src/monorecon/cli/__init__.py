"""The ``monorecon`` command line: thin wrappers over the Python API, one module per group of commands.

Every command reports bad input as one line on stderr and exits with code 2; outputs are written atomically.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
