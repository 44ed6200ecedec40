"""``python -m max_whisper``: the same as the ``max-whisper`` command."""

from .cli import run

if __name__ == "__main__":
    run()
