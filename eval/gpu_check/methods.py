"""The methods the GPU check runs: every method of the registry (eval.methods), a subset for the speed grid."""

from __future__ import annotations

from eval.methods import compressing_methods, make_method

__all__ = ["PERF_METHODS", "compressing_methods", "make_method"]

# The speed grid's methods, in the GPU issue's order (each point costs device time); the correctness
# checks run every compressing method of the registry.
PERF_METHODS = ["snapkv", "pyramidkv", "adakv", "cake", "lava"]
