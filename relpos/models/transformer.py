"""Pre-norm Transformer block and a Vision Transformer with relative position bias.

Shape legend: ``B`` batch, ``N`` patch tokens, ``C`` embedding dim, ``K`` classes.

By default there is no class token: the bias covers exactly the ``(gh, gw)`` patch grid and the
classifier mean-pools the tokens. Position information comes from one of:
``position_embedding="auto"`` (relative bias if enabled, else a learnable absolute embedding),
``"absolute"`` (learnable absolute embedding, also alongside a relative bias) or ``"none"``
(no position information at all: the ablation baseline).
"""

from __future__ import annotations

import torch
from torch import nn

from relpos._validation import check_bool, check_choice, check_float, check_int, check_window_size
from relpos.attention import MultiHeadAttention, resolve_rpb_kwargs
from relpos.data.dataset import PatchEmbedding

__all__ = ["POSITION_EMBEDDINGS", "Mlp", "TransformerBlock", "VisionTransformer"]

POSITION_EMBEDDINGS: tuple[str, ...] = ("auto", "absolute", "none")


class Mlp(nn.Module):
    """``fc1 -> GELU -> dropout -> fc2 -> dropout`` (timm names)."""

    def __init__(self, in_features: int, hidden_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Args:
        embed_dim: width ``C``.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``C`` (default 4.0).
        dropout: dropout in attention and MLP (default 0.0).
        use_relative_position: add a relative position bias in the attention.
        rpb_kwargs: keyword arguments of ``RelativePositionBias``.
        attn_impl: forwarded to :class:`MultiHeadAttention`.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        use_relative_position: bool = False,
        rpb_kwargs: dict | None = None,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        check_int("embed_dim", embed_dim)
        mlp_ratio = check_float("mlp_ratio", mlp_ratio, minimum=0.0, min_inclusive=False)
        hidden = max(1, int(embed_dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadAttention(
            embed_dim,
            num_heads,
            dropout=dropout,
            use_relative_position=use_relative_position,
            rpb_kwargs=rpb_kwargs,
            attn_impl=attn_impl,
        )
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = Mlp(embed_dim, hidden, dropout=self.attn.attention.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, C)
        return x + self.mlp(self.norm2(x))  # (B, N, C)


class VisionTransformer(nn.Module):
    """Vision Transformer whose attention can carry a relative position bias.

    Args:
        img_size: input image side.
        patch_size: patch side (must divide ``img_size``).
        in_channels: image channels.
        num_classes: classifier outputs ``K``.
        embed_dim: width ``C``.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width ratio (default 4.0).
        dropout: dropout rate (default 0.0).
        use_relative_position: relative position bias in every block (default False).
        rpb_kwargs: keyword arguments of ``RelativePositionBias``. Missing keys are filled from the
            model: ``num_heads``, ``bias_type="2d"``, ``window_size`` = the patch grid (2D) or
            ``seq_len`` = the number of patches (1D). Given values must agree with the model.
        position_embedding: ``"auto"``, ``"absolute"`` or ``"none"`` (see the module docstring).
        attn_impl: ``"auto"``, ``"sdpa"`` or ``"explicit"`` (see :class:`MultiHeadAttention`).

    ``forward``: images ``(B, C, H, W)`` -> logits ``(B, K)``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        use_relative_position: bool = False,
        rpb_kwargs: dict | None = None,
        position_embedding: str = "auto",
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        self.depth = check_int("depth", depth)
        self.embed_dim = check_int("embed_dim", embed_dim)
        self.num_heads = check_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        check_bool("use_relative_position", use_relative_position)
        self.use_relative_position = use_relative_position
        check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
        if position_embedding == "auto":
            position_embedding = "none" if use_relative_position else "absolute"
        self.position_embedding = position_embedding

        self.patch_embed = PatchEmbedding(img_size, patch_size, in_channels, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches

        if use_relative_position:
            rpb_kwargs = self._resolve_rpb_kwargs(rpb_kwargs)
        elif rpb_kwargs is not None:
            raise ValueError(
                "rpb_kwargs was given but use_relative_position is False: "
                "set use_relative_position=True or drop rpb_kwargs"
            )
        self.rpb_kwargs = rpb_kwargs

        self.pos_embed: nn.Parameter | None = None
        if position_embedding == "absolute":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))  # (1, N, C)
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                use_relative_position=use_relative_position,
                rpb_kwargs=rpb_kwargs,
                attn_impl=attn_impl,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _resolve_rpb_kwargs(self, rpb_kwargs: dict | None) -> dict:
        kwargs = resolve_rpb_kwargs(rpb_kwargs, self.num_heads)
        kwargs.setdefault("bias_type", "2d")
        gh, gw = self.grid_size
        if kwargs["bias_type"] == "2d":
            window = kwargs.get("window_size")
            if window is not None and check_window_size("rpb_kwargs['window_size']", window) != (gh, gw):
                raise ValueError(
                    f"rpb_kwargs['window_size'] {window!r} does not match the patch grid ({gh}, {gw}) "
                    f"of img_size {self.patch_embed.img_size} / patch_size {self.patch_embed.patch_size}"
                )
            kwargs["window_size"] = (gh, gw)
        elif kwargs["bias_type"] == "1d":
            seq_len = kwargs.get("seq_len")
            if seq_len is None:
                kwargs["seq_len"] = gh * gw
            elif seq_len != gh * gw:
                raise ValueError(
                    f"rpb_kwargs['seq_len'] ({seq_len!r}) must equal the number of patches ({gh * gw})"
                )
        return kwargs

    def _init_weights(self) -> None:
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalized tokens ``(B, N, C)``."""
        x = self.patch_embed(x)  # (B, N, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=1))  # (B, K)
