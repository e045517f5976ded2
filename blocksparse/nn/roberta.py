"""RoBERTa and XLM-RoBERTa encoders: BERT layers, positions counted after the padding id.

RoBERTa and XLM-RoBERTa share BERT's encoder layer (post-LayerNorm, Q/K/V,
FFN); their pre-LayerNorm variants RoBERTa-PreLayerNorm
(``roberta-prelayernorm``) and XLM-RoBERTa-XL (``xlm-roberta-xl``, whose
embeddings have no LayerNorm) run
:class:`~blocksparse.nn.layers.PreNormBertLayer` and one LayerNorm after the
last layer.  All four differ from BERT in the embeddings: a token's position id is
``padding_idx + 1 + (its index among the non-padding tokens)``, padding
tokens keep ``padding_idx``, as transformers computes them from the input
ids; the token-type table usually has one row (``type_vocab_size`` 1), so
token types are all 0.  The longest sequence is therefore
``max_position_embeddings - padding_idx - 1`` tokens (512 for the 514
positions of roberta-base).
"""
import numpy as np

from . import _checkpoint as ckpt
from .bert import BertEmbeddings, BertModel
from .layers import LayerNorm

__all__ = ["RobertaEmbeddings", "RobertaModel"]


class RobertaEmbeddings(BertEmbeddings):
    """Word + position (counted after `padding_idx`) + token type embeddings, then LayerNorm.

    Parameters
    ----------
    word, position, token_type, ln
        As in :class:`~blocksparse.nn.BertEmbeddings`.
    padding_idx : int
        The padding token id (``pad_token_id``): non-padding tokens get
        positions ``padding_idx + 1, padding_idx + 2, ...`` in order,
        padding tokens ``padding_idx``.
    """

    def __init__(self, word, position, token_type, ln, padding_idx):
        super().__init__(word, position, token_type, ln)
        if not 0 <= int(padding_idx) < self.position.shape[0] - 1:
            raise ValueError(f"padding_idx must lie in [0, {self.position.shape[0] - 1}), got "
                             f"{padding_idx!r}")
        self.padding_idx = int(padding_idx)

    def position_ids(self, ids):
        """Position ids of a (batch, seq) array of token ids, as transformers makes them."""
        real = np.asarray(ids) != self.padding_idx
        return np.cumsum(real, axis=1) * real + self.padding_idx

    def _add_positions(self, x, ids):
        pos = self.position_ids(ids)
        x += np.take(self.position, pos.reshape(-1), axis=0).reshape(x.shape)


class RobertaModel(BertModel):
    """A RoBERTa or XLM-RoBERTa encoder (``model_type`` "roberta" / "xlm-roberta", or the
    pre-LayerNorm "roberta-prelayernorm" / "xlm-roberta-xl").

    Everything but the embeddings is :class:`~blocksparse.nn.BertModel`:
    loading (:meth:`from_pretrained`, :meth:`from_config`), pruning,
    INT8, :meth:`save_pretrained` and the call.  Sequences may hold at most
    :attr:`max_length` = ``max_position_embeddings - pad_token_id - 1``
    tokens.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import RobertaModel
    >>> cfg = dict(model_type="roberta", hidden_size=32, num_hidden_layers=1,
    ...            num_attention_heads=2, intermediate_size=64, vocab_size=50,
    ...            max_position_embeddings=34, type_vocab_size=1, pad_token_id=1)
    >>> model = RobertaModel.from_config(cfg, dtype="int8")
    >>> model.max_length, model(np.array([[0, 5, 6, 2, 1]])).shape
    (32, (1, 5, 32))
    """

    _max_length_rule = "max_position_embeddings - pad_token_id - 1"

    @staticmethod
    def _normalize_config(raw):
        return ckpt.normalize_config(raw, ckpt.ROBERTA_FAMILIES)

    @staticmethod
    def _make_embeddings(cfg, weights, project=None):
        if project is not None:
            raise ValueError("RoBERTa embeddings have no projection")
        ln = LayerNorm(weights["emb.ln.weight"], weights["emb.ln.bias"],
                       cfg["layer_norm_eps"]) if "emb.ln.weight" in weights else None
        return RobertaEmbeddings(weights["emb.word"], weights["emb.position"],
                                 weights.get("emb.token_type"), ln, cfg["pad_token_id"])

    @property
    def max_length(self):
        """The longest sequence: ``max_position_embeddings - pad_token_id - 1`` tokens."""
        return self.config["max_position_embeddings"] - self.config["pad_token_id"] - 1

    def _calibration_batch(self, calibration, special=((), ())):
        ids, mask = super()._calibration_batch(calibration, special)
        if calibration is None:  # random ids: keep them off the padding id
            ids = np.where(ids == self.config["pad_token_id"], ids + 1, ids)
            ids = np.ascontiguousarray(ids[:, :self.max_length])
            mask = None if mask is None else np.ascontiguousarray(mask[:, :self.max_length])
        return ids, mask
