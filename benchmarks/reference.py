"""The reference: window attention with a relative position bias as Swin and timm write it.

Every call gathers the bias anew with ``table[index.view(-1)].view(N, N, H).permute(2, 0, 1)
.contiguous()``, scales ``q``, materializes the ``(B, H, N, N)`` logits, adds the bias, takes the
softmax, multiplies by ``v`` and projects. It owns its parameters (same names as Swin), so the
benchmark compares two independent modules loaded with the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from relpos import MultiHeadAttention
from relpos.relative_position import get_relative_position_index_2d


class SwinReferenceAttention(nn.Module):
    """Swin's ``WindowAttention`` without the shift mask. ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, window_size: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        h, w = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), num_heads))  # (T, H)
        self.register_buffer("relative_position_index", get_relative_position_index_2d(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def gather_bias(self) -> torch.Tensor:
        """The bias ``(H, N, N)``, gathered as Swin/timm do on every call."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)  # (N, N, H)
        return bias.permute(2, 0, 1).contiguous()  # (H, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)  # (B, H, N, N)
        attn = attn + self.gather_bias().unsqueeze(0)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(x)

    @classmethod
    def from_relpos(cls, m: MultiHeadAttention) -> "SwinReferenceAttention":
        """A reference with a copy of ``m``'s weights (``m`` must carry a 2D relative position bias)."""
        rpb = m.relative_position_bias
        if rpb is None or rpb.window_size is None:
            raise ValueError("the reference needs a MultiHeadAttention with a 2D relative position bias")
        ref = cls(m.embed_dim, rpb.window_size, m.num_heads)
        with torch.no_grad():
            ref.qkv.load_state_dict(m.qkv.state_dict())
            ref.proj.load_state_dict(m.proj.state_dict())
            ref.relative_position_bias_table.copy_(rpb.relative_position_bias_table)
        return ref
