"""RULER (NVIDIA): synthetic long-context tasks generated offline with the model's tokenizer."""

from eval.benchmarks.ruler.benchmark import Ruler

__all__ = ["Ruler"]
