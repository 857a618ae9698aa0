"""Our methods keep the entries NVIDIA's kvpress keeps: per layer and KV head, on SmolLM2 and real prompts.

Runs in its own venv (``make test-peers``: kvpress 0.5.5 needs transformers < 5.3); elsewhere
kvpress is not importable and the module is skipped.

For each method of :data:`PEERS` whose config exists in ``configs/method/``, each compression ratio
``r`` in :data:`RATIOS` and two prompts of 1,000 and 2,000 tokens (Paul Graham essays, a question at
the end):

* kvpress: its press runs inside ``with press(model)`` over one prefill into a ``DynamicCache``. A
  :class:`~kvpress.ScorerPress` gathers the ``int(n * (1 - r))`` top-scored rows of each KV head
  into the cache (in score order, not position order); which positions they are is read back by
  matching each stored key row with the keys the press scored. A head-wise press (Ada-KV, KVzip)
  keeps every row and lists the evicted ones in ``self_attn.masked_key_indices``: the complement.
  ObservedAttentionPress reads the eager attention weights: that press runs with eager attention.
* ours: the same config at ``budget = int(n * (1 - r))`` (our budget counts a head's entries,
  window included), its cache built from one shared prefill per prompt (the sweep's path, equal to
  a single run's: tests/test_sweep_equivalence.py); the kept positions are
  ``CompressedLayer.positions``, the scores those of :func:`lava.prefill.score_methods`. The
  shared prefill keeps every prompt query (h2o and expected attention read them all).

The kept sets must be equal, head by head, except where a difference is a tie: every entry kept by
one side only must score within :data:`TIE_RTOL` of kvpress's boundary score (its lowest kept
score in that head), on kvpress's own scores; the report gives the largest such gap. Where the
press protects fewer recent entries than our smallest window (KnormPress and KeyDiffPress protect
none; ``CompressionMethod`` needs ``window >= 1``), the ``k`` window entries of a unit that kvpress
did not keep displace kvpress's ``k`` lowest-scored kept entries (each within :data:`TIE_RTOL` of
its ``k``-th lowest kept score): those differences are counted apart as "window", not as ties.
Where both sides make one flat top-k over a layer's heads (:attr:`Peer.flat`: Ada-KV with no
per-head floor on either side, KVzip per layer), the unit compared is the layer: its ``(head,
position)`` entries, its lowest kept score as the boundary, and the window entries of all its heads
displace the layer's lowest.
Where both scores rank the same positions (:attr:`Peer.same_scores`), our scores must also equal
kvpress's (``rtol`` :data:`SCORE_RTOL`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

kvpress = pytest.importorskip(
    "kvpress",
    reason="kvpress is not installed here: `make test-peers` runs this in its own venv (.venv-peers)",
)

from omegaconf import OmegaConf  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from eval.method_configs import build_method, method_node  # noqa: E402
from lava.compat import cache_kwargs  # noqa: E402
from lava.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RATIOS = (0.25, 0.5)
PROMPT_TOKENS = (1000, 2000)
QUESTION = (
    "\n\nQuestion: According to the text above, what should someone starting a company do first?\nAnswer:"
)
TIE_RTOL = 1e-5  # a difference is a tie when both entries score within this of kvpress's boundary
TIE_ATOL = 1e-12
SCORE_RTOL = 1e-4  # two float32 implementations of one formula (different summation orders)
SCORE_ATOL = 1e-7
# Prompt queries our shared prefill keeps: all (None), as h2o and expected attention read them all.
CAPTURE_QUERIES = None


def _snapkv(kv: Any, ratio: float, method: Any) -> Any:
    return kv.SnapKVPress(
        compression_ratio=ratio, window_size=method.window, kernel_size=method.scorer.kernel
    )


def _expected_attention(kv: Any, ratio: float, scorer: Any) -> Any:
    """ExpectedAttentionPress with our scorer's parameters (the defaults of both are kvpress's)."""
    return kv.ExpectedAttentionPress(
        compression_ratio=ratio,
        n_future_positions=scorer.n_future_positions,
        n_sink=scorer.n_sink,
        use_covariance=scorer.use_covariance,
        use_vnorm=scorer.use_vnorm,
        epsilon=scorer.epsilon,
    )


@dataclass(frozen=True)
class Peer:
    """One of our method configs and the kvpress press it is compared with.

    Attributes
    ----------
    make : callable
        ``(kvpress module, compression ratio, our method) -> press``.
    overrides : dict
        Keys of our config set so that both compute the same thing. ``window``, where given, is the
        number of last entries the press keeps whatever their score (0: none); a window our method
        refuses is replaced by the smallest it accepts. Without it the press takes our window.
    same_scores : bool
        Whether our prefix scores and kvpress's are the same numbers (compared with ``SCORE_RTOL``).
    attn_implementation : str
        The peer model's attention for this press (kvpress's ObservedAttentionPress reads eager weights).
    flat : bool
        Whether both sides select one flat top-k over all of a layer's (head, position) entries: the
        kept sets are then compared per layer, boundary and window displacement taken over the layer.
    note : str
        What differs between the two configurations, for the report.
    """

    make: Callable[[Any, float, Any], Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    same_scores: bool = False
    attn_implementation: str = "sdpa"
    flat: bool = False
    note: str = ""


# Our config name -> its kvpress press. Only the names whose configs/method/<name>.yaml exists run.
PEERS: dict[str, Peer] = {
    # SnapKVPress keeps its last window_size entries through their scores (max + 1) and avg-pools with
    # kernel_size: our window and kernel go to the press; it has no max pooling, so ours pools with avg.
    "snapkv": Peer(
        _snapkv,
        {"scorer.pooling": "avg"},
        same_scores=True,
        note="press window_size/kernel_size = our window/kernel; our pooling max -> avg",
    ),
    "knorm": Peer(lambda kv, r, m: kv.KnormPress(compression_ratio=r), {"window": 0}, same_scores=True),
    "keydiff": Peer(lambda kv, r, m: kv.KeyDiffPress(compression_ratio=r), {"window": 0}, same_scores=True),
    # TOVAPress keeps the last entry through its score (max + 1): our window of 1, exactly.
    "tova": Peer(lambda kv, r, m: kv.TOVAPress(compression_ratio=r), {"window": 1}, same_scores=True),
    # ObservedAttentionPress: every query's eager attention summed per key, divided by the number of
    # queries that see it (our normalize=true), GQA mean; it ranks every position: window 0 -> 1.
    "h2o": Peer(
        lambda kv, r, m: kv.ObservedAttentionPress(compression_ratio=r),
        {"window": 0, "scorer.normalize": True},
        same_scores=True,
        attn_implementation="eager",
        note="ObservedAttentionPress on eager attention: mean attention each key receives",
    ),
    # ExpectedAttentionPress takes our scorer's parameters; its statistics cover every query after the
    # sinks (our recent=null) and it protects the sinks only: window 0 -> 1.
    "expected_attention": Peer(
        lambda kv, r, m: _expected_attention(kv, r, m.scorer),
        {"window": 0, "scorer.recent": None},
        same_scores=True,
    ),
    # KVzipPress with layerwise=True: one flat bottom-k per layer over its heads (its default pools every
    # layer, which no layer allocator here does), as our FlatHeadBudget with alpha 0; it skips the chat
    # template's prefix length whatever the prompt starts with (ours: template_prefix=always) and protects
    # the sinks only (window 0 -> 1). Our chunk_size, overlap and n_sink go to the press.
    "kvzip": Peer(
        lambda kv, r, m: kv.KVzipPress(
            compression_ratio=r, layerwise=True, n_sink=m.scorer.n_sink, chunk_size=m.scorer.chunk_size
        ),
        {"window": 0, "scorer.template_prefix": "always"},
        flat=True,
        note="head-wise (masked_key_indices), layerwise=True: one flat top-k per layer; template_prefix=always",
    ),
    # AdaKVPress with alpha_safeguard a guarantees each head its own top int(a * kept) and fills the rest
    # by one flat top-k; our FlatHeadBudget (the Ada-KV authors') gives head h round((1 - a) c_h + int(a b))
    # with c_h its count in the flat top-k: different rules for a > 0, the same flat top-k of the layer's
    # Hkv x budget best entries for a = 0 on both sides (compared per layer: flat=True).
    "adakv_expected_attention": Peer(
        lambda kv, r, m: kv.AdaKVPress(_expected_attention(kv, r, m.scorer), alpha_safeguard=0.0),
        {"window": 0, "scorer.recent": None, "head_allocator.alpha": 0.0},
        same_scores=True,
        flat=True,
        note="head-wise (masked_key_indices); alpha 0 on both sides: one flat top-k per layer",
    ),
}


def _peer_params() -> list:
    out = []
    for name in PEERS:
        marks = ()
        if not (REPO / "configs" / "method" / f"{name}.yaml").is_file():
            marks = pytest.mark.skip(reason=f"configs/method/{name}.yaml does not exist (yet)")
        out.append(pytest.param(name, id=name, marks=marks))
    return out


# ---------------------------------------------------------------------------------------------------------
# Fixtures: the prompts, a second copy of the model for kvpress (ours is switched to "lava" attention).
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompts(smollm2_tokenizer) -> dict[int, torch.Tensor]:
    """``{n: (1, n) ids}``: essay text from a different place for each length, then :data:`QUESTION`."""
    from eval.benchmarks.haystack import paul_graham_essays

    essays = paul_graham_essays()
    question = smollm2_tokenizer.encode(QUESTION, add_special_tokens=False)
    out = {}
    for i, n in enumerate(PROMPT_TOKENS):
        start = i * 100_000
        context = smollm2_tokenizer.encode(essays[start : start + 8 * n], add_special_tokens=False)
        ids = context[: n - len(question)] + question
        assert len(ids) == n
        out[n] = torch.tensor([ids])
    return out


@pytest.fixture(scope="module")
def peer_model():
    """A model kvpress alone uses (its hooks and attention stay away from ours)."""
    from lava.models import load_model

    config = yaml.safe_load((REPO / "configs" / "model" / "smollm2-135m.yaml").read_text())
    model, _ = load_model(config)
    return model


# ---------------------------------------------------------------------------------------------------------
# Reading what each side kept.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Kept:
    """Kept positions and scores of one side, per layer.

    Attributes
    ----------
    positions : list of list of set of int
        ``positions[layer][head]``: the prompt positions the head keeps.
    scores : list of Tensor, shape (Hkv, m)
        The scores the side ranked by (kvpress: all ``n`` positions; ours: the ``n - window`` prefix).
    window : int
        The last positions kept whatever their score (ours: the method's window; kvpress: 0).
    """

    positions: list[list[set[int]]]
    scores: list[torch.Tensor]
    window: int = 0


def _record_scores(press: Any, into: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    """Make ``press`` copy, per layer, the keys it scores and its scores into ``into``; returns the undo.

    Only observes: the press's own ``compress`` still receives the very tensor its ``score`` returned
    (copied before Ada-KV writes into it).
    """
    scorer = press.press if hasattr(press, "press") else press  # AdaKVPress wraps a ScorerPress
    if isinstance(scorer, kvpress.KVzipPress):
        original_post = scorer.compress_post

        def post(model):
            out = original_post(model)  # gives the sinks their score (max + 1) in score_val: how they rank
            for j, layer_scores in enumerate(scorer.score_val):
                into[j] = (None, layer_scores[0].detach().clone())
            return out

        scorer.compress_post = post
        return lambda: delattr(scorer, "compress_post")
    original = scorer.score

    def score(module, hidden_states, keys, values, attentions, kwargs):
        out = original(module, hidden_states, keys, values, attentions, kwargs)
        into[module.layer_idx] = (keys[0].detach().clone(), out[0].detach().clone())
        return out

    scorer.score = score  # an instance attribute: shadows the class method for this press only
    return lambda: delattr(scorer, "score")


def _positions_of_rows(full: torch.Tensor, stored: torch.Tensor) -> set[int]:
    """Positions in ``full`` (n, d) of the rows of ``stored`` (k, d): each stored row is an exact copy."""
    where = {row.numpy().tobytes(): p for p, row in enumerate(full)}
    assert len(where) == full.shape[0], "two prompt positions share a key: positions are ambiguous"
    found = [where.get(row.numpy().tobytes()) for row in stored]
    assert None not in found, "a stored key row is not one of the scored keys"
    assert len(set(found)) == len(found), "a position is stored twice"
    return set(found)


def kvpress_kept(model: Any, press: Any, input_ids: torch.Tensor) -> Kept:
    """Prefill ``input_ids`` under ``press`` and read which positions each layer and KV head kept."""
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    undo = _record_scores(press, recorded)
    cache = DynamicCache(config=model.config)
    try:
        with torch.inference_mode(), press(model):
            model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    finally:
        undo()
    positions, scores = [], []
    for j, layer in enumerate(cache.layers):
        attn = model.model.layers[j].self_attn
        masked = getattr(attn, "masked_key_indices", None)
        keys, layer_scores = recorded[j]
        if masked is not None:  # head-wise: every row stays, the evicted ones are masked
            hkv, n = layer.keys.shape[1], layer.keys.shape[2]
            keep = torch.ones(hkv, n, dtype=torch.bool)
            keep[masked[1].cpu(), masked[2].cpu()] = False
            positions.append([set(keep[h].nonzero().squeeze(1).tolist()) for h in range(hkv)])
            attn.masked_key_indices = None
        else:
            stored = layer.keys[0]
            positions.append([_positions_of_rows(keys[h], stored[h]) for h in range(stored.shape[0])])
        scores.append(layer_scores.float())
    return Kept(positions, scores)


def build_ours(name: str, budget: int, overrides: dict[str, Any]) -> tuple[Any, str]:
    """Our method ``name`` at ``budget`` with ``overrides``; a refused ``window=0`` becomes 1 (noted)."""
    note = ""
    for attempt in (overrides, {**overrides, "window": 1}):
        cfg = OmegaConf.create({"budget": budget, "model": {"name": "smollm2-135m"}})
        cfg.method = method_node(name)
        for key, value in attempt.items():
            OmegaConf.update(cfg, f"method.{key}", value, force_add=False)
        try:
            return build_method(cfg), note
        except UserError as exc:
            if attempt.get("window") != 0:
                raise
            note = f"our window 0 refused ({exc}): 1"
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def captures(smollm2) -> Callable[[torch.Tensor], Any]:
    """``capture(input_ids)``: one shared full-attention prefill per prompt (the sweep's path), reused."""
    from lava.prefill import capture_prefill

    done: dict[int, Any] = {}

    def capture(input_ids: torch.Tensor) -> Any:
        n = input_ids.shape[1]
        if n not in done:
            done[n] = capture_prefill(smollm2[0], input_ids, CAPTURE_QUERIES)[0]
        return done[n]

    return capture


def ours_kept(capture: Any, method: Any) -> Kept:
    """The cache ``method`` builds from a shared prefill: the positions each layer and KV head stores, and
    its scores. Equal to what a single run keeps (tests/test_sweep_equivalence.py)."""
    from lava.prefill import build_cache_from_capture, score_methods

    scored, _ = score_methods(capture, [method])
    (layers,) = scored.values()
    cache = build_cache_from_capture(method, capture, layers, reserve=1)
    assert cache.compressed
    positions = [[set(p.tolist()) for p in layer.positions] for layer in cache.layers]
    return Kept(positions, [layer.scores for layer in layers], method.window)


# ---------------------------------------------------------------------------------------------------------
# Comparison.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Differences over all compared units (KV heads, or layers for a flat selection) of one case."""

    unit: str = "heads"
    units: int = 0
    units_differing: int = 0
    entries_differing: int = 0  # kept by one side only, counted on each side once (ties + window)
    window_entries: int = 0  # of which forced by our window that the press does not protect
    not_ties: list[str] = field(default_factory=list)
    max_gap: float = 0.0  # largest |score - boundary| among the tie entries, kvpress's scores
    max_rel_gap: float = 0.0


def _units(
    ours: Kept, theirs: Kept, n: int, window: range, flat: bool
) -> Iterator[tuple[str, set[int], set[int], torch.Tensor, set[int], Callable[[int], str]]]:
    """Yield ``(where, ours kept, kvpress kept, kvpress scores (m,), forced window, name of an entry)``.

    A unit is one KV head (entries: positions), or with ``flat`` one layer, whose entries are numbered
    ``h * n + p`` over its heads, the numbering of kvpress's flattened ``(Hkv, n)`` scores.
    """
    for j, (our_layer, their_layer) in enumerate(zip(ours.positions, theirs.positions, strict=True)):
        scores = theirs.scores[j].double()
        if flat:
            mine = {h * n + p for h, head in enumerate(our_layer) for p in head}
            kept = {h * n + p for h, head in enumerate(their_layer) for p in head}
            forced = {h * n + p for h in range(len(our_layer)) for p in window}
            yield f"layer {j}", mine, kept, scores.reshape(-1), forced, lambda e: f"head {e // n} pos {e % n}"
        else:
            for h, (mine, kept) in enumerate(zip(our_layer, their_layer, strict=True)):
                yield f"layer {j} head {h}", mine, kept, scores[h], set(window), lambda e: f"pos {e}"


def compare(ours: Kept, theirs: Kept, n: int, press_window: int, flat: bool = False) -> Comparison:
    """Per layer and head (per layer with ``flat``): equal kept sets, or differences that are ties (or
    forced by our window).

    ``press_window`` is the number of last positions the press keeps through its scores; where our
    window is larger, our window entries kvpress did not keep are set aside with as many of
    kvpress's lowest-scored kept entries of the unit (of the whole layer with ``flat``: one flat top-k).
    """
    result = Comparison(unit="layers" if flat else "heads")
    window = range(n - ours.window, n) if ours.window > press_window else range(0)
    for where, mine, kept, s, forced_window, name in _units(ours, theirs, n, window, flat):
        result.units += 1
        if mine == kept:
            continue
        result.units_differing += 1
        only_ours = sorted(mine - kept)
        only_theirs = sorted(kept - mine, key=lambda p: float(s[p]))  # lowest kvpress score first
        forced = [p for p in only_ours if p in forced_window]
        only_ours = [p for p in only_ours if p not in forced_window]
        displaced, only_theirs = only_theirs[: len(forced)], only_theirs[len(forced) :]
        result.window_entries += len(forced)
        result.entries_differing += len(forced) + len(only_ours)
        boundary = float(s[sorted(kept)].min())
        tol = TIE_RTOL * abs(boundary) + TIE_ATOL
        # k forced window entries displace kvpress's k last kept entries: each at most its k-th lowest
        last = sorted(float(s[p]) for p in kept)[len(forced) - 1] if forced else boundary
        for p in displaced:
            if float(s[p]) - last > TIE_RTOL * abs(last) + TIE_ATOL:
                result.not_ties.append(
                    f"{where} {name(p)}: dropped for our window but kvpress scores it "
                    f"{float(s[p]):.9g}, above its {len(forced)}-th lowest kept score {last:.9g}"
                )
        for p in only_ours + only_theirs:
            gap = abs(float(s[p]) - boundary)
            if gap > tol:
                side = "ours" if p in mine else "kvpress"
                result.not_ties.append(
                    f"{where} {name(p)} kept by {side} only: kvpress score {float(s[p]):.9g}, "
                    f"boundary {boundary:.9g} (gap {gap:.3g})"
                )
                continue
            result.max_gap = max(result.max_gap, gap)
            result.max_rel_gap = max(result.max_rel_gap, gap / max(abs(boundary), 1e-300))
        if len(only_ours) != len(only_theirs):
            result.not_ties.append(
                f"{where}: {len(only_ours)} entries kept by ours only, {len(only_theirs)} by kvpress"
            )
    return result


@pytest.mark.parametrize("n", PROMPT_TOKENS, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("name", _peer_params())
def test_kept_entries_match_kvpress(name, ratio, n, captures, peer_model, prompts, parity_report):
    peer = PEERS[name]
    input_ids = prompts[n]
    budget = int(n * (1 - ratio))  # ScorerPress keeps int(k_len * (1 - compression_ratio)) per head
    method, window_note = build_ours(name, budget, peer.overrides)
    press = peer.make(kvpress, ratio, method)
    press_window = peer.overrides.get("window", method.window)

    peer_model.set_attn_implementation(peer.attn_implementation)
    try:
        theirs = kvpress_kept(peer_model, press, input_ids)
    finally:
        peer_model.set_attn_implementation("sdpa")
    ours = ours_kept(captures(input_ids), method)

    layers = len(ours.positions)
    assert len(theirs.positions) == layers
    uniform = not hasattr(press, "press") and not isinstance(press, kvpress.KVzipPress)
    if uniform:  # every head of every layer keeps exactly the budget, on both sides
        assert {len(kept) for layer in theirs.positions for kept in layer} == {budget}
        assert {len(kept) for layer in ours.positions for kept in layer} == {budget}
    elif peer.flat:  # every layer keeps Hkv x budget entries in all, on both sides
        for side in (theirs, ours):
            assert {sum(len(kept) for kept in layer) for layer in side.positions} == {
                len(side.positions[0]) * budget
            }

    if peer.same_scores:  # the same numbers, before any selection
        prefix = n - ours.window
        for j in range(layers):
            torch.testing.assert_close(
                ours.scores[j].double(),
                theirs.scores[j][:, :prefix].double(),
                rtol=SCORE_RTOL,
                atol=SCORE_ATOL,
                msg=lambda m, j=j: f"layer {j}: our scores differ from kvpress's\n{m}",
            )

    result = compare(ours, theirs, n, press_window, peer.flat)
    label = f"{name} ratio={ratio} n={n} (budget {budget}, window {method.window})"
    if result.units_differing == 0:
        outcome = f"identical over {result.units} {result.unit}"
    else:
        ties = result.entries_differing - result.window_entries
        outcome = (
            f"{result.units_differing}/{result.units} {result.unit} differ, {result.entries_differing} entries each side: "
            f"{ties} ties (largest gap {result.max_gap:.2e}, relative {result.max_rel_gap:.2e})"
            + (f", {result.window_entries} forced by our window" if result.window_entries else "")
            + (f", {len(result.not_ties)} NOT ties" if result.not_ties else "")
        )
    notes = "; ".join(x for x in (peer.note, window_note) if x)
    parity_report.append(f"{label}: {outcome}" + (f" [{notes}]" if notes else ""))
    assert not result.not_ties, f"{label}: differences that are not ties:\n" + "\n".join(result.not_ties[:20])
