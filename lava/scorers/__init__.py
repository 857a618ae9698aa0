"""Scorers: one file per way of ranking a layer's evictable KV entries.

``base`` holds the interface (:class:`Scorer`, :class:`LayerScores`), ``window`` the window-attention
helpers every scorer builds on; then one file per scorer (SnapKV's is shared by SnapKV, PyramidKV and
Ada-KV). docs/methods.md gives each formula and its defaults.
"""

from lava.scorers.base import LayerScores, Scorer
from lava.scorers.cake import CakeScorer
from lava.scorers.lava import LavaScorer
from lava.scorers.snapkv import SnapKVScorer
from lava.scorers.streamingllm import SinkRecencyScorer

__all__ = ["CakeScorer", "LavaScorer", "LayerScores", "Scorer", "SinkRecencyScorer", "SnapKVScorer"]
