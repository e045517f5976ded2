"""A BERT-family encoder (BERT, MiniLM, DistilBERT) on block-sparse INT8 layers.

Plain Python classes compose the package's operations: :class:`Linear`
(dense float, block-sparse float or block-sparse INT8 weights),
:class:`LayerNorm`, :class:`MultiHeadSelfAttention`, :class:`BertLayer`,
:class:`BertEncoder` and :class:`BertModel`, plus the functional
:func:`gelu`, :func:`layer_norm`, :func:`attention`, :func:`quantize_rows`
and :func:`mean_pooling`.  The hot paths are C kernels (``bsk_nn.h``):
attention, residual add + LayerNorm (+ quantization of the next input),
bias + activation.  Inside the encoder, activations are features x tokens
(hidden, batch * seq) float32 arrays, the paper's layout; inputs and outputs
are NumPy-style (batch, seq, hidden).  See :class:`BertModel` for the
layout and the fusions.

Examples
--------
>>> import numpy as np
>>> from blocksparse.nn import BertModel, mean_pooling
>>> cfg = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
...            intermediate_size=64, vocab_size=50)
>>> model = BertModel.from_config(cfg, sparsity=0.5, dtype="int8")
>>> ids, mask = np.array([[5, 6, 7, 0]]), np.array([[1, 1, 1, 0]])
>>> mean_pooling(model(ids, mask), mask).shape
(1, 32)
"""
from ._checkpoint import normalize_config
from ._corpus import offline_texts
from ._fidelity import embedding_fidelity, fidelity
from ._ops import QuantizedActivations, attention, gelu, layer_norm, quantize_rows
from .bert import BertEmbeddings, BertModel
from .layers import (BertEncoder, BertLayer, LayerNorm, Linear, MultiHeadSelfAttention,
                     mean_pooling)
from ._sparsify import sparsify
from ._text import encode_texts, load_tokenizer

__all__ = [
    "Linear", "LayerNorm", "MultiHeadSelfAttention", "BertLayer", "BertEncoder",
    "BertEmbeddings", "BertModel", "mean_pooling", "gelu", "layer_norm", "attention",
    "quantize_rows", "QuantizedActivations", "normalize_config",
    "sparsify", "fidelity", "embedding_fidelity", "encode_texts", "load_tokenizer",
    "offline_texts",
]
