"""The methods the GPU check runs: every method of the registry (eval.method_configs), a subset for the speed grid."""

from __future__ import annotations

from eval.method_configs import build_named_method, compressing_methods

__all__ = ["PERF_METHODS", "compressing_methods", "build_named_method"]

# The speed grid's methods, in the GPU issues' order (each point costs device time); the correctness
# checks run every compressing method of the registry. `cake_cascading` (CAKE evicting as layers
# arrive) follows `cake` (official CAKE's default: every layer's prompt held until the last) so that
# their peak memory reads side by side. A method whose config fails to build is an error row.
PERF_METHODS = ["snapkv", "pyramidkv", "adakv", "cake", "cake_cascading", "lava"]
