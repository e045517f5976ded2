"""Task heads on the BERT-family encoders, returning NumPy logits shaped as transformers'.

A :class:`Head` reads the encoder's last hidden state in its features x
tokens layout (``(hidden, batch * seq)``, see :mod:`blocksparse.nn.layers`)
and computes ``out(norm(act(dense(rows))))``: the rows are the first token
of every sequence (sequence classification: only those ``batch`` columns go
through the head, so the head costs two small matrix-vector products per
sequence) or every token (token classification, question answering,
masked LM).  Head Linear layers are dense float32 (BLAS); the final
product writes tokens-major logits directly, without a transpose.

The task models pair an encoder (:class:`~blocksparse.nn.BertModel`,
:class:`~blocksparse.nn.RobertaModel`, :class:`~blocksparse.nn.ElectraModel`)
with a head and know their labels; :func:`blocksparse.nn.from_pretrained`
builds them from the ``architectures`` a checkpoint's ``config.json`` names:

===============================  ================================  ===================
model                            transformers architectures        logits
===============================  ================================  ===================
ModelForSequenceClassification   ``*ForSequenceClassification``    (batch, labels)
ModelForTokenClassification      ``*ForTokenClassification``       (batch, seq, labels)
ModelForQuestionAnswering        ``*ForQuestionAnswering``         2 x (batch, seq)
ModelForMaskedLM                 ``*ForMaskedLM`` (tied decoder)   (batch, seq, vocab)
ModelForPreTraining              ``ElectraForPreTraining``         (batch, seq)
===============================  ================================  ===================
"""
import os
from typing import NamedTuple

import numpy as np

from . import _checkpoint as ckpt
from .activations import apply_activation, check_activation, epilogue_activation
from .layers import LayerNorm, Linear

__all__ = ["Head", "ModelForSequenceClassification", "ModelForTokenClassification",
           "ModelForQuestionAnswering", "ModelForMaskedLM", "ModelForPreTraining",
           "QuestionAnsweringOutput", "PROBLEM_TYPES"]

#: The values of ``problem_type`` a sequence classifier's config may hold (None: unsaid).
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
_ROWS = ("first", "all")


class Head:
    """``out(norm(act(dense(h))))`` over the first token of each sequence or every token.

    Parameters
    ----------
    out : Linear
        The output layer, dense float32; for a masked-LM head its weight is
        the word embedding matrix itself (tied), not a copy.
    dense : Linear, optional
        A first dense float32 layer (the BERT pooler, DistilBERT's
        ``pre_classifier``, the transform of masked-LM heads...).
    activation : str, optional
        After `dense`: a name from :data:`blocksparse.nn.activations.ACTIVATIONS`.
    norm : LayerNorm, optional
        After the activation (masked-LM heads).
    rows : {"first", "all"}
        ``"first"``: the first token of every sequence ([CLS], ``<s>``);
        ``"all"``: every token.
    tied : bool, optional
        `out`'s weight is the word embedding matrix (saved once, with the
        embeddings).
    shared_dense : bool, optional
        `dense` is the encoder's pooler (BERT), saved with the encoder.

    Attributes
    ----------
    out, dense, activation, norm, rows, tied, shared_dense
    out_features : int
    """

    def __init__(self, out, dense=None, activation=None, norm=None, rows="all", tied=False,
                 shared_dense=False):
        for name, lin in (("out", out), ("dense", dense)):
            if lin is not None and (not isinstance(lin, Linear) or lin.kind != "dense"):
                raise TypeError(f"{name} must be a dense Linear layer")
        if out is None:
            raise TypeError("out must be a dense Linear layer")
        if rows not in _ROWS:
            raise ValueError(f"rows must be 'first' or 'all', got {rows!r}")
        width = out.in_features
        if dense is not None and dense.out_features != width:
            raise ValueError(f"dense must give {width} features (out reads {width}), got "
                             f"{dense.out_features}")
        if norm is not None and (not isinstance(norm, LayerNorm) or
                                 norm.weight.shape != (width,)):
            raise ValueError(f"norm must be a LayerNorm of {width} features")
        if activation is not None:
            check_activation(activation)
            if dense is None:
                raise ValueError("activation needs a dense layer before it")
        self.out, self.dense, self.activation, self.norm = out, dense, activation, norm
        self.rows, self.tied, self.shared_dense = rows, bool(tied), bool(shared_dense)
        self.out_features = out.out_features
        self.in_features = dense.in_features if dense is not None else width
        self._fused = epilogue_activation(activation)

    def __repr__(self):
        parts = [p for p in (self.dense and f"dense {self.dense.in_features} -> "
                                             f"{self.dense.out_features}",
                             self.activation, self.norm and "LayerNorm") if p]
        return (f"<Head {self.rows} rows: {', '.join(parts + [''])}out {self.out.in_features} "
                f"-> {self.out_features}{', tied' if self.tied else ''}>")

    def _forward(self, x, B, S):
        """Logits (rows, out_features), tokens-major, from the hidden state x (H, B * S)."""
        h = np.ascontiguousarray(x[:, ::S]) if self.rows == "first" else x
        if self.dense is not None:
            h = self.dense._forward(h, None, self._fused, few_columns=self.rows == "first")
            if not self._fused:
                apply_activation(h, self.activation)
        if self.norm is not None:
            h = self.norm._forward(h, None, out=h)[0]
        y = h.T @ self.out.weight.T   # (rows, out) written row-major: no transpose after
        if self.out.bias is not None:
            y += self.out.bias
        return y

    def own_tensors(self):
        """({name: Linear}, {name: array}) of the package's own format, names under ``head.``."""
        linears, tensors = {}, {}
        if self.dense is not None and not self.shared_dense:
            linears["dense"] = self.dense
        if self.norm is not None:
            tensors["norm.weight"], tensors["norm.bias"] = self.norm.weight, self.norm.bias
        if self.tied:
            if self.out.bias is not None:
                tensors["out.bias"] = self.out.bias
        else:
            linears["out"] = self.out
        return linears, tensors


