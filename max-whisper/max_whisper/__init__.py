"""max-whisper: OpenAI Whisper on three backends (cpu, gpu, max), measured against each other."""

__version__ = "0.1.0"
