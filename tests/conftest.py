"""Shared fixtures. No test touches the network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def model_config(name: str = "smollm2-135m") -> dict:
    return yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded model's tokenizer (converted from the packaged GGUF on first use)."""
    from lava.models import load_tokenizer

    return load_tokenizer(model_config())


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of the embedded SmolLM2-135M-Instruct, fp32 on CPU."""
    from lava.models import load_model

    return load_model(model_config())
