"""``python -m blocksparse`` and the ``blocksparse`` console script.

The commands live in :mod:`blocksparse._cli`; see ``python -m blocksparse --help``.
"""
import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
