"""Period ids read off the vocabulary, on hand-built SentencePiece-style and byte-level BPE tokenizers.

Both tokenizers have two period tokens, as LLaMA-2 / Mistral ("." and "▁.") and GPT-2-style
byte-level vocabularies ("." and "Ġ.") do, plus decoys that contain a period but are not one.
"""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from eval.benchmarks.niah import insert_needle, period_token_ids

SP = "\u2581"  # SentencePiece word-start marker
BL = "\u0120"  # byte-level BPE's mapped space byte


def _bpe(symbols: list[str], merges: list[tuple[str, str]], pre, dec) -> PreTrainedTokenizerFast:
    """A BPE tokenizer over ``symbols`` plus every merge result, ids in that order."""
    vocab = {}
    for token in [*symbols, *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre
    backend.decoder = dec
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture(scope="module")
def sentencepiece_style():
    merges = [
        (SP, "d"),
        (f"{SP}d", "a"),
        (f"{SP}da", "y"),  # "▁day"
        (SP, "."),  # the word-start period "▁."
        (".", "."),
        (f"{SP}", ".."),  # decoys ".." and "▁.."
        ("y", "."),  # decoy "y." (never formed before "▁day" in this merge order)
    ]
    return _bpe(
        [SP, "d", "a", "y", "."],
        merges,
        pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="always"),
        decoders.Metaspace(replacement=SP, prepend_scheme="always"),
    )


@pytest.fixture(scope="module")
def byte_level():
    merges = [
        (BL, "d"),
        (f"{BL}d", "a"),
        (f"{BL}da", "y"),
        ("d", "a"),
        ("da", "y"),  # "Ġday", "day"
        (BL, "."),  # the spaced period "Ġ."
        (".", "Ċ"),
        (".", "."),  # decoys ".\n" and ".."
    ]
    return _bpe(
        [BL, "Ċ", "d", "a", "y", "."],
        merges,
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
    )


def test_sentencepiece_style_finds_both_periods(sentencepiece_style):
    tok = sentencepiece_style
    plain, spaced = tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids(f"{SP}.")
    assert period_token_ids(tok) == {plain, spaced}
    # the failure upstream's hard-coded lists work around: encode(".") gives only the word-start one,
    # while a sentence end in running text is the plain "."
    assert tok.encode(".", add_special_tokens=False) == [spaced]
    assert tok.convert_ids_to_tokens(tok.encode("day. day.", add_special_tokens=False)) == [
        f"{SP}day",
        ".",
        f"{SP}day",
        ".",
    ]


def test_byte_level_finds_both_periods(byte_level):
    tok = byte_level
    plain, spaced = tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids(f"{BL}.")
    assert period_token_ids(tok) == {plain, spaced}
    assert tok.encode(".", add_special_tokens=False) == [plain]
    assert tok.decode([spaced]) == " ."
    assert tok.convert_ids_to_tokens(tok.encode("day. day .", add_special_tokens=False)) == [
        "day",
        ".",
        f"{BL}day",
        f"{BL}.",
    ]


def test_derived_periods_keep_the_needle_at_a_sentence_end(sentencepiece_style):
    """With encode(".") alone the in-text period is never seen and the needle slides to the start."""
    tok = sentencepiece_style
    hay = tok.encode("day day. day day day day", add_special_tokens=False)  # ▁day ▁day . ▁day x4
    needle = [tok.convert_tokens_to_ids("a")]
    derived = insert_needle(hay, needle, len(hay) + 1, 80, period_token_ids(tok))
    old_rule = insert_needle(hay, needle, len(hay) + 1, 80, set(tok.encode(".", add_special_tokens=False)))
    assert derived.index(needle[0]) == 3  # just after "."
    assert old_rule.index(needle[0]) == 0


def test_bytes_vocabulary_and_fallback():
    class BytesVocab:  # tiktoken-style vocabulary keys
        def get_vocab(self):
            return {b".": 13, b" .": 662, b".\n": 627, b"a.": 5}

        def encode(self, text, add_special_tokens=False):
            raise AssertionError("not needed when the vocabulary has periods")

    assert period_token_ids(BytesVocab()) == {13, 662}

    class NoPeriod:
        def get_vocab(self):
            return {"<0x2E>": 7, "a": 1}

        def encode(self, text, add_special_tokens=False):
            return [7]

    assert period_token_ids(NoPeriod()) == {7}


def test_smollm2_periods(smollm2_tokenizer):
    ids = period_token_ids(smollm2_tokenizer)
    assert smollm2_tokenizer.convert_ids_to_tokens(sorted(ids)) == [".", f"{BL}."]
    assert {smollm2_tokenizer.decode([i]) for i in ids} == {".", " ."}
