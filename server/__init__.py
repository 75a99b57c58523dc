"""scorehost: a fast, bounded, Azure ML-compatible model-serving runtime."""

__version__ = "0.1.0"
