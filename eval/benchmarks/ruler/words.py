"""Word lists and random needle values (RULER niah.py, common_words_extraction.py).

The word lists are those of ``wonderwords==3.0.1`` (pinned: other versions ship other lists), read
through the same private helper RULER calls.
"""

from __future__ import annotations

import functools
import random
import uuid

from lava.errors import UserError

VALUE_TYPES = ("numbers", "words", "uuids")


@functools.lru_cache(maxsize=4)
def wonderwords_list(filename: str) -> tuple[str, ...]:
    """One wonderwords asset list (``nounlist.txt``, ``adjectivelist.txt``, ``verblist.txt``), file order."""
    from wonderwords import random_word

    return tuple(random_word._get_words_from_text_file(filename))


@functools.lru_cache(maxsize=1)
def key_word_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sorted unique adjectives and nouns whose ``"{adj}-{noun}"`` pairs are RULER's word keys.

    RULER materialises the sorted set of all pairs (about 6.2 million strings) and draws with
    ``random.choice``. With wonderwords 3.0.1 every (unique adjective, unique noun) pair gives a
    distinct string (910 x 6782 = 6,171,620, the size of RULER's set), so drawing a uniform pair
    index draws from the same distribution without building the list.
    """
    adjectives = tuple(sorted(set(wonderwords_list("adjectivelist.txt"))))
    nouns = tuple(sorted(set(wonderwords_list("nounlist.txt"))))
    return adjectives, nouns


def random_number(rng: random.Random, num_digits: int = 7) -> str:
    """A ``num_digits``-digit decimal number (RULER ``generate_random_number``)."""
    return str(rng.randint(10 ** (num_digits - 1), 10**num_digits - 1))


def random_word(rng: random.Random) -> str:
    """An ``"{adjective}-{noun}"`` key drawn uniformly (RULER ``generate_random_word``)."""
    adjectives, nouns = key_word_parts()
    index = rng.randrange(len(adjectives) * len(nouns))
    return f"{adjectives[index // len(nouns)]}-{nouns[index % len(nouns)]}"


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID string from 128 random bits (RULER ``generate_random_uuid``)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_value(kind: str, rng: random.Random) -> str:
    """A random key or value of type ``numbers``, ``words`` or ``uuids``."""
    if kind == "numbers":
        return random_number(rng)
    if kind == "words":
        return random_word(rng)
    if kind == "uuids":
        return random_uuid(rng)
    raise UserError(f"unknown RULER needle type {kind!r}; use one of {list(VALUE_TYPES)}")


@functools.lru_cache(maxsize=4)
def common_words_vocabulary(seed: int) -> tuple[str, ...]:
    """cwe vocabulary: unique nouns + adjectives + verbs, sorted, shuffled with ``Random(seed)``."""
    words = sorted(
        set(
            wonderwords_list("nounlist.txt")
            + wonderwords_list("adjectivelist.txt")
            + wonderwords_list("verblist.txt")
        )
    )
    random.Random(seed).shuffle(words)
    return tuple(words)