class QuestionAnsweringOutput(NamedTuple):
    """Start and end logits of the answer span, each float32 (batch, seq)."""

    start_logits: np.ndarray
    end_logits: np.ndarray


class _TaskModel:
    """An encoder with a task head (the shared part of the task models)."""

    task = None

    def __init__(self, architecture, base, head, config):
        from .bert import BertModel
        if not isinstance(base, BertModel):
            raise TypeError("base must be a BertModel (or a family subclass)")
        if not isinstance(head, Head):
            raise TypeError("head must be a Head")
        if head.in_features != base.hidden_size:
            raise ValueError(f"head reads {head.in_features} features, the encoder gives "
                             f"{base.hidden_size}")
        self.architecture = str(architecture)
        self.base, self.head = base, head
        self.config = dict(config)
        self.unused_tensors = []

    # what the encoder says about itself
    dtype = property(lambda self: self.base.dtype, doc="Of the encoder's Linear layers.")
    sparsity = property(lambda self: self.base.sparsity, doc="Of the encoder's Linear layers.")
    blocksize = property(lambda self: self.base.blocksize)
    balanced = property(lambda self: self.base.balanced)
    smoothing = property(lambda self: self.base.smoothing)
    hidden_size = property(lambda self: self.base.hidden_size)
    max_length = property(lambda self: self.base.max_length,
                          doc="The longest sequence the model takes (tokens).")

    def __repr__(self):
        b = repr(self.base)
        return f"<{type(self).__name__} {self.architecture}: {b[b.index(' ') + 1:-1]}; " \
               f"{self.head!r}>"

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """:func:`blocksparse.nn.from_pretrained`, checking that the model is of this task.

        Raises
        ------
        ValueError
            If the checkpoint's architecture is of another task.
        """
        from .auto import from_pretrained
        model = from_pretrained(path, **kwargs)
        if not isinstance(model, cls):
            what = getattr(model, "architecture", type(model).__name__)
            raise ValueError(f"{os.fspath(path)!r} holds a {what}, not a model for {cls.task}")
        return model

    @classmethod
    def from_config(cls, config, architecture=None, num_labels=2, seed=0, **options):
        """A task model with random weights (benchmarks, tests).

        Parameters
        ----------
        config : dict, str or os.PathLike
            An encoder configuration, as for :meth:`BertModel.from_config
            <blocksparse.nn.BertModel.from_config>`.
        architecture : str, optional
            A transformers architecture of this task; by default the one of
            the configuration's ``model_type``.
        num_labels : int, optional
            Classification heads: the number of labels (named ``LABEL_i``).
        seed : int, optional
        **options
            ``sparsity``, ``blocksize``, ``dtype``, ``balanced``,
            ``smoothing``, ``calibration`` for the encoder.

        Returns
        -------
        instance of this class
        """
        from .auto import random_task_model
        return random_task_model(cls, config, architecture, num_labels, seed, options)

    def save_pretrained(self, directory):
        """Write encoder and head to a directory in the package's own format, atomically.

        As :meth:`BertModel.save_pretrained <blocksparse.nn.BertModel.save_pretrained>`;
        ``config.json`` also names the architecture and keeps the labels,
        and :func:`blocksparse.nn.from_pretrained` loads it back.
        """
        ckpt.save_model(self, directory)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        """The head's logits for a batch of token ids.

        Parameters
        ----------
        input_ids : array_like of int, shape (batch, seq) or (seq,)
        attention_mask : array_like of shape (batch, seq), optional
            1 for real tokens, 0 for padding; all ones if omitted.
        token_type_ids : array_like of int, shape (batch, seq), optional
            Segment ids (1 on the second text of a pair for BERT); zeros if
            omitted.

        Returns
        -------
        ndarray, float32, or QuestionAnsweringOutput
            Shaped as the class says: (batch, num_labels) for sequence
            classification, (batch, seq, num_labels) for token
            classification, (batch, seq, vocab_size) for masked LM, (batch,
            seq) for the ELECTRA discriminator, and two (batch, seq) arrays
            for question answering.

        Raises
        ------
        ValueError
            As :meth:`BertModel.__call__ <blocksparse.nn.BertModel.__call__>`.
        """
        x, B, S = self.base._encode(input_ids, attention_mask, token_type_ids)
        if B * S == 0:
            rows = B if self.head.rows == "first" else 0
            y = np.zeros((rows, self.head.out_features), np.float32)
        else:
            y = self.head._forward(x, B, S)
        return self._shape(y, B, S)

    @staticmethod
    def _shape(y, B, S):
        """Head rows (rows, out_features) -> the task's logits."""
        return y.reshape(B, S, y.shape[1])


