"""A PyTorch copy of :mod:`blocksparse.nn`'s BERT encoder, for training only.

:class:`TorchBert` computes what :class:`blocksparse.nn.BertModel` computes
in float32 (embeddings + LayerNorm, post-LayerNorm encoder layers with
erf GELU or ReLU, attention that gives padded keys weight 0), on torch
tensors (batch, seq, hidden), so that autograd can train it.  Each encoder
Linear weight carries a block mask (:class:`MaskedLinear`): the forward pass
uses ``weight * mask``, so the network is exactly the block-sparse one at
every step.  Weights come from a blocksparse model and go back to one
(:func:`from_blocksparse`, :func:`to_blocksparse`); nothing here is used for
inference.

This module imports torch at the top: import it only after
:func:`blocksparse.train._distill.require_torch` has said torch is there.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._matrix import BlockSparseMatrix
from .._prune import _from_keep
from ..nn.bert import default_attention
from ..nn.layers import (BertEncoder, BertLayer, LayerNorm, Linear, MultiHeadSelfAttention,
                         _stack_rows)

PARTS = ("q", "k", "v", "o", "ffn1", "ffn2")


def _keep_of(weight):
    """Block keep mask (nbr, nbc) of a float BlockSparseMatrix, from what it stores."""
    R, C = weight.blocksize
    M, K = weight.shape
    keep = np.zeros((M // R, K // C), dtype=bool)
    rows = np.repeat(np.arange(M // R), np.diff(weight.indptr))
    keep[rows, weight.indices] = True
    return keep


def _dense_weight(lin, name):
    """(float32 dense weight, block keep mask or None) of a float blocksparse Linear."""
    if lin.kind == "int8":
        raise ValueError(f"{name} is INT8: training needs float32 weights (load or prune the "
                         f"model with dtype='float32')")
    if lin.kind == "dense":
        return np.array(lin.weight, dtype=np.float32), None
    return lin.weight.toarray().astype(np.float32), _keep_of(lin.weight)


class MaskedLinear(nn.Module):
    """``y = x @ (W * mask).T + b`` with a mask of whole (R, C) blocks.

    Parameters
    ----------
    weight : ndarray of shape (M, K)
    bias : ndarray of shape (M,) or None
    blocksize : tuple of int
        (R, C): R consecutive output rows by C consecutive inputs.
    keep : ndarray of bool, shape (M // R, K // C), optional
        Blocks kept; None keeps all (dense).
    """

    def __init__(self, weight, bias, blocksize, keep=None):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(np.asarray(weight, np.float32)))
        self.bias = None if bias is None else \
            nn.Parameter(torch.tensor(np.asarray(bias, np.float32)))
        self.blocksize = tuple(int(b) for b in blocksize)
        M, K = self.weight.shape
        R, C = self.blocksize
        self.register_buffer("keep", torch.ones(M // R, K // C, dtype=torch.bool))
        self.register_buffer("mask", None)
        if keep is not None:
            self.set_keep(torch.as_tensor(np.asarray(keep, dtype=bool)))

    def set_keep(self, keep):
        """Keep only the blocks where `keep` is True; pruned weights become 0."""
        R, C = self.blocksize
        self.keep = keep.to(torch.bool).clone()
        self.mask = self.keep.repeat_interleave(R, 0).repeat_interleave(C, 1).to(
            self.weight.dtype)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def block_norms(self):
        """L2 norm of each (R, C) block of the weight, shape (M // R, K // C)."""
        R, C = self.blocksize
        M, K = self.weight.shape
        w = self.weight.detach().reshape(M // R, R, K // C, C)
        return w.pow(2).sum(dim=(1, 3)).sqrt()

    def masked_weight(self):
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x):
        return F.linear(x, self.masked_weight(), self.bias)


class _Layer(nn.Module):
    def __init__(self, parts, ln1, ln2, heads, eps, activation):
        super().__init__()
        for name in PARTS:
            setattr(self, name, parts[name])
        H = parts["o"].weight.shape[0]
        self.ln1, self.ln2 = nn.LayerNorm(H, eps=eps), nn.LayerNorm(H, eps=eps)
        with torch.no_grad():
            for ln, (g, b) in ((self.ln1, ln1), (self.ln2, ln2)):
                ln.weight.copy_(torch.as_tensor(g))
                ln.bias.copy_(torch.as_tensor(b))
        self.heads, self.activation = heads, activation

    def forward(self, x, attend):
        B, S, H = x.shape
        d = H // self.heads

        def heads(t):
            return t.view(B, S, self.heads, d).transpose(1, 2)

        scores = heads(self.q(x)) @ heads(self.k(x)).transpose(-1, -2) / math.sqrt(d)
        # padded keys: weight exactly 0 after the softmax, as the C kernel
        probs = torch.softmax(scores.masked_fill(~attend, float("-inf")), dim=-1)
        ctx = (probs @ heads(self.v(x))).transpose(1, 2).reshape(B, S, H)
        h1 = self.ln1(self.o(ctx) + x)
        inter = self.ffn1(h1)
        inter = F.gelu(inter) if self.activation == "gelu" else torch.relu(inter)
        return self.ln2(self.ffn2(inter) + h1)


class TorchBert(nn.Module):
    """The encoder of a :class:`blocksparse.nn.BertModel` as a torch module.

    ``forward(input_ids, attention_mask, token_type_ids=None)`` returns the
    list of hidden states: the embeddings' output, then each layer's
    output, each (batch, seq, hidden) float32.  Build it with
    :meth:`from_blocksparse`.
    """

    def __init__(self, config, embeddings, layers):
        super().__init__()
        self.config = dict(config)
        self.word, self.position, self.token_type, self.emb_ln = embeddings
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_blocksparse(cls, model, blocksize=None):
        """Copy a float32 :class:`blocksparse.nn.BertModel` (dense or block-sparse).

        Block-sparse Linear layers keep their pattern as the mask; dense
        ones get an all-True mask of `blocksize` blocks (the model's own by
        default).
        """
        cfg = model.config
        blocksize = tuple(blocksize or model.blocksize)
        H, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        emb = model.embeddings

        def table(a):
            t = nn.Embedding(*a.shape)
            with torch.no_grad():
                t.weight.copy_(torch.as_tensor(a))
            return t

        emb_ln = nn.LayerNorm(H, eps=eps)
        with torch.no_grad():
            emb_ln.weight.copy_(torch.as_tensor(emb.ln.weight))
            emb_ln.bias.copy_(torch.as_tensor(emb.ln.bias))
        embeddings = (table(emb.word), table(emb.position),
                      None if emb.token_type is None else table(emb.token_type), emb_ln)
        layers = []
        for i, layer in enumerate(model.encoder):
            parts = {}
            W, keep = _dense_weight(layer.attention.qkv, f"layer {i} qkv")
            b = layer.attention.qkv.bias
            for j, name in enumerate(("q", "k", "v")):
                rows = slice(j * H, (j + 1) * H)
                k = None if keep is None else keep[j * H // blocksize[0]:
                                                   (j + 1) * H // blocksize[0]]
                parts[name] = MaskedLinear(W[rows], None if b is None else b[rows],
                                           _blocksize(layer.attention.qkv, blocksize), k)
            for name, lin in (("o", layer.attention.out), ("ffn1", layer.ffn1),
                              ("ffn2", layer.ffn2)):
                W, keep = _dense_weight(lin, f"layer {i} {name}")
                parts[name] = MaskedLinear(W, lin.bias, _blocksize(lin, blocksize), keep)
            layers.append(_Layer(parts, (layer.ln1.weight, layer.ln1.bias),
                                 (layer.ln2.weight, layer.ln2.bias),
                                 layer.attention.num_heads, eps, layer.activation))
        return cls(cfg, embeddings, layers)

    def linears(self):
        """(name, MaskedLinear) of every encoder Linear weight, e.g. ("2.ffn1", ...)."""
        return [(f"{i}.{name}", getattr(layer, name))
                for i, layer in enumerate(self.layers) for name in PARTS]

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        S = input_ids.shape[1]
        x = self.word(input_ids) + self.position.weight[:S]
        if self.token_type is not None:
            x = x + (self.token_type.weight[0] if token_type_ids is None
                     else self.token_type(token_type_ids))
        x = self.emb_ln(x)
        attend = (attention_mask != 0)[:, None, None, :]
        states = [x]
        for layer in self.layers:
            x = layer(x, attend)
            states.append(x)
        return states


def _blocksize(lin, default):
    return lin.weight.blocksize if isinstance(lin.weight, BlockSparseMatrix) else default


def mean_pool(hidden, attention_mask):
    """Mean of the real tokens' vectors, (batch, hidden), as :func:`blocksparse.nn.mean_pooling`."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)


def _array(t):
    return t.detach().cpu().numpy().astype(np.float32)


def to_blocksparse(student, source, blocksize, dtype="int8", smoothing=None,
                   calibration=None):
    """A :class:`blocksparse.nn.BertModel` with the student's encoder weights.

    Every encoder Linear weight becomes a block-sparse float32 matrix of
    exactly the student's kept blocks (Q, K and V stacked as the
    package's encoder stacks them), then INT8 if `dtype` says so, with
    SmoothQuant maxima from one float pass over `calibration` (token
    batches).  Embeddings and the pooler are taken from `source` (the
    student does not train them); LayerNorms and biases from the student.
    """
    cfg = source.config
    eps = cfg["layer_norm_eps"]
    layers = []
    for layer in student.layers:
        lin = {}
        for name in PARTS:
            m = getattr(layer, name)
            W = _array(m.masked_weight())
            lin[name] = (_from_keep(W, m.keep.cpu().numpy(), blocksize, np.float32),
                         None if m.bias is None else _array(m.bias))
        qkv = Linear(_stack_rows([lin[n][0] for n in ("q", "k", "v")]),
                     np.concatenate([lin[n][1] for n in ("q", "k", "v")]))
        layers.append(BertLayer(
            MultiHeadSelfAttention(qkv, Linear(*lin["o"]), layer.heads),
            LayerNorm(_array(layer.ln1.weight), _array(layer.ln1.bias), eps),
            Linear(*lin["ffn1"]), Linear(*lin["ffn2"]),
            LayerNorm(_array(layer.ln2.weight), _array(layer.ln2.bias), eps),
            layer.activation))
    if dtype == "int8":
        layers = _to_int8(source.embeddings, layers, smoothing, calibration, blocksize)
    out = type(source)(cfg, source.embeddings, BertEncoder(layers), source.pooler)
    out.blocksize, out.smoothing = tuple(blocksize), smoothing if dtype == "int8" else None
    out.attention = default_attention()
    return out


def _to_int8(embeddings, layers, smoothing, batches, blocksize):
    """INT8 copies of float layers, smoothed with maxima over real tokens of `batches`."""
    if not smoothing or not batches:
        return [layer.to_int8(blocksize=blocksize) for layer in layers]
    H = layers[0].hidden_size
    qkv_max = [np.zeros(H, np.float32) for _ in layers]
    ffn1_max = [np.zeros(H, np.float32) for _ in layers]
    for _, ids, mask, types in batches:
        B, S = ids.shape
        m = (mask != 0).astype(np.uint8)
        x = embeddings._forward(ids.astype(np.intp), types.astype(np.intp))[0]
        real = m.ravel() != 0
        for i, layer in enumerate(layers):  # as BertLayer._calibrate, real tokens only
            np.maximum(qkv_max[i], np.abs(x[:, real]).max(axis=1), out=qkv_max[i])
            a = layer.attention._forward(x, None, m, B, S)
            h1, _ = layer.ln1._forward(a, x, out=a)
            np.maximum(ffn1_max[i], np.abs(h1[:, real]).max(axis=1), out=ffn1_max[i])
            o = layer.ffn2._forward(layer.ffn1._forward(h1, None, layer.activation), None)
            x = layer.ln2._forward(o, h1, out=o)[0]
    return [layer.to_int8(q, f, smoothing, blocksize)
            for layer, q, f in zip(layers, qkv_max, ffn1_max)]
