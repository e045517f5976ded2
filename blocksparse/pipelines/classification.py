"""Text classification and cross-encoder scoring, as transformers' text-classification pipeline.

The scores are the logits of a sequence classifier
(:class:`blocksparse.nn.ModelForSequenceClassification`) through a
function chosen as transformers chooses it: none for a regression model
(``problem_type`` "regression"), the sigmoid for a multi-label model or a
model with one label (a cross-encoder's relevance), the softmax otherwise.
"""
import numpy as np

from .. import nn
from ._task import TaskPipeline, softmax

__all__ = ["TextClassificationPipeline", "FUNCTIONS"]

#: Values of ``function_to_apply`` (None: as the model's config says).
FUNCTIONS = ("softmax", "sigmoid", "none")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class TextClassificationPipeline(TaskPipeline):
    """Labels and scores of texts (or text pairs) from a sequence classification model.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A ``*ForSequenceClassification`` checkpoint directory with
        ``tokenizer.json``.
    function_to_apply : {None, "softmax", "sigmoid", "none"}, optional
        From logits to scores; None chooses as transformers does (see the
        module notes).
    **options
        ``dtype``, ``sparsity``, ``blocksize``, ``max_length``,
        ``max_batch_tokens``, ``model`` and loader options, as
        :class:`~blocksparse.pipelines.TaskPipeline`.

    Attributes
    ----------
    id2label : dict of int to str
    function_to_apply : str

    Examples
    --------
    >>> from blocksparse.pipelines import TextClassificationPipeline
    >>> pipe = TextClassificationPipeline("path/to/sentiment", dtype="int8")   # doctest: +SKIP
    >>> pipe(["I loved it.", "Awful."])                                      # doctest: +SKIP
    [{'label': 'positive', 'score': 0.98}, {'label': 'negative', 'score': 0.95}]
    >>> pipe.score([("query", "a relevant passage")])  # a cross-encoder     # doctest: +SKIP
    array([0.93], dtype=float32)
    """

    task_model = nn.ModelForSequenceClassification
    name = "TextClassificationPipeline"

    def __init__(self, model_dir, *, function_to_apply=None, **options):
        super().__init__(model_dir, **options)
        self.id2label = self.model.id2label
        self.function_to_apply = self._function(function_to_apply)

    def _function(self, name):
        if name is None:
            problem = self.model.problem_type
            if problem == "regression":
                return "none"
            if problem == "multi_label_classification" or len(self.id2label) == 1:
                return "sigmoid"
            return "softmax"
        if name not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be None or one of {FUNCTIONS}, got "
                             f"{name!r}")
        return name

    def logits(self, texts, text_pairs=None):
        """The model's logits, float32 (n_texts, num_labels), in input order.

        Parameters
        ----------
        texts : str or sequence of str
        text_pairs : str or sequence of str, optional
            The second text of each pair (a cross-encoder's passage).
        """
        rows = self.run(self.encode(texts, text_pairs))
        return np.array(rows, dtype=np.float32).reshape(len(rows), len(self.id2label))

    def scores(self, texts, text_pairs=None, function_to_apply=None):
        """Scores, float32 (n_texts, num_labels): the logits through the function.

        Parameters
        ----------
        texts, text_pairs
            As in :meth:`logits`.
        function_to_apply : {None, "softmax", "sigmoid", "none"}, optional
            None: the pipeline's :attr:`function_to_apply`.
        """
        fn = self.function_to_apply if function_to_apply is None else \
            self._function(function_to_apply)
        x = self.logits(texts, text_pairs).astype(np.float64)
        y = softmax(x) if fn == "softmax" else _sigmoid(x) if fn == "sigmoid" else x
        return y.astype(np.float32)

    def score(self, pairs, function_to_apply=None):
        """Cross-encoder scores of (text, text_pair) pairs.

        Parameters
        ----------
        pairs : sequence of (str, str)
        function_to_apply : as in :meth:`scores`
            By default the sigmoid for a one-label model, as
            sentence-transformers' ``CrossEncoder.predict``.

        Returns
        -------
        ndarray of float32
            (n_pairs,) for a one-label model, else (n_pairs, num_labels).
        """
        pairs = list(pairs)
        if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
            raise TypeError("pairs must be (text, text_pair) tuples")
        y = self.scores([a for a, _ in pairs], [b for _, b in pairs], function_to_apply)
        return y[:, 0] if y.shape[1] == 1 else y

    def __call__(self, texts, text_pairs=None, top_k=1, function_to_apply=None):
        """Labels with their scores, one entry per text.

        Parameters
        ----------
        texts, text_pairs
            As in :meth:`logits`.
        top_k : int or None, optional
            1 (default): each entry is ``{"label", "score"}`` of the best
            label; k > 1: a list of the k best, best first; None: every label,
            best first.
        function_to_apply : as in :meth:`scores`

        Returns
        -------
        list
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise ValueError(f"top_k must be None or a positive integer, got {top_k!r}")
        out = []
        for row in self.scores(texts, text_pairs, function_to_apply):
            order = sorted(range(len(row)), key=lambda i: -row[i])[:top_k]
            ranked = [{"label": self.id2label[i], "score": float(row[i])} for i in order]
            out.append(ranked[0] if top_k == 1 else ranked)
        return out
