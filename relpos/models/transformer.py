"""Pre-norm Transformer block and a Vision Transformer with relative position bias.

Shape legend: ``B`` batch, ``N`` patch tokens, ``C`` embedding dim, ``K`` classes.

By default there is no class token: the bias covers exactly the ``(gh, gw)`` patch grid and the
classifier mean-pools the tokens. With ``class_token=True`` a learnable class token is prepended
(token 0), the classifier reads it, and the bias covers ``N + 1`` tokens (``bias_type="2d_cls"``, as
BEiT, or a 1D family over ``N + 1`` positions). With ``share_bias=True`` one bias module
(``rel_pos_bias``, BEiT's name) serves every block; by default each block has its own.
Position information comes from one of:
``position_embedding="auto"`` (relative bias if enabled, else a learnable absolute embedding),
``"absolute"`` (learnable absolute embedding, also alongside a relative bias) or ``"none"``
(no position information at all: the ablation baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from relpos._validation import check_bool, check_choice, check_float, check_int, check_window_size
from relpos.attention import MultiHeadAttention, resolve_rpb_kwargs
from relpos.data.dataset import PatchEmbedding
from relpos.guards import check_model_budget
from relpos.relative_position import RelativePositionBias, check_rpb_kwargs, is_2d_family

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
            filled from the model: ``num_heads``, ``bias_type="2d"``, ``window_size`` = the patch grid
            (2D families) or ``seq_len`` = the number of tokens (1D families, class token included).
            Given values must agree with the model.
        position_embedding: ``"auto"``, ``"absolute"`` or ``"none"`` (see the module docstring).
        attn_impl: ``"auto"``, ``"sdpa"`` or ``"explicit"`` (see :class:`MultiHeadAttention`).
        class_token: prepend a learnable class token and classify from it (default False: mean
            pooling). A 2D relative bias then needs ``bias_type="2d_cls"``.
        share_bias: one relative position bias for all blocks (``rel_pos_bias``) instead of one
            per block (default False).

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
    ) -> None:
        super().__init__()
        self.class_token = check_bool("class_token", class_token)
        self.share_bias = check_bool("share_bias", share_bias)
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
        check_model_budget(img_size=self.patch_embed.img_size, patch_size=patch_size, in_channels=in_channels,
                           num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, use_relative_position=use_relative_position,
                           bias_type=(rpb_kwargs or {}).get("bias_type", "2d"), class_token=class_token,
                           share_bias=share_bias, position_embedding=position_embedding)

        if share_bias and not use_relative_position:
            raise ValueError("share_bias=True needs use_relative_position=True (there is no bias to share)")

        self.cls_token: nn.Parameter | None = None
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # (1, 1, C)
        self.pos_embed: nn.Parameter | None = None
        if position_embedding == "absolute":
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
                rpb_kwargs=rpb_kwargs if per_block else None,
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
        check_rpb_kwargs(kwargs)
        bias_type = kwargs["bias_type"]
        gh, gw = self.grid_size
        if bias_type == "2d_cls" and not self.class_token:
            raise ValueError("bias_type='2d_cls' needs class_token=True (it biases a class token)")
        if is_2d_family(bias_type, kwargs):
            if self.class_token and bias_type != "2d_cls":
                raise ValueError(
                    f"class_token=True with bias_type={bias_type!r}: a 2D bias cannot place the class "
                    "token; use bias_type='2d_cls' or a 1D family ('1d', 't5')"
                )
            window = kwargs.get("window_size")
            if window is not None and check_window_size("rpb_kwargs['window_size']", window) != (gh, gw):
                raise ValueError(
                    f"rpb_kwargs['window_size'] {window!r} does not match the patch grid ({gh}, {gw}) "
                    f"of img_size {self.patch_embed.img_size} / patch_size {self.patch_embed.patch_size}"
                )
            kwargs["window_size"] = (gh, gw)
        else:
            n = gh * gw + int(self.class_token)
            seq_len = kwargs.get("seq_len")
            if seq_len is None:
                kwargs["seq_len"] = n
            elif seq_len != n:
                raise ValueError(
                    f"rpb_kwargs['seq_len'] ({seq_len!r}) must equal the number of tokens ({n}"
                    + (", class token included)" if self.class_token else ")")
                )
        return kwargs

    def relative_position_biases(self) -> list[tuple[str, RelativePositionBias]]:
        """``(name, module)`` of every relative position bias, each once (a shared one once)."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, RelativePositionBias)]

    @torch.no_grad()
    def set_window_size(self, new_grid: tuple[int, int] | int, method: str = "bicubic") -> list[str]:
        """Move the model to another patch grid (``img_size`` follows: ``grid * patch_size``).

        Every relative position bias is moved with
        :meth:`RelativePositionBias.set_window_size` (learned tables resized by ``method``), and an
        absolute position embedding is resampled bicubically (as timm's ``resample_abs_pos_embed``).
        Resized tensors are new parameters: build optimizers after calling this.

        Args:
            new_grid: ``(gh, gw)`` patches (an int means square).
            method: ``"bicubic"`` or ``"geometric"`` for learned 2D tables.

        Returns:
            One human-readable line per tensor that changed.
        """
        new = check_window_size("new_grid", new_grid)
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
            how = f"table resized ({method})" if m.bias_type in ("1d", "2d", "2d_cls") else "index rebuilt"
            notes.append(f"{name}: bias_type={m.bias_type!r}, {how}, rows {t_old} -> {m.num_relative_positions}")
        if self.pos_embed is not None:
            c = self.embed_dim
            grid = self.pos_embed.detach().view(1, old[0], old[1], c).permute(0, 3, 1, 2)  # (1, C, gh, gw)
            grid = F.interpolate(grid.float(), size=new, mode="bicubic", align_corners=False)  # (1, C, gh', gw')
            pe = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], c)  # (1, N', C)
            self.pos_embed = nn.Parameter(pe.to(self.pos_embed.dtype))
            notes.append(f"pos_embed resampled (bicubic): {old[0] * old[1]} -> {new[0] * new[1]} positions")
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
        if self.pos_embed is not None:
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
