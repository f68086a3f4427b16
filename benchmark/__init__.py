"""gadbench: a benchmark and reproduction harness for generalist few-shot anomaly detection."""

__version__ = "0.1.0"
