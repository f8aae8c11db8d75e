"""Derived metrics of the released data (issue: isyb derive): CBF so far."""
