"""Full-cache token identity on the embedded Gemma 3 270M (hybrid attention), real weights, CPU.

    python scripts/gemma3_identity.py [--tokens 4000] [--new-tokens 32]

One passkey prompt of about ``--tokens`` tokens (past the 512-token sliding window, so every sliding
layer rolls). The reference is ``model.generate`` with its own cache (a ``DynamicCache`` with
rolling sliding layers, SDPA). Checked against it, greedy, fp32:

1. the runner's generation path (``eval.generation.greedy_generate``) with a ``DynamicCache`` (what
   ``method=full`` runs);
2. the same path with the compressed cache at a budget above the prompt (nothing evicted: the global
   layers through the lava attention, the sliding layers through their rolling windows);
3. ``model.generate`` with that compressed cache.

Also prints what LAVa at budget 128 keeps and generates. Exits non-zero when a check fails. Not
part of the test suite (about a minute and 3 GB of memory on 2 cores, the model conversion once).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.generation import greedy_generate  # noqa: E402
from eval.method_configs import build_named_method  # noqa: E402
from lava.compat import cache_kwargs  # noqa: E402
from lava.models import load_model  # noqa: E402

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey_prompt(tokenizer, tokens: int, passkey: str = "68142") -> torch.Tensor:
    """A filler text with the passkey line at 40% depth, about ``tokens`` tokens long."""
    per = len(tokenizer.encode(FILLER, add_special_tokens=False))
    repeats = max(tokens // per - 2, 2)
    head = FILLER * (repeats * 2 // 5)
    tail = FILLER * (repeats - repeats * 2 // 5)
    text = (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        + head
        + f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
        + tail
        + "What is the pass key? The pass key is"
    )
    return torch.tensor([tokenizer.encode(text)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = yaml.safe_load((ROOT / "configs" / "model" / "gemma3-270m.yaml").read_text())
    t0 = time.perf_counter()
    model, tok = load_model(spec)
    print(f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    ids = passkey_prompt(tok, args.tokens)
    n, new = ids.shape[1], args.new_tokens
    print(f"prompt: {n} tokens; layer types: {model.config.layer_types}")

    def timed(label, fn):
        start = time.perf_counter()
        out = fn()
        print(f"{label}: {time.perf_counter() - start:.1f} s", flush=True)
        return out

    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        reference = timed(
            "model.generate (DynamicCache)",
            lambda: model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)[
                0, n:
            ].tolist(),
        )
    print("reference:", repr(tok.decode(reference)))
    from transformers import DynamicCache

    full = timed(
        "greedy_generate (DynamicCache)",
        lambda: greedy_generate(
            model,
            ids,
            max_new_tokens=new,
            stop_ids=[],
            cache=DynamicCache(config=model.config),
            min_new_tokens=0,
        ),
    )
    no_eviction = build_named_method("lava", n + 64, spec["name"])
    cache = no_eviction.build_cache(model, max_new_tokens=new)
    kept = timed(
        f"greedy_generate (compressed cache, budget {n + 64})",
        lambda: greedy_generate(model, ids, max_new_tokens=new, stop_ids=[], cache=cache, min_new_tokens=0),
    )
    report = cache.report()
    cache = no_eviction.build_cache(model, max_new_tokens=new)
    with torch.inference_mode():
        generated = timed(
            "model.generate (compressed cache)",
            lambda: model.generate(
                ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **cache_kwargs(model, cache)
            )[0, n:].tolist(),
        )
    checks = {
        "greedy_generate + DynamicCache == model.generate": full.token_ids == reference,
        "greedy_generate + compressed cache (no eviction) == model.generate": kept.token_ids == reference,
        "model.generate + compressed cache (no eviction) == model.generate": generated == reference,
        "nothing evicted": not report["compressed"],
    }
    print(
        f"global layers {report['global_layers']}; kept per layer {[sum(h) for h in report['kept_per_head']]}"
    )
    print(f"smallest top-1 margin of the reference path: {min(full.margins):.3g}")
    lava = build_named_method("lava", 128, spec["name"])
    cache = lava.build_cache(model, max_new_tokens=new)
    compressed = timed(
        "greedy_generate (LAVa, budget 128)",
        lambda: greedy_generate(model, ids, max_new_tokens=new, stop_ids=[], cache=cache, min_new_tokens=0),
    )
    report = cache.report()
    print(
        f"LAVa b128: {repr(tok.decode(compressed.token_ids))}; kept on global layers "
        f"{[sum(report['kept_per_head'][i]) for i in report['global_layers']]}"
    )
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
