"""``bench=fidelity``: teacher-forced fidelity of a compressed cache to the full cache.

Library functions for callers that manage their own caches (a sweep): :func:`measure` (one cache,
one prefill), or :func:`prefill_with_full_copy` + :func:`reference_from_full_cache` once per sample
and :func:`compare` per cache (:func:`compare_many` for several, batched); :func:`full_reference` when only the prompt ids are at hand.
"""

from eval.benchmarks.fidelity.benchmark import Fidelity
from eval.benchmarks.fidelity.reference import (
    FidelityReference,
    compare,
    compare_many,
    full_reference,
    layer_attention_errors,
    measure,
    prefill_with_full_copy,
    reference_from_full_cache,
)

__all__ = [
    "Fidelity",
    "FidelityReference",
    "compare",
    "compare_many",
    "full_reference",
    "layer_attention_errors",
    "measure",
    "prefill_with_full_copy",
    "reference_from_full_cache",
]
