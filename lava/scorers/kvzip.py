"""KVzip (Kim et al., 2025, arXiv 2505.23416; kvpress's KVzipPress): what the model reads to repeat the prompt.

After the prompt's prefill the model is asked to repeat it: an instruction, the chat template's end
of the user turn, then the prompt's own tokens, run on top of the full prefilled cache. An entry that
the reconstruction attends to strongly is one the model needs to reproduce the context, whatever the
question turns out to be (query-agnostic). Each entry's score is the largest attention it receives.

Parts: :class:`KVzipScorer` + uniform layers + Ada-KV's flat top-k across the heads of a layer with no
floor (``configs/method/kvzip.yaml``). The scorer needs forward passes of its own
(:attr:`KVzipScorer.needs_model_pass`): the prefill path runs :meth:`KVzipScorer.model_pass` once
every layer is prefilled (docs/methods.md, ``kvzip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from lava.cache import SlidingLayer, UnboundedLayer
from lava.compat import cache_kwargs
from lava.errors import UserError
from lava.scorers.base import LayerScores, Scorer

# kvpress's reconstruction instructions: the first chunk's, and a later chunk's, which is followed by
# the previous chunk's last ``overlap`` tokens so that the model knows where to resume.
FIRST_INSTRUCTION = "\n\nRepeat the previous context exactly."
LATER_INSTRUCTION = "\n\nRepeat the part of the previous context exactly, starting with"
# End of the user turn for a tokenizer without a chat template (kvpress's).
PLAIN_SUFFIX = "\n"
TEMPLATE_PREFIX_RULES = ("if_present", "always")
# User text rendered through the chat template to find what the template puts before and after it:
# a head the system prompt cannot contain, and a tail that ends in non-space (templates that trim
# the user text then trim nothing).
_HEAD = "lava-kvzip context"
_TAIL = "\n" + "#" * 12


@dataclass(frozen=True)
class ReconstructionPrompt:
    """The token ids around each chunk of the prompt in a reconstruction pass.

    A pass over the chunk ``ids[a:b]`` feeds ``instruction + suffix + ids[a:b]``, where the first
    chunk's instruction is ``first`` and a later one's is ``later`` followed by the previous chunk's
    last tokens.

    Attributes
    ----------
    prefix : tuple of int
        The chat template's text before the user's (system prompt, user header); empty without a
        template. Those prompt tokens are not part of the context to repeat.
    first, later : tuple of int
        The two instructions.
    suffix : tuple of int
        The chat template's text after the user's (end of turn, assistant header), or a newline.
    """

    prefix: tuple[int, ...] = ()
    first: tuple[int, ...] = ()
    later: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()


def reconstruction_prompt(tokenizer: Any) -> ReconstructionPrompt:
    """The reconstruction pieces of ``tokenizer``: kvpress's instructions, and its chat template's
    prefix and suffix (rendered with a generation prompt and ``enable_thinking=False``, as kvpress
    does), or no prefix and a newline suffix without a template. Tokenized without special tokens."""

    def encode(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False))

    prefix, suffix = "", PLAIN_SUFFIX
    if getattr(tokenizer, "chat_template", None) is not None:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _HEAD + _TAIL}],
            add_generation_prompt=True,
            tokenize=False,
            enable_thinking=False,
        )
        prefix, suffix = text[: text.index(_HEAD)], text[text.rindex(_TAIL) + len(_TAIL) :]
    return ReconstructionPrompt(
        encode(prefix), encode(FIRST_INSTRUCTION), encode(LATER_INSTRUCTION), encode(suffix)
    )


def reconstruction_attention(
    query: torch.Tensor,
    context_keys: torch.Tensor,
    chunk_keys: torch.Tensor,
    start: int,
    stop: int,
    n_sink: int,
    scaling: float,
) -> torch.Tensor:
    """Largest attention each context entry of ``[start, stop)`` receives from the reconstruction queries.

    Each query's softmax runs over the keys kvpress scores against (not every key it sees in the
    model's own attention): the first ``min(n_sink, start)`` context entries, the chunk's context
    entries ``[start, stop)`` and, causally, the reconstruction tokens' own keys. The maximum is
    taken over the reconstruction queries and the query heads of each KV head's group.

    Parameters
    ----------
    query : Tensor, shape (Hq, q, d)
        Post-RoPE queries of the ``q`` reconstruction tokens.
    context_keys : Tensor, shape (Hkv, n, d)
        The prefilled prompt's keys.
    chunk_keys : Tensor, shape (Hkv, q, d)
        The reconstruction tokens' keys.
    start, stop : int
        The chunk's context positions.
    n_sink : int
    scaling : float
        The layer's attention scaling.

    Returns
    -------
    Tensor, shape (Hkv, stop - start)
        In fp32 for half-precision inputs (fp64 stays fp64).
    """
    hq, q, _ = query.shape
    hkv = context_keys.shape[0]
    group = hq // hkv
    sinks = min(n_sink, start)
    width = stop - start
    dtype = torch.promote_types(query.dtype, torch.float32)
    keys = torch.cat([context_keys[:, :sinks], context_keys[:, start:stop], chunk_keys], dim=1).to(dtype)
    steps = torch.arange(q, device=query.device)
    future = steps[None, :] > steps[:, None]  # (q, q): a reconstruction token sees itself and earlier ones
    out = torch.empty(hkv, width, dtype=dtype, device=query.device)
    for kv in range(hkv):  # one KV group at a time: the logits stay (g, q, sinks + width + q)
        logits = torch.matmul(query[kv * group : (kv + 1) * group].to(dtype), keys[kv].T) * scaling
        logits[..., sinks + width :].masked_fill_(future, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        out[kv] = probs[..., sinks : sinks + width].amax(dim=(0, 1))
    return out


class ReplayLayer(UnboundedLayer):
    """A global layer during a reconstruction pass: the prefilled prompt plus the pass's own tokens.

    The prompt's keys and values are read in place (never copied into the cache, never extended):
    each pass's tokens are held only for that pass, so every chunk starts from the same prompt.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, evidence: torch.Tensor, n_sink: int) -> None:
        super().__init__()
        self.context_keys, self.context_values = keys, values  # (Hkv, n, d)
        self.seq_len = keys.shape[1]  # the pass's positions follow the prompt's
        self.evidence = evidence  # (Hkv, n), written chunk by chunk
        self.n_sink = n_sink
        self.start = self.stop = 0
        self.chunk_keys: torch.Tensor | None = None  # (Hkv, q, d) of the running pass
        self.chunk_values: torch.Tensor | None = None
        self.lazy_initialization(keys, values)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.chunk_keys, self.chunk_values = key_states[0], value_states[0]
        key_states._lava_layer = self  # routes the attention call to `attend`
        return key_states, value_states

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """The model's attention of the pass (every prompt entry, causal among the pass's tokens), and
        the chunk's evidence. Shapes (1, Hq, q, d) -> (1, q, Hq, d)."""
        n, q = self.seq_len, query.shape[2]
        # One layer's prompt and pass concatenated, for this call only: a transient copy of one layer.
        keys = torch.cat([self.context_keys, self.chunk_keys], dim=1)[None]
        values = torch.cat([self.context_values, self.chunk_values], dim=1)[None]
        cols = torch.arange(n + q, device=query.device)
        visible = cols[None, :] <= n + torch.arange(q, device=query.device)[:, None]  # (q, n + q)
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=visible, scale=scaling, enable_gqa=True
        )
        del keys, values
        self.evidence[:, self.start : self.stop] = reconstruction_attention(
            query[0], self.context_keys, self.chunk_keys, self.start, self.stop, self.n_sink, scaling
        ).to(self.evidence.dtype)
        self.chunk_keys = self.chunk_values = None
        return out.transpose(1, 2).contiguous()


