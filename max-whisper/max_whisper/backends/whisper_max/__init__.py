"""The ``max`` backend: Whisper as MAX graphs (``backend.MaxBackend``)."""
