"""Retrieve.PassKey, Retrieve.Number and Retrieve.KV generators (data/construct_synthetic_dataset.py).

Upstream builds one fixed 128k layout per task; here the number of noise lines (or JSON records) is
the unit that a token budget sets, so the same construction runs at 2k on a CPU and at 128k on a GPU.
"""

from __future__ import annotations

import random
import uuid

from eval.benchmarks.infinitebench.tasks import Example

# Strings of build_passkey / build_number_string in data/construct_synthetic_dataset.py (verbatim).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key?"
NUMBER_LINE = "The sequence of digits is {key}. Remember it. {key} is the sequence of digits."
NUMBER_QUESTION = "What is the sequence of digits?"
# Strings of build_kv_retrieval (verbatim).
KV_PREFIX = "JSON data:\n{"
KV_QUESTION = '\nKey: "{key}"\nThe value associated with the specified key is: '

# The released 128k files hold 5220 noise lines with the key after 0, 90, ..., 5220 of them:
# 59 evenly spaced depths, each repeated 10 times.
NUM_DEPTHS = 59


def rng_for(task: str, seed: int, index: int) -> random.Random:
    """A per-sample generator: string seeds hash with SHA-512, so draws do not depend on PYTHONHASHSEED."""
    return random.Random(f"infinitebench:{task}:{seed}:{index}")


def depth_slot(index: int, total: int, slots: int, num_depths: int = NUM_DEPTHS) -> int:
    """Insertion slot in ``0..slots`` for sample ``index`` of ``total``.

    Samples walk ``min(total, num_depths)`` evenly spaced depths from the start to the end, each
    repeated; with 590 samples and 5220 lines this is upstream's grid ``0, 90, ..., 5220``.
    """
    count = min(total, num_depths)
    if count <= 1:
        return 0
    return round((index * count // total) * slots / (count - 1))


def _haystack(line: str, units: int, slot: int) -> str:
    # The released files join the lines with single spaces (the script writes "\n"-ended lines).
    return " ".join([NOISE] * slot + [line] + [NOISE] * (units - slot))


def passkey(index: int, total: int, units: int, seed: int) -> Example:
    """Five random digits hidden after ``slot`` of ``units`` noise lines."""
    rng = rng_for("passkey", seed, index)
    key = "".join(str(rng.randint(0, 9)) for _ in range(5))
    slot = depth_slot(index, total, units)
    return Example(
        id=index,
        context=_haystack(PASSKEY_LINE.format(key=key), units, slot),
        input=PASSKEY_QUESTION,
        answer=[key],
        meta={"units": units, "depth": slot / units if units else 0.0},
    )


def number_string_key(rng: random.Random) -> str:
    """Ten digits: five random ones, then five times a digit duplicated in place (upstream's loop)."""
    keys = [str(rng.randint(0, 9)) for _ in range(5)]
    for k in range(5):
        pos = rng.randint(0, 5 + k - 1)
        keys.insert(pos, keys[pos])
    return "".join(keys)


def number_string(index: int, total: int, units: int, seed: int) -> Example:
    """A ten-digit sequence hidden after ``slot`` of ``units`` noise lines."""
    rng = rng_for("number_string", seed, index)
    key = number_string_key(rng)
    slot = depth_slot(index, total, units)
    return Example(
        id=index,
        context=_haystack(NUMBER_LINE.format(key=key), units, slot),
        input=NUMBER_QUESTION,
        answer=[key],
        meta={"units": units, "depth": slot / units if units else 0.0},
    )


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def kv_retrieval(index: int, total: int, units: int, seed: int) -> Example:
    """``units`` uuid4 -> uuid4 records as JSON; the asked key sits at ``int(index * units / total)``.

    Upstream (lost-in-the-middle's generator) draws 3000 random records, shuffles them and keeps
    2500; drawing ``units`` random records is the same distribution. The gold index sweeps the
    records linearly across samples, as ``min(int(cnt * nnoise / nsample), nnoise)`` upstream.
    """
    rng = rng_for("kv_retrieval", seed, index)
    records = [(_uuid4(rng), _uuid4(rng)) for _ in range(units)]
    gold = min(int(index * units / total), units - 1)
    body = ", ".join(f'"{key}": "{value}"' for key, value in records)
    return Example(
        id=index,
        context=KV_PREFIX + body + "}",
        input=KV_QUESTION.format(key=records[gold][0]),
        answer=[records[gold][1]],
        meta={"units": units, "depth": gold / units},
    )
