"""Measuring commands: ``ddpm-bench`` (sampling latency) and the training and batch-size scripts."""
