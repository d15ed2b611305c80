"""Operator commands of the soma CLI: produce, tail (more in the operator tooling issue)."""
