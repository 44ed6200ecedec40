"""Small shared helpers (structured logging)."""

from .logging import BenchmarkLogger, JSONFormatter, setup_logger

__all__ = ["BenchmarkLogger", "JSONFormatter", "setup_logger"]
