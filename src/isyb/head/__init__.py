"""Numerics every stage shares: head and brain masks, morphology, registration, motion, tissues."""