class _Labelled(_TaskModel):
    @property
    def id2label(self):
        """dict of int to str: the label of each output."""
        return {int(k): v for k, v in self.config["id2label"].items()}

    @property
    def num_labels(self):
        return len(self.config["id2label"])


class ModelForSequenceClassification(_Labelled):
    """An encoder with a sequence classification (or regression) head.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns
    the logits, float32 (batch, num_labels), as transformers'
    ``*ForSequenceClassification``: single-label (softmax them),
    multi-label (sigmoid) and regression (as they are) models alike --
    :attr:`problem_type` says which, when the config does.  Only the first
    token of each sequence goes through the head.  A cross-encoder is such a
    model on text pairs (``token_type_ids`` 1 on the second text for BERT),
    usually with one label: its logit is the pair's score.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import ModelForSequenceClassification
    >>> cfg = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...            intermediate_size=64, vocab_size=50)
    >>> model = ModelForSequenceClassification.from_config(cfg, num_labels=3,
    ...                                                     sparsity=0.5, dtype="int8")
    >>> model.architecture, model(np.array([[1, 7, 8, 2]])).shape
    ('BertForSequenceClassification', (1, 3))
    """

    task = "sequence classification"

    @property
    def problem_type(self):
        """None or one of :data:`PROBLEM_TYPES`, from the config."""
        return self.config.get("problem_type")

    @staticmethod
    def _shape(y, B, S):
        return y


class ModelForTokenClassification(_Labelled):
    """An encoder with a token classification head (NER, POS tagging).

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns
    float32 logits (batch, seq, num_labels), one row per token (padding
    tokens included, as transformers).
    """

    task = "token classification"


class ModelForQuestionAnswering(_TaskModel):
    """An encoder with an extractive question answering head.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns a
    :class:`QuestionAnsweringOutput` of start and end logits, each float32
    (batch, seq); :func:`blocksparse.pipelines.answer_spans` turns them into
    answer spans of the context.
    """

    task = "question answering"

    @staticmethod
    def _shape(y, B, S):
        return QuestionAnsweringOutput(np.ascontiguousarray(y[:, 0]).reshape(B, S),
                                       np.ascontiguousarray(y[:, 1]).reshape(B, S))


class ModelForMaskedLM(_TaskModel):
    """An encoder with its masked language modelling head (the decoder tied to the embeddings).

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns
    float32 logits (batch, seq, vocab_size): dense, activation, LayerNorm,
    then the word embedding matrix (plus a bias), as transformers'
    ``*ForMaskedLM``.
    """

    task = "masked language modelling"


class ModelForPreTraining(_TaskModel):
    """ELECTRA's discriminator: for every token, the logit that it was replaced.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns
    float32 logits (batch, seq), as transformers' ``ElectraForPreTraining``
    (positive: replaced).
    """

    task = "replaced token detection"

    @staticmethod
    def _shape(y, B, S):
        return np.ascontiguousarray(y[:, 0]).reshape(B, S)
