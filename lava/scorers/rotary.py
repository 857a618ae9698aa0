"""A model's rotary position embedding, for scorers that need the queries without it (expected attention).

The attention function sees post-RoPE queries only. With the model's rotary frequencies a scorer can
turn them back into the pre-RoPE queries (:meth:`Rotary.unrotate`) and rotate statistics of them to
other positions (:meth:`Rotary.mean_rotation`). :func:`rotary_of` reads the frequencies from a
transformers model; the scorer receives them through :meth:`lava.scorers.Scorer.bind_model`, so it
holds two small tensors, never the model.

Convention: transformers' half-split RoPE, as every supported family uses it (Llama, Mistral, Qwen2,
Qwen3, Gemma 3): channel ``i`` and channel ``i + d/2`` form a pair rotated by the angle
``position * inv_freq[i]``, and the cosines and sines carry the factor ``attention_scaling`` (1 for
the default, linear and llama3 RoPE; YaRN's attention factor otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lava.errors import UserError

# RoPE variants whose frequencies change with the sequence length inside the forward (transformers'
# ``dynamic_rope_update``): frequencies read before the forward would not be the ones it applied.
LENGTH_DEPENDENT = ("dynamic", "longrope")


@dataclass(frozen=True)
class Rotary:
    """The rotation the model applies to queries and keys before attention.

    Attributes
    ----------
    inv_freq : Tensor, shape (d/2,)
        Angle per position of each channel pair, fp32 (as transformers computes the angles).
    attention_scaling : float
        Factor on the cosines and sines.
    rope_type : str
        The model's RoPE variant (transformers' ``rope_type``).
    """

    inv_freq: torch.Tensor
    attention_scaling: float = 1.0
    rope_type: str = "default"

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, d) cosines and sines at ``positions`` (m,), fp32, on ``positions``' device.

        The angle is ``position * inv_freq`` in fp32, as transformers' rotary embedding computes it.
        """
        inv_freq = self.inv_freq.to(device=positions.device, dtype=torch.float32)
        angles = positions.float()[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling

    def check_head_dim(self, head_dim: int) -> None:
        """Refuse a head whose channels the frequencies do not cover (partial rotary embeddings)."""
        if 2 * self.inv_freq.numel() != head_dim:
            raise UserError(
                f"the model rotates {2 * self.inv_freq.numel()} of {head_dim} head channels; "
                "expected attention supports a rotary embedding over the whole head only"
            )

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE applied to ``x`` (..., m, d) at ``positions`` (m,), in fp32."""
        cos, sin = self.cos_sin(positions)
        x = x.float()
        return x * cos + _rotate_half(x) * sin

    def unrotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The pre-RoPE vectors whose rotation at ``positions`` (m,) is ``x`` (..., m, d), in fp32.

        The inverse rotation divided by ``attention_scaling ** 2`` (the rotation also scales by it).
        """
        cos, sin = self.cos_sin(positions)
        x = x.float()
        return (x * cos - _rotate_half(x) * sin) / self.attention_scaling**2

    def mean_rotation(self, positions: torch.Tensor) -> torch.Tensor:
        """(d, d) matrix ``mean_t R_t`` over ``positions``, ``R_t x`` being :meth:`rotate` at position ``t``.

        ``R_t = diag(cos_t) + diag(sin_t) J`` with ``J x = rotate_half(x)``, so the mean is the same
        form with the mean cosines and sines.
        """
        cos, sin = self.cos_sin(positions)
        cos, sin = cos.mean(dim=0), sin.mean(dim=0)
        eye = torch.eye(cos.shape[0], device=cos.device, dtype=cos.dtype)
        # column c of J is rotate_half(e_c); transposing rotate_half of the identity's rows gives J
        return torch.diag(cos) + sin[:, None] * _rotate_half(eye).T


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the halves of the last axis (transformers' ``rotate_half``)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rotary_of(model: Any) -> Rotary | None:
    """The rotary embedding of ``model``'s global-attention layers, or None when it has none.

    Reads the first rotary-embedding module of the model (``inv_freq`` and ``attention_scaling``).
    A model with one embedding per layer type (Gemma 3: local and global) gives the global layers'
    (``full_attention``): only they are compressed (sliding-window layers keep their window).
    """
    for module in model.modules():
        layer_types = getattr(module, "layer_types", None)
        if layer_types is not None and hasattr(module, "full_attention_inv_freq"):
            rope_type = getattr(module, "rope_type", {})
            return Rotary(
                module.full_attention_inv_freq.detach().float().cpu(),
                float(module.full_attention_attention_scaling),
                str(rope_type.get("full_attention", "default") if isinstance(rope_type, dict) else rope_type),
            )
        inv_freq = getattr(module, "inv_freq", None)
        if isinstance(inv_freq, torch.Tensor) and hasattr(module, "attention_scaling"):
            return Rotary(
                inv_freq.detach().float().cpu(),
                float(module.attention_scaling),
                str(getattr(module, "rope_type", "default")),
            )
    return None
