#!/usr/bin/env python
"""The benchmark runner (same as ``max-whisper benchmark``); see docs/benchmark.md and ``--help``."""

import sys

from max_whisper.bench.command import main

if __name__ == "__main__":
    sys.exit(main())
