"""Scorers: one file per way of ranking a layer's evictable KV entries.

``base`` holds the interface (:class:`Scorer`, :class:`LayerScores`), ``window`` the window-attention
helpers the attention-based scorers build on, ``rotary`` a model's rotary embedding (for scorers that
need pre-RoPE queries); then one file per scorer (SnapKV's is shared by SnapKV, PyramidKV and Ada-KV;
``knorm``, ``keydiff`` and ``tova`` are kvpress's query-agnostic scorers; ``h2o`` and
``expected_attention`` read every prompt query; ``kvzip`` runs forward passes of its own after the
prefill). docs/methods.md gives each formula and its defaults.
"""

from lava.scorers.base import LayerScores, Scorer
from lava.scorers.cake import CakeScorer
from lava.scorers.expected_attention import ExpectedAttentionScorer
from lava.scorers.h2o import H2OScorer
from lava.scorers.keydiff import KeyDiffScorer
from lava.scorers.knorm import KeyNormScorer
from lava.scorers.kvzip import KVzipScorer
from lava.scorers.lava import LavaScorer
from lava.scorers.rotary import Rotary, rotary_of
from lava.scorers.snapkv import SnapKVScorer
from lava.scorers.streamingllm import SinkRecencyScorer
from lava.scorers.tova import TovaScorer

__all__ = [
    "CakeScorer",
    "ExpectedAttentionScorer",
    "H2OScorer",
    "KeyDiffScorer",
    "KVzipScorer",
    "KeyNormScorer",
    "LavaScorer",
    "LayerScores",
    "Rotary",
    "Scorer",
    "SinkRecencyScorer",
    "SnapKVScorer",
    "TovaScorer",
    "rotary_of",
]
