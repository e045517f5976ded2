"""Extractive question answering: answer spans of a context, as transformers' QA pipeline.

The question and the context are tokenized as a pair; a context longer
than ``max_length`` allows is cut into overlapping windows (``doc_stride``
tokens of overlap, as the tokenizer's overflow makes them).  For every
window, :func:`answer_spans` turns the model's start and end logits into
probabilities (a softmax over the context tokens and the first, [CLS],
token) and ranks the spans ``start <= end < start + max_answer_len`` inside
the context by ``p_start * p_end``; character offsets come from the
tokenizer, widened to whole words by default.  The answers of all windows
are ranked together.  With ``handle_impossible_answer`` the empty answer
competes with the score ``p_start[CLS] * p_end[CLS]`` (the lowest over the
windows).
"""
import threading

import numpy as np

from .. import nn
from ._task import TaskPipeline, _positive, _text_list, softmax

__all__ = ["QuestionAnsweringPipeline", "answer_spans"]


def answer_spans(start_logits, end_logits, context_mask, *, max_answer_len=15, top_k=1,
                 cls_index=0):
    """The best answer spans of one sequence from its start and end logits.

    As transformers' question-answering pipeline: logits outside the
    context (and `cls_index`) are set to -10000, each of start and end
    goes through a softmax, and the spans ``(s, e)`` with both ends in the
    context and ``s <= e < s + max_answer_len`` are ranked by
    ``p_start[s] * p_end[e]``.

    Parameters
    ----------
    start_logits, end_logits : array_like of shape (seq,)
    context_mask : array_like of bool, shape (seq,)
        True for the context's tokens (where an answer may lie).
    max_answer_len : int, optional
        In tokens.
    top_k : int, optional
    cls_index : int or None, optional
        The token whose start and end probabilities score "no answer"
        (the first token, [CLS] or <s>); it takes part in the softmax.
        None: no such token.

    Returns
    -------
    spans : list of (int, int, float)
        ``(start_token, end_token, score)``, best first; at most `top_k`,
        fewer if the context has fewer spans.
    null_score : float or None
        ``p_start[cls_index] * p_end[cls_index]``.

    Raises
    ------
    ValueError
        If the shapes differ or `max_answer_len` / `top_k` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.pipelines import answer_spans
    >>> start = np.array([0.0, 0.0, 5.0, 1.0, 0.0])
    >>> end = np.array([0.0, 0.0, 1.0, 6.0, 0.0])
    >>> context = np.array([False, True, True, True, False])
    >>> spans, null = answer_spans(start, end, context, top_k=2)
    >>> [(s, e) for s, e, _ in spans]
    [(2, 3), (3, 3)]
    """
    s = np.asarray(start_logits, dtype=np.float64)
    e = np.asarray(end_logits, dtype=np.float64)
    ctx = np.asarray(context_mask, dtype=bool)
    if s.ndim != 1 or s.shape != e.shape or s.shape != ctx.shape:
        raise ValueError(f"start_logits, end_logits and context_mask must have one shape "
                         f"(seq,), got {s.shape}, {e.shape}, {ctx.shape}")
    max_answer_len = _positive(max_answer_len, "max_answer_len")
    top_k = _positive(top_k, "top_k")
    if not ctx.any():
        return [], None
    scored = ctx.copy()
    if cls_index is not None:
        scored[cls_index] = True
    ps = softmax(np.where(scored, s, -10000.0))
    pe = softmax(np.where(scored, e, -10000.0))
    null = None if cls_index is None else float(ps[cls_index] * pe[cls_index])
    idx = np.flatnonzero(ctx)
    # spans among the context tokens: (i, j) with 0 <= j - i < max_answer_len
    pair = np.outer(ps[idx], pe[idx])
    offset = idx[None, :] - idx[:, None]
    pair[(offset < 0) | (offset >= max_answer_len)] = -1.0
    flat = pair.ravel()
    n = min(top_k, int(np.count_nonzero(flat >= 0)))
    best = np.argsort(-flat, kind="stable")[:n]
    rows, cols = np.unravel_index(best, pair.shape)
    return [(int(idx[r]), int(idx[c]), float(pair[r, c])) for r, c in zip(rows, cols)], null


