"""Evaluation of anonymization: how much of the face is gone, and is the brain intact."""
