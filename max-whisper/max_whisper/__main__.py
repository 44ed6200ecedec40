"""``python -m max_whisper``: the same as the ``max-whisper`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
