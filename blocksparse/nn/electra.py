"""ELECTRA encoders (discriminators and generators): BERT layers on narrower embeddings.

ELECTRA's embeddings (word, position, token type, LayerNorm) have their own
width ``embedding_size``; when it differs from ``hidden_size`` a Linear
layer (``embeddings_project``) maps them to the hidden size before the
first encoder layer.  That projection is part of the encoder: pruned and
quantized with the other encoder Linear layers.  The layers themselves are
BERT's.
"""
from . import _checkpoint as ckpt
from . import _ops
from .bert import BertEmbeddings, BertModel
from .layers import FLOAT_INPUT, LayerNorm, Linear

__all__ = ["ElectraEmbeddings", "ElectraModel"]


class ElectraEmbeddings(BertEmbeddings):
    """BERT embeddings of width ``embedding_size``, projected to the hidden size.

    Parameters
    ----------
    word, position, token_type, ln
        As in :class:`~blocksparse.nn.BertEmbeddings`, of width
        ``embedding_size``.
    project : Linear, optional
        ``embedding_size -> hidden_size``; None when they are equal.
    """

    def __init__(self, word, position, token_type, ln, project=None):
        super().__init__(word, position, token_type, ln)
        if project is not None:
            if not isinstance(project, Linear):
                raise TypeError("project must be a Linear layer")
            if project.in_features != self.hidden_size:
                raise ValueError(f"project must read {self.hidden_size} features, got "
                                 f"{project.in_features}")
            self.hidden_size = project.out_features
        self.project = project

    def _forward(self, ids, token_type_ids, want=FLOAT_INPUT):
        if self.project is None:
            return super()._forward(ids, token_type_ids, want)
        x, xq = super()._forward(ids, token_type_ids, self.project.input_spec)
        y = self.project._forward(x, xq)
        return y, (_ops._quantize_tokens(y, want.scale) if want.quantized else None)


class ElectraModel(BertModel):
    """An ELECTRA encoder (``model_type`` "electra"), discriminator or generator.

    :class:`~blocksparse.nn.BertModel` with :class:`ElectraEmbeddings`:
    with ``embedding_size`` != ``hidden_size`` the embeddings' projection is
    one more encoder Linear layer (pruned, INT8 with ``dtype="int8"``).

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import ElectraModel
    >>> cfg = dict(model_type="electra", embedding_size=16, hidden_size=32,
    ...            num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    ...            vocab_size=50)
    >>> model = ElectraModel.from_config(cfg, sparsity=0.5, dtype="int8")
    >>> model.embeddings.project.kind, model(np.array([[1, 5, 6, 2]])).shape
    ('int8', (1, 4, 32))
    """

    @staticmethod
    def _normalize_config(raw):
        return ckpt.normalize_config(raw, ("electra",))

    @staticmethod
    def _make_embeddings(cfg, weights, project=None):
        return ElectraEmbeddings(weights["emb.word"], weights["emb.position"],
                                 weights.get("emb.token_type"),
                                 LayerNorm(weights["emb.ln.weight"], weights["emb.ln.bias"],
                                           cfg["layer_norm_eps"]),
                                 project)
