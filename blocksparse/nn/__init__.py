"""BERT-family encoders and task heads on block-sparse INT8 layers.

:func:`from_pretrained` loads a checkpoint directory as the model its
``config.json`` names: an encoder (:class:`BertModel` for BERT, MiniLM and
DistilBERT, :class:`RobertaModel` for RoBERTa and XLM-RoBERTa (and their
pre-LayerNorm variants),
:class:`ElectraModel`) or a task model with its head
(:class:`ModelForSequenceClassification`,
:class:`ModelForTokenClassification`, :class:`ModelForQuestionAnswering`,
:class:`ModelForMaskedLM`, :class:`ModelForPreTraining`).

Plain Python classes compose the package's operations: :class:`Linear`
(dense float, block-sparse float or block-sparse INT8 weights),
:class:`LayerNorm`, :class:`MultiHeadSelfAttention`, :class:`BertLayer`,
:class:`PreNormBertLayer`,
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
from .auto import from_pretrained, supported_architectures
from .bert import BertEmbeddings, BertModel
from .electra import ElectraEmbeddings, ElectraModel
from .heads import (Head, ModelForMaskedLM, ModelForPreTraining, ModelForQuestionAnswering,
                    ModelForSequenceClassification, ModelForTokenClassification,
                    QuestionAnsweringOutput)
from .layers import (BertEncoder, BertLayer, InputSpec, LayerNorm, Linear,
                     MultiHeadSelfAttention, PreNormBertLayer, mean_pooling)
from .roberta import RobertaEmbeddings, RobertaModel
from ._sparsify import sparsify
from ._text import encode_texts, load_tokenizer

__all__ = [
    "from_pretrained", "supported_architectures",
    "Linear", "LayerNorm", "MultiHeadSelfAttention", "BertLayer", "PreNormBertLayer",
    "BertEncoder",
    "BertEmbeddings", "BertModel", "RobertaEmbeddings", "RobertaModel", "ElectraEmbeddings",
    "ElectraModel", "Head", "ModelForSequenceClassification", "ModelForTokenClassification",
    "ModelForQuestionAnswering", "QuestionAnsweringOutput", "ModelForMaskedLM",
    "ModelForPreTraining", "mean_pooling", "gelu", "layer_norm", "attention",
    "quantize_rows", "QuantizedActivations", "InputSpec", "normalize_config",
    "sparsify", "fidelity", "embedding_fidelity", "encode_texts", "load_tokenizer",
    "offline_texts",
]
