"""Frozen backbones, their weights and the feature cache."""