class ReplayCache(Cache):
    """The cache of a reconstruction pass: every layer as the prefill left it, read, never extended.

    Global layers are :class:`ReplayLayer`; a sliding layer (hybrid models) is a fresh
    :class:`~lava.cache.SlidingLayer` over its kept window for each pass (its update concatenates
    into new tensors, so the prefill's window is not changed), attended by SDPA under the model's
    sliding mask as after any prefill.

    Parameters
    ----------
    layers : list of (keys, values, window)
        As :meth:`KVzipScorer.model_pass` takes them.
    n_sink : int
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, int | None]], n_sink: int) -> None:
        super().__init__(layers=[])
        self.sources = layers
        self.prompt_len = next(keys.shape[1] for keys, _, window in layers if window is None)
        self.evidence: list[torch.Tensor] = []  # (Hkv, n) per global layer
        for keys, values, window in layers:
            if window is None:
                dtype = torch.promote_types(keys.dtype, torch.float32)
                evidence = torch.zeros(keys.shape[:2], dtype=dtype, device=keys.device)
                self.evidence.append(evidence)
                self.layers.append(ReplayLayer(keys, values, evidence, n_sink))
            else:
                self.layers.append(SlidingLayer(window))

    def begin(self, start: int, stop: int) -> None:
        """Prepare the pass over the prompt chunk ``[start, stop)``."""
        for i, (keys, values, window) in enumerate(self.sources):
            layer = self.layers[i]
            if window is None:
                layer.start, layer.stop = start, stop
            else:
                fresh = SlidingLayer(window)
                fresh.store_prompt(keys[None], values[None], self.prompt_len)
                self.layers[i] = fresh


@dataclass
class KVzipScorer(Scorer):
    """Score of prompt entry ``j`` of KV head ``kv``: the most attention it receives while the model repeats
    the prompt.

    1. The context is the prompt after the chat template's prefix (system prompt and user header:
       ``template_prefix``); it is cut into chunks of ``chunk_size`` tokens.
    2. Per chunk, one forward pass on top of the whole prefilled prompt over ``instruction + suffix +
       chunk``: the first chunk's instruction is "Repeat the previous context exactly.", a later
       chunk's "Repeat the part of the previous context exactly, starting with" followed by the
       previous chunk's last ``overlap`` tokens; ``suffix`` closes the user turn as the model's chat
       template does (a newline without one). These passes run the model as it is: their attention
       sees every prompt entry and, causally, each other's tokens.
    3. Within a pass, a reconstruction query's attention is re-normalised over the first
       ``n_sink`` prompt entries (none before the first chunk when the context starts earlier), the
       chunk's own entries and the pass's tokens (kvpress's choice of keys); entry ``j`` of the chunk
       scores ``max`` over the pass's queries and the ``Hq / Hkv`` query heads of its group.
    4. The chat template's prefix is never scored (0), and the first ``n_sink`` positions get the
       layer's largest score plus one, so every head keeps them first.

    Parameters
    ----------
    n_sink : int
        First positions kept whatever their score (4).
    chunk_size : int
        Context tokens repeated per forward pass (2048).
    overlap : int
        Tokens of the previous chunk quoted in a later chunk's instruction (8; 0 quotes none).
    template_prefix : {"if_present", "always"}
        How many leading prompt tokens are the template's, not the context's. ``"if_present"``: the
        template prefix's tokens when the prompt starts with them (a chat-wrapped prompt), none
        otherwise. ``"always"``: that many tokens whatever the prompt starts with (kvpress, which
        assumes every prompt is chat-wrapped).

    Notes
    -----
    The reconstruction prompt comes from the model's tokenizer (``model.config.name_or_path``, read
    once per model). A model without a name (built from a config, as the tests' tiny models) has
    none: its passes feed the chunks and the quoted tokens alone.
    """

    n_sink: int = 4
    chunk_size: int = 2048
    overlap: int = 8
    template_prefix: str = "if_present"

    needs_model_pass: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.n_sink < 0 or self.chunk_size < 1 or self.overlap < 0:
            raise UserError(
                f"kvzip needs n_sink >= 0, chunk_size >= 1 and overlap >= 0; "
                f"got {self.n_sink}, {self.chunk_size}, {self.overlap}"
            )
        if self.template_prefix not in TEMPLATE_PREFIX_RULES:
            raise UserError(
                f"scorer.template_prefix={self.template_prefix!r} is invalid; use one of {TEMPLATE_PREFIX_RULES}"
            )
        self._prompts: dict[str, ReconstructionPrompt] = {}  # by model name: not part of the identity

    def queries_needed(self, window: int) -> int | None:
        return 1  # no prompt query is read (the fewest a capture can keep)

    def prompt_for(self, model: Any) -> ReconstructionPrompt:
        """The reconstruction pieces of ``model``'s tokenizer, loaded once per model name."""
        name = str(getattr(model.config, "name_or_path", "") or "")
        if name not in self._prompts:
            if not name:
                self._prompts[name] = ReconstructionPrompt()
            else:
                from transformers import AutoTokenizer

                try:
                    tokenizer = AutoTokenizer.from_pretrained(name)
                except (OSError, ValueError) as exc:
                    raise UserError(
                        f"kvzip needs the model's tokenizer for its reconstruction prompt; cannot load it from "
                        f"{name}: {exc}".splitlines()[0]
                    ) from exc
                self._prompts[name] = reconstruction_prompt(tokenizer)
        return self._prompts[name]

    def context_start(self, ids: torch.Tensor, prompt: ReconstructionPrompt) -> int:
        """Position of the first context token of the prompt ``ids`` (n,) (``template_prefix``)."""
        k = len(prompt.prefix)
        if self.template_prefix == "always":
            return min(k, ids.shape[0])
        return k if k and ids[:k].tolist() == list(prompt.prefix) else 0

    def model_pass(
        self, model: Any, input_ids: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor, int | None]]
    ) -> list[torch.Tensor]:
        """The reconstruction passes over every chunk of the context.

        Parameters
        ----------
        model : transformers.PreTrainedModel
            Switched to the ``"lava"`` attention (so that the global layers' calls reach the replay).
        input_ids : Tensor, shape (1, n)
        layers : list of (keys, values, window)
            :meth:`lava.scorers.Scorer.model_pass`'s per-layer prefill.

        Returns
        -------
        list of Tensor, shape (Hkv, n)
            Per global layer, each entry's largest reconstruction attention (0 before the context),
            fp32 (fp64 for a fp64 model).

        Notes
        -----
        Memory: beyond the prefilled layers, one pass's activations (``chunk_size`` plus a few dozen
        tokens through the model), per global layer one transient copy of its keys and values with
        the pass's appended (the model's attention of the pass) and ``g x q x (q + chunk)`` logits of
        one KV group, and the (Hkv, n) evidence of every global layer.
        """
        prompt = self.prompt_for(model)
        ids = input_ids[0]
        n, device = ids.shape[0], ids.device

        def as_ids(tokens: tuple[int, ...]) -> torch.Tensor:
            return torch.tensor(tokens, dtype=ids.dtype, device=device)

        cache = ReplayCache(layers, self.n_sink)
        suffix = as_ids(prompt.suffix)
        starts = range(self.context_start(ids, prompt), n, self.chunk_size)
        with torch.inference_mode():
            for i, start in enumerate(starts):
                stop = min(start + self.chunk_size, n)
                if i == 0:
                    head = as_ids(prompt.first)
                else:  # the previous chunk, a full chunk_size long, quoted by its last tokens
                    head = torch.cat(
                        [as_ids(prompt.later), ids[start - min(self.overlap, self.chunk_size) : start]]
                    )
                cache.begin(start, stop)
                tokens = torch.cat([head, suffix, ids[start:stop]])[None]
                model(input_ids=tokens, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
        return cache.evidence

    def __call__(self, query_window, keys, values, window, scaling, evidence=None) -> LayerScores:
        """Scores from the layer's ``evidence`` (Hkv, n) (its share of :meth:`model_pass`): (Hkv, n - window)."""
        if evidence is None:
            raise RuntimeError(
                "KVzipScorer scores from its model pass: build the cache with method.build_cache(model) "
                "or score through lava.prefill.score_methods"
            )
        scores = evidence.clone()
        sinks = min(self.n_sink, scores.shape[1])
        scores[:, :sinks] = scores.max() + 1  # above every entry of the layer: kept first in every head
        return LayerScores(scores[:, : scores.shape[1] - window])
