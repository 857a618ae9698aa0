"""InfiniteBench: loaders, offline generators, yarn_mistral prompts and the benchmark class."""

from eval.benchmarks.infinitebench.benchmark import InfiniteBench

__all__ = ["InfiniteBench"]
