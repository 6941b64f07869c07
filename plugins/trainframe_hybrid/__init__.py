"""Hybrid predictive training: warmup / full / predict / correct with a learned dynamics model."""
