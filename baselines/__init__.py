"""Baseline adapters: one method per file."""
