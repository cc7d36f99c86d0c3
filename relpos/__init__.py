"""relpos: relative position bias in attention, to see, train and compare."""

from relpos.attention import (
    MultiHeadAttention,
    ScaledDotProductAttention,
    collect_attention_maps,
    relative_position_bias_disabled,
)
from relpos.data.dataset import PatchEmbedding, SyntheticImageDataset
from relpos.experiments.config_utils import load_config, save_config
from relpos.models.transformer import TransformerBlock, VisionTransformer
from relpos.relative_position import (
    BIAS_TYPES,
    RelativePositionBias,
    get_relative_position_index_1d,
    get_relative_position_index_2d,
)

__version__ = "0.1.0"

__all__ = [
    "BIAS_TYPES",
    "MultiHeadAttention",
    "PatchEmbedding",
    "RelativePositionBias",
    "ScaledDotProductAttention",
    "SyntheticImageDataset",
    "TransformerBlock",
    "VisionTransformer",
    "collect_attention_maps",
    "get_relative_position_index_1d",
    "get_relative_position_index_2d",
    "load_config",
    "relative_position_bias_disabled",
    "save_config",
]
