"""blocksparse: block-sparse and INT8 matrix products for Transformer inference on x86 CPUs.

The public names are re-exported here; see the API reference in ``docs/``.
"""
from ._config import (adaptive_threads_state, available_isas, get_isa, get_num_threads,
                      isa_context, set_adaptive_threads, set_isa, set_max_isa, set_num_threads,
                      show_config)
from ._convert import convert_checkpoint
from ._io import load_npz, save_npz
from ._matrix import BlockSparseMatrix, issparse_block
from ._obs import prune_obs
from ._prune import prune
from ._quant import (QuantizedMatrix, QuantizedTranspose, calibrate, linear, quantize,
                     quantize_activations)

__version__ = "0.1.0"

__all__ = [
    "BlockSparseMatrix", "issparse_block", "prune", "prune_obs", "save_npz", "load_npz",
    "QuantizedMatrix", "QuantizedTranspose", "quantize", "quantize_activations", "calibrate",
    "linear",
    "available_isas", "get_isa", "set_isa", "set_max_isa", "isa_context",
    "get_num_threads", "set_num_threads", "set_adaptive_threads", "adaptive_threads_state",
    "show_config", "convert_checkpoint",
]
