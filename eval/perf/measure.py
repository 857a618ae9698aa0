"""One measured generation of a perf configuration, on a prompt cut from the Paul Graham essays."""

from __future__ import annotations

import os
import time
from typing import Any

from eval.method_configs import build_named_method
from eval.perf.grid import CEILING, REFERENCE
from eval.perf.memory import RssSampler, kv_size, release_memory


def prompt_ids(tokenizer: Any, length: int) -> list[int]:
    """The first ``length`` tokens of the Paul Graham essays."""
    from eval.benchmarks.haystack import paul_graham_essays

    text = paul_graham_essays()
    chars = length * 6
    while True:
        ids = tokenizer.encode(text[:chars], add_special_tokens=False)
        if len(ids) >= length or chars >= len(text):
            break
        chars *= 2
    if len(ids) < length:
        raise SystemExit(f"the essays hold only {len(ids)} tokens; choose lengths <= that")
    return ids[:length]


class Runner:
    """Runs one greedy generation of a configuration and measures it (times, CPU, RSS, KV bytes, tokens).

    Compression time is the cache's own account (``CompressedCache.timings``: scoring + allocation).
    """

    def __init__(self, model: Any, model_name: str, new_tokens: int, rss_interval: float) -> None:
        self.model = model
        self.model_name = model_name
        self.new_tokens = new_tokens
        self.rss_interval = rss_interval
        self._methods: dict[tuple[str, int], Any] = {}

    def method(self, name: str, budget: int | None) -> Any:
        key = (name, budget or 0)
        if key not in self._methods:
            self._methods[key] = (
                build_named_method(name, budget, self.model_name) if name != REFERENCE[0] else None
            )
        return self._methods[key]

    def run(
        self, name: str, attn: str, budget: int | None, input_ids: Any, new_tokens: int | None = None
    ) -> dict:
        """One generation; returns its raw measurements."""
        from transformers import DynamicCache

        from eval.generation import greedy_generate

        new_tokens = new_tokens or self.new_tokens
        model = self.model
        if name == CEILING:
            name, input_ids = REFERENCE[0], input_ids[:, :budget]
        method = self.method(name, budget)
        release_memory()
        if method is None:
            if attn == "lava":
                from lava import attention

                attention.enable(model)  # registers "lava" (SDPA fallback for a DynamicCache)
            elif model.config._attn_implementation != attn:
                model.set_attn_implementation(attn)
            cache = DynamicCache(config=model.config)
        else:
            cache = method.build_cache(model, max_new_tokens=new_tokens)
        # Process CPU time (all threads) of the prefill and of the decode: the first forward call is the
        # prefill; less sensitive than wall time to other processes competing for the cores.
        cpu_marks: list[float] = []
        pre = model.register_forward_pre_hook(
            lambda *_: cpu_marks.append(time.process_time()) if not cpu_marks else None
        )
        post = model.register_forward_hook(
            lambda *_: cpu_marks.append(time.process_time()) if len(cpu_marks) == 1 else None
        )
        load = os.getloadavg()[0]
        try:
            with RssSampler(self.rss_interval) as rss:
                gen = greedy_generate(
                    model, input_ids, max_new_tokens=new_tokens, stop_ids=[], cache=cache, min_new_tokens=0
                )
            cpu_end = time.process_time()
        finally:
            pre.remove()
            post.remove()
        length = input_ids.shape[1]
        size = kv_size(cache, length)
        timings = getattr(cache, "timings", {})
        steps = len(gen.token_ids) - 1
        out = {
            "prefill_s": gen.prefill_seconds,
            "compress_s": timings.get("scoring", 0.0) + timings.get("allocation", 0.0),
            "decode_s": gen.decode_seconds,
            "decode_tok_s": steps / gen.decode_seconds if gen.decode_seconds > 0 else float("nan"),
            "prefill_cpu_s": cpu_marks[1] - cpu_marks[0],
            "compress_cpu_s": timings.get("scoring_cpu", 0.0) + timings.get("allocation_cpu", 0.0),
            "decode_cpu_s": cpu_end - cpu_marks[1],
            "cache_bytes": size["cache_bytes"],
            "kept_entries": size["kept_entries"],
            "compressed": size["compressed"],
            "rss_peak_mb": rss.peak / 2**20,
            "rss_delta_mb": (rss.peak - rss.baseline) / 2**20,
            "load1": load,
            "tokens": gen.token_ids,
        }
        del cache, gen
        return out
