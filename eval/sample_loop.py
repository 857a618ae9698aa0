"""What a run's sample loop needs, set up once and shared by a single run and a sweep.

The order is part of the contract: the tokenizer and the samples come first (bad settings stop
before any weights load), the caller then works out which samples its folders still lack, and only
then are the model and its stop tokens loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from eval.benchmarks.base import Benchmark, Sample
from eval.device_memory import device_memory, mark_weights_loaded
from lava.models import ModelSpec, load_model, load_tokenizer, newline_token_id, stop_token_ids


class SampleLoop:
    """Tokenizer, samples, model and per-sample inputs of one run (or one sweep).

    Parameters
    ----------
    cfg : DictConfig
        The run's config (``seed``, ``progress``, and what :func:`eval.runner.load_samples` reads).
    bench : Benchmark
    spec : ModelSpec
    """

    def __init__(self, cfg: DictConfig, bench: Benchmark, spec: ModelSpec) -> None:
        import torch

        from eval.runner import load_samples

        torch.manual_seed(cfg.seed)
        self.cfg, self.bench, self.spec = cfg, bench, spec
        self.tokenizer = load_tokenizer(spec)
        self.samples: list[Sample] = load_samples(cfg, bench, self.tokenizer, spec)
        self.model: Any = None
        self.weights_bytes: int | None = None

    def load_model(self) -> Any:
        """Load the weights (after the caller has checked what is left to do); returns the model."""
        from eval.runner import LengthWarning, min_new_tokens

        self.model, self.tokenizer = load_model(self.spec, self.tokenizer)
        self.eos_ids = stop_token_ids(self.tokenizer, self.spec, self.model)
        self.newline_id = newline_token_id(self.tokenizer)
        self.device = next(self.model.parameters()).device
        self.weights_bytes = mark_weights_loaded(self.device)
        self.min_new = min_new_tokens(self.bench, self.cfg)
        self.warn = LengthWarning(self.spec)
        return self.model

    def device_memory(self) -> dict[str, Any] | None:
        """The run's accelerator memory so far (:func:`eval.device_memory.device_memory`; None on a CPU)."""
        return device_memory(self.device, self.weights_bytes)

    def progress(self, todo: Sequence[Sample], desc: str) -> tqdm:
        """A bar over ``todo`` that starts at the samples already done (a resumed run shows them)."""
        return tqdm(
            todo,
            desc=desc,
            unit="sample",
            disable=not self.cfg.progress,
            initial=len(self.samples) - len(todo),
            total=len(self.samples),
        )

    def inputs(self, sample: Sample) -> tuple[list[int], list[int], Any]:
        """``(prompt_ids, stop_ids, input_ids (1, n) on the model's device)`` of one sample."""
        import torch

        from eval.runner import build_prompt_ids

        prompt_ids = build_prompt_ids(sample, self.tokenizer, self.spec)
        self.warn.check(sample, prompt_ids)
        stops = self.eos_ids + ([self.newline_id] if sample.stop_newline else [])
        return prompt_ids, stops, torch.tensor([prompt_ids], device=self.device)
