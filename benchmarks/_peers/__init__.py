"""Helpers of benchmarks/peers.py."""
