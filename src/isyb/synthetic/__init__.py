"""Synthetic data with known truth: phantom heads, functional runs and the demo datasets."""
