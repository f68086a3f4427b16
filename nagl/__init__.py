"""NAGL: Normal-Abnormal Guided Generalist Anomaly Detection (NeurIPS 2025), in pure torch."""
