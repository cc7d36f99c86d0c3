"""relpos: relative position in attention (bias families and rotary embeddings), to see, train and compare."""

from relpos.attention import (
    MultiHeadAttention,
    ScaledDotProductAttention,
    collect_attention_maps,
    relative_position_bias_disabled,
)
from relpos.checkpoint_import import import_checkpoint, import_into
from relpos.data.dataset import PatchEmbedding, SyntheticImageDataset
from relpos.diagnostics import bias_diagnostics
from relpos.experiments.config_utils import load_config, save_config
from relpos.models.transformer import TransformerBlock, VisionTransformer
from relpos.relative_position import (
    BIAS_TYPES,
    alibi_slopes,
    RelativePositionBias,
    get_relative_position_index_1d,
    get_relative_position_index_2d,
)

from relpos.resize import resize_relative_position_bias_table
from relpos.rotary import RotaryPositionEmbedding

__version__ = "0.1.0"

__all__ = [
    "BIAS_TYPES",
    "MultiHeadAttention",
    "PatchEmbedding",
    "RelativePositionBias",
    "RotaryPositionEmbedding",
    "ScaledDotProductAttention",
    "SyntheticImageDataset",
    "TransformerBlock",
    "VisionTransformer",
    "alibi_slopes",
    "bias_diagnostics",
    "collect_attention_maps",
    "get_relative_position_index_1d",
    "get_relative_position_index_2d",
    "import_checkpoint",
    "import_into",
    "load_config",
    "relative_position_bias_disabled",
    "resize_relative_position_bias_table",
    "save_config",
]
