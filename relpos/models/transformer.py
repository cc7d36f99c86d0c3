"""Pre-norm Transformer block and a Vision Transformer with relative position bias or rotary embedding.

Shape legend: ``B`` batch, ``N`` patch tokens, ``C`` embedding dim, ``K`` classes.

By default there is no class token: the bias covers exactly the ``(gh, gw)`` patch grid and the
classifier mean-pools the tokens. With ``class_token=True`` a learnable class token is prepended
(token 0), the classifier reads it, and the bias covers ``N + 1`` tokens (a 2D family with class-token
rows, as BEiT, or a 1D family over ``N + 1`` positions; :data:`relpos.families.FAMILIES` says which). With ``share_bias=True`` one bias module
(``rel_pos_bias``, BEiT's name) serves every block; by default each block has its own.
Position information comes from one of:
``position_embedding="auto"`` (relative bias if enabled, else a learnable absolute embedding),
``"absolute"`` (learnable absolute embedding, also alongside a relative bias), ``"none"``
(no position information at all: the ablation baseline), or a rotary position embedding (RoPE,
:mod:`relpos.rotary`): ``"rope_axial"`` (fixed 2D frequencies, EVA-02 / RoPE-ViT's axial) or
``"rope_mixed"`` (RoPE-ViT's learned mixed frequencies, per layer and per head), with
``"+absolute"`` to add the absolute embedding as well (RoPE-ViT's "+APE" rows). Every attention layer
then holds its own rotary module over the patch grid (``blocks.<i>.attn.rope``; a mixed one's
state-dict key is ``blocks.<i>.attn.rope.freqs``); a class token is its unrotated prefix. A rotary
embedding combines with a relative bias too (``use_relative_position=True``).
:data:`~relpos.families.POSITION_EMBEDDINGS` lists the values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from relpos._validation import check_bool, check_float, check_int, check_window_size
from relpos.attention import MultiHeadAttention, absolute_position_enabled
from relpos.data.dataset import PatchEmbedding
from relpos.families import POSITION_EMBEDDINGS, position_parts, resolve_bias_kwargs
from relpos.guards import check_model_budget
from relpos.relative_position import RelativePositionBias
from relpos.rotary import RotaryPositionEmbedding, resolve_rope_kwargs

__all__ = ["POSITION_EMBEDDINGS", "Mlp", "TransformerBlock", "VisionTransformer"]


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
        rope_kwargs: keyword arguments of ``RotaryPositionEmbedding`` (this block's own), or None.
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
        rope_kwargs: dict | None = None,
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
            rope_kwargs=rope_kwargs,
        )
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = Mlp(embed_dim, hidden, dropout=self.attn.attention.dropout)

    def forward(self, x: torch.Tensor, relative_position_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, C) -> (B, N, C)``; ``relative_position_bias`` ``(H, N, N)``: a shared bias (optional)."""
        if relative_position_bias is None:
            x = x + self.attn(self.norm1(x))  # (B, N, C)
        else:
            x = x + self.attn(self.norm1(x), relative_position_bias=relative_position_bias)  # (B, N, C)
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
        rpb_kwargs: keyword arguments of ``RelativePositionBias`` (family options such as
            ``num_buckets``, ``alibi_distance``, ``cpb_hidden_dim`` pass through). Missing keys are
            filled from the model (:func:`relpos.families.resolve_bias_kwargs`): ``num_heads``,
            ``bias_type`` (:data:`~relpos.families.DEFAULT_BIAS_TYPE`), ``window_size`` = the patch
            grid (2D families) or ``seq_len`` = the number of tokens (1D families, class token
            included). Given values must agree with the model.
        position_embedding: ``"auto"``, ``"absolute"``, ``"none"``, ``"rope_axial"``, ``"rope_mixed"``,
            ``"rope_axial+absolute"`` or ``"rope_mixed+absolute"`` (see the module docstring).
        attn_impl: ``"auto"``, ``"sdpa"`` or ``"explicit"`` (see :class:`MultiHeadAttention`).
        class_token: prepend a learnable class token and classify from it (default False: mean
            pooling). A 2D relative bias then needs a family with class-token rows (BEiT's).
        share_bias: one relative position bias for all blocks (``rel_pos_bias``) instead of one
            per block (default False).
        rope_kwargs: options of the rotary embedding (``theta``; ``grid_indexing``, default "ij"
            for axial and "xy" for mixed, timm's defaults), only with a rotary ``position_embedding``.
            The model fills ``head_dim``, ``num_heads``, ``grid_size`` (the patch grid), ``mode`` and
            ``num_prefix_tokens`` (1 with a class token); given values must agree
            (:func:`relpos.rotary.resolve_rope_kwargs`).

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
        class_token: bool = False,
        share_bias: bool = False,
        rope_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.class_token = check_bool("class_token", class_token)
        self.share_bias = check_bool("share_bias", share_bias)
        self.num_classes = check_int("num_classes", num_classes)
        self.depth = check_int("depth", depth)
        self.embed_dim = check_int("embed_dim", embed_dim)
        self.num_heads = check_int("num_heads", num_heads)  # embed_dim % num_heads: MultiHeadAttention's check
        check_bool("use_relative_position", use_relative_position)
        self.use_relative_position = use_relative_position
        rotary, absolute = position_parts(position_embedding, use_relative_position)
        if position_embedding == "auto":
            position_embedding = "none" if use_relative_position else "absolute"
        self.position_embedding = position_embedding

        self.patch_embed = PatchEmbedding(img_size, patch_size, in_channels, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches

        if use_relative_position:
            rpb_kwargs = resolve_bias_kwargs(
                rpb_kwargs, num_heads=self.num_heads, grid=self.grid_size, class_token=self.class_token
            )
        self.rpb_kwargs = rpb_kwargs
        if share_bias and not use_relative_position:
            raise ValueError("share_bias=True needs use_relative_position=True (there is no bias to share)")
        if rotary is None and rope_kwargs is not None:
            rotary_values = ", ".join(repr(p) for p in POSITION_EMBEDDINGS if position_parts(p)[0])
            raise ValueError(
                f"rope_kwargs was given but position_embedding={position_embedding!r} has no rotary embedding: "
                f"use one of {rotary_values} or drop rope_kwargs"
            )
        if rotary is not None and embed_dim % num_heads == 0:  # else MultiHeadAttention names the problem
            rope_kwargs = resolve_rope_kwargs(
                rope_kwargs, head_dim=embed_dim // num_heads, num_heads=self.num_heads, grid_size=self.grid_size,
                mode=rotary, num_prefix_tokens=int(self.class_token),
            )
        self.rope_kwargs = rope_kwargs
        check_model_budget(img_size=self.patch_embed.img_size, patch_size=patch_size, in_channels=in_channels,
                           num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, use_relative_position=use_relative_position,
                           rpb_kwargs=rpb_kwargs if use_relative_position else None, class_token=class_token,
                           share_bias=share_bias, position_embedding=position_embedding, rope_kwargs=rope_kwargs)

        self.cls_token: nn.Parameter | None = None
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # (1, 1, C)
        self.pos_embed: nn.Parameter | None = None
        if absolute:
            # Patches only: the class token needs no position.
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))  # (1, N, C)
        self.pos_drop = nn.Dropout(dropout)
        self.rel_pos_bias: RelativePositionBias | None = None
        if share_bias:
            self.rel_pos_bias = RelativePositionBias(**rpb_kwargs)
        per_block = use_relative_position and not share_bias
        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                use_relative_position=per_block,
                # without a relative position, given rpb_kwargs reach MultiHeadAttention, which refuses them
                rpb_kwargs=None if share_bias else rpb_kwargs,
                attn_impl=attn_impl,
                rope_kwargs=rope_kwargs,  # each block builds its own (mixed: its own learned freqs)
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def relative_position_biases(self) -> list[tuple[str, RelativePositionBias]]:
        """``(name, module)`` of every relative position bias, each once (a shared one once)."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, RelativePositionBias)]

    def rotary_modules(self) -> list[tuple[str, RotaryPositionEmbedding]]:
        """``(name, module)`` of every rotary position embedding (one per block), e.g. ``blocks.0.attn.rope``."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, RotaryPositionEmbedding)]

    @torch.no_grad()
    def set_window_size(
        self, new_grid: tuple[int, int] | int, method: str = "bicubic", rope_rescale: bool = False
    ) -> list[str]:
        """Move the model to another patch grid (``img_size`` follows: ``grid * patch_size``).

        Every relative position bias is moved with
        :meth:`RelativePositionBias.set_window_size` (learned tables resized by ``method``), an
        absolute position embedding is resampled bicubically (as timm's ``resample_abs_pos_embed``),
        and every rotary embedding is recomputed for the new grid
        (:meth:`RotaryPositionEmbedding.set_grid_size`; learned frequencies kept).
        Resized tensors are new parameters: build optimizers after calling this.

        Args:
            new_grid: ``(gh, gw)`` patches (an int means square).
            method: ``"bicubic"`` or ``"geometric"`` for learned 2D tables.
            rope_rescale: False: rotary coordinates are the new grid's integers (extrapolation past
                the training grid); True: EVA's scheme, the new grid mapped onto the grid the model
                was built for (interpolation).

        Returns:
            One human-readable line per tensor that changed.
        """
        new = check_window_size("new_grid", new_grid)
        check_bool("rope_rescale", rope_rescale)
        old = self.grid_size
        if new == old:
            return []
        p = self.patch_embed.patch_size
        notes = [f"patch grid {old} -> {new}; img_size {self.patch_embed.img_size} -> {(new[0] * p, new[1] * p)}"]
        for name, m in self.relative_position_biases():
            t_old = m.num_relative_positions
            if m.window_size is not None:
                m.set_window_size(new, method=method)
            else:
                m.set_window_size(new[0] * new[1] + int(self.class_token), method=method)
            how = f"table resized ({method})" if m.family.resizable else "index rebuilt"
            notes.append(f"{name}: bias_type={m.bias_type!r}, {how}, rows {t_old} -> {m.num_relative_positions}")
        if self.pos_embed is not None:
            c = self.embed_dim
            grid = self.pos_embed.detach().view(1, old[0], old[1], c).permute(0, 3, 1, 2)  # (1, C, gh, gw)
            grid = F.interpolate(grid.float(), size=new, mode="bicubic", align_corners=False)  # (1, C, gh', gw')
            pe = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], c)  # (1, N', C)
            self.pos_embed = nn.Parameter(pe.to(self.pos_embed.dtype))
            notes.append(f"pos_embed resampled (bicubic): {old[0] * old[1]} -> {new[0] * new[1]} positions")
        for name, m in self.rotary_modules():
            m.set_grid_size(new, rescale=rope_rescale)
            how = f"coordinates rescaled onto the grid {m.ref_grid_size}" if m.rescaled else "integer coordinates"
            notes.append(f"{name}: rotary ({m.mode}) recomputed for grid {new}, {how}")
        self.patch_embed.img_size = (new[0] * p, new[1] * p)
        self.patch_embed.grid_size = new
        self.patch_embed.num_patches = new[0] * new[1]
        self.grid_size = new
        if self.rpb_kwargs is not None:
            self.rpb_kwargs = dict(self.rpb_kwargs)
            if "window_size" in self.rpb_kwargs:
                self.rpb_kwargs["window_size"] = new
            else:
                self.rpb_kwargs["seq_len"] = new[0] * new[1] + int(self.class_token)
        if self.rope_kwargs is not None:
            self.rope_kwargs = {**self.rope_kwargs, "grid_size": new}
        return notes

    def _init_weights(self) -> None:
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
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
        if self.pos_embed is not None and absolute_position_enabled(self):  # off: absolute_position_disabled
            x = x + self.pos_embed
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N+1, C)
        x = self.pos_drop(x)
        shared = self.rel_pos_bias() if self.rel_pos_bias is not None else None  # (H, N, N)
        for block in self.blocks:
            x = block(x, shared)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)  # (B, N[+1], C)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, C)
        return self.head(pooled)  # (B, K)