class QuestionAnsweringPipeline(TaskPipeline):
    """Answers to questions about a context, from an extractive QA model.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A ``*ForQuestionAnswering`` checkpoint directory with
        ``tokenizer.json``.
    max_length : int, optional
        Tokens per window, question and special tokens included (384 by
        default, as transformers; at most the model's).
    doc_stride : int, optional
        Tokens of context two windows share (128 by default); less when a
        long question leaves less room.
    max_answer_len : int, optional
        In tokens (15 by default).
    top_k : int, optional
        Answers per question (1 by default).
    handle_impossible_answer : bool, optional
        Let the empty answer compete (see the module notes).
    align_to_words : bool, optional
        Widen answers to whole words (default).
    **options
        ``dtype``, ``sparsity``, ``blocksize``, ``max_batch_tokens``,
        ``model`` and loader options, as
        :class:`~blocksparse.pipelines.TaskPipeline`.

    Examples
    --------
    >>> from blocksparse.pipelines import QuestionAnsweringPipeline
    >>> qa = QuestionAnsweringPipeline("path/to/squad-model", dtype="int8")   # doctest: +SKIP
    >>> qa("Where did Marie Curie work?", "Marie Curie worked in Paris.")   # doctest: +SKIP
    {'score': 0.91, 'start': 22, 'end': 27, 'answer': 'Paris'}
    """

    task_model = nn.ModelForQuestionAnswering
    name = "QuestionAnsweringPipeline"

    def __init__(self, model_dir, *, max_length=384, doc_stride=128, max_answer_len=15,
                 top_k=1, handle_impossible_answer=False, align_to_words=True, **options):
        super().__init__(model_dir, max_length=max_length, **options)
        self.doc_stride = int(doc_stride)
        if isinstance(doc_stride, bool) or self.doc_stride < 0:
            raise ValueError(f"doc_stride must be a non-negative integer, got {doc_stride!r}")
        self.max_answer_len = _positive(max_answer_len, "max_answer_len")
        self.top_k = _positive(top_k, "top_k")
        self.handle_impossible_answer = bool(handle_impossible_answer)
        self.align_to_words = bool(align_to_words)
        self._lock = threading.Lock()  # the tokenizer's stride changes per question

    def features(self, question, context):
        """The tokenized windows (tokenizers Encodings) of one question/context pair.

        Raises
        ------
        ValueError
            If the question or the context is empty, or the question leaves
            no room for context in :attr:`max_length` tokens.
        """
        if not question.strip() or not context.strip():
            raise ValueError("question and context must not be empty")
        tok = self.tokenizer
        with self._lock:
            q_len = len(tok.encode(question, add_special_tokens=False).ids)
            room = self.max_length - self._specials(True) - q_len
            if room < 1:
                raise ValueError(f"the question has {q_len} tokens: with the special "
                                 f"tokens it leaves no room for the context in "
                                 f"max_length = {self.max_length} tokens")
            # the tokenizer refuses a stride as long as the window's context part
            tok.enable_truncation(self.max_length, stride=min(self.doc_stride, room - 1),
                                  strategy="only_second")
            try:
                enc = tok.encode(question, context)
            finally:
                tok.enable_truncation(self.max_length, strategy="longest_first")
        return [enc] + list(enc.overflowing)

    @staticmethod
    def _row(y, row, length):
        return y.start_logits[row, :length], y.end_logits[row, :length]

    def __call__(self, question, context=None, top_k=None, max_answer_len=None,
                 handle_impossible_answer=None):
        """Answers, each ``{"score", "start", "end", "answer"}`` (character offsets).

        Parameters
        ----------
        question : str, sequence of str, or sequence of dict
            One question, several (with as many contexts), or dicts with
            keys ``"question"`` and ``"context"``.
        context : str or sequence of str, optional
        top_k, max_answer_len, handle_impossible_answer : optional
            Override the pipeline's settings for this call.

        Returns
        -------
        dict, list of dict, or a list of those
            For one question: its best answer (a list of the `top_k` best
            when `top_k` > 1); for several: a list with one such result
            each.  A context without any span gives an empty list (or the
            empty answer with `handle_impossible_answer`).
        """
        single = isinstance(question, str)
        if single:
            if not isinstance(context, str):
                raise TypeError("context must be a string when question is one")
            pairs = [(question, context)]
        elif context is None:
            pairs = []
            for item in question:
                if not isinstance(item, dict) or not {"question", "context"} <= set(item):
                    raise TypeError("questions without contexts must be dicts with keys "
                                    "'question' and 'context'")
                pairs.append((item["question"], item["context"]))
            pairs = list(zip(_text_list([q for q, _ in pairs]),
                             _text_list([c for _, c in pairs])))
        else:
            qs, cs = _text_list(question), _text_list(context)
            if len(qs) != len(cs):
                raise ValueError(f"question and context must have one entry each: {len(qs)} "
                                 f"questions, {len(cs)} contexts")
            pairs = list(zip(qs, cs))
        k = self.top_k if top_k is None else _positive(top_k, "top_k")
        max_len = self.max_answer_len if max_answer_len is None else \
            _positive(max_answer_len, "max_answer_len")
        null_ok = self.handle_impossible_answer if handle_impossible_answer is None else \
            bool(handle_impossible_answer)
        feats = [self.features(q, c) for q, c in pairs]
        flat = [f for fs in feats for f in fs]
        logits = iter(self.run(flat))
        results = []
        for (_, context), fs in zip(pairs, feats):
            answers, null = [], None
            for enc in fs:
                start, end = next(logits)
                ctx = np.array([s == 1 for s in enc.sequence_ids])
                cls = 0 if enc.special_tokens_mask and enc.special_tokens_mask[0] else None
                spans, n = answer_spans(start, end, ctx, max_answer_len=max_len, top_k=k,
                                        cls_index=cls)
                if n is not None:
                    null = n if null is None else min(null, n)
                answers += [self._answer(enc, context, a, b, score) for a, b, score in spans]
            if null_ok and null is not None:
                answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
            answers = sorted(answers, key=lambda a: -a["score"])[:k]
            results.append(answers[0] if k == 1 and answers else answers)
        return results[0] if single else results

    def _answer(self, enc, context, s, e, score):
        start, end = enc.offsets[s][0], enc.offsets[e][1]
        if self.align_to_words:
            words = enc.word_ids
            for i in range(len(words)):
                if enc.sequence_ids[i] == 1 and words[i] is not None:
                    if words[i] == words[s]:
                        start = min(start, enc.offsets[i][0])
                    if words[i] == words[e]:
                        end = max(end, enc.offsets[i][1])
        return {"score": score, "start": int(start), "end": int(end),
                "answer": context[start:end]}
