"""``python -m gpunet ...`` is the ``gpunet`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
