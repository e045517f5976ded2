"""Named entities (token classification) with transformers' aggregation strategies.

Per token, the softmax of the model's logits gives a label and its score
(special tokens left out).  The aggregation strategies are transformers':

* ``"none"``: one entity per token (``entity``, ``score``, ``index``,
  ``word`` = the token, ``start``, ``end``);
* ``"simple"``: adjacent tokens whose labels have the same type (``B-PER``
  then ``I-PER``; a ``B-`` starts a new group) are merged into one
  ``entity_group`` scored by the mean of their scores;
* ``"first"``, ``"average"``, ``"max"``: the tokens of a word first agree
  on one label (the first token's, the mean scores', or the highest-scoring
  token's), then words are grouped as in ``"simple"``.  A token continues a
  word when the tokenizer marks sub-words (WordPiece's ``##``: its text is
  longer than its span) or, for tokenizers that do not (byte-level BPE,
  SentencePiece), when no space precedes it -- transformers' rules.

Groups labelled with an ignored label (``"O"`` by default) are dropped.
``word`` of a group is its tokens (or words) joined by the tokenizer's
decoder, as transformers' ``convert_tokens_to_string``; ``start`` and
``end`` are character offsets into the text.  Texts longer than the model
takes are truncated.
"""
import numpy as np

from .. import nn
from ._task import TaskPipeline, _text_list, softmax

__all__ = ["TokenClassificationPipeline", "AGGREGATION_STRATEGIES"]

AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")


def _tag(label):
    """("B" or "I", type) of a label; a label without a B-/I- prefix continues (I)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


class TokenClassificationPipeline(TaskPipeline):
    """Entities in texts from a token classification model.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A ``*ForTokenClassification`` checkpoint directory with
        ``tokenizer.json``.
    aggregation_strategy : {"simple", "none", "first", "average", "max"}, optional
        See the module notes; "simple" by default.
    ignore_labels : sequence of str, optional
        Labels whose entities are dropped; ``("O",)`` by default.
    **options
        ``dtype``, ``sparsity``, ``blocksize``, ``max_length``,
        ``max_batch_tokens``, ``model`` and loader options, as
        :class:`~blocksparse.pipelines.TaskPipeline`.

    Examples
    --------
    >>> from blocksparse.pipelines import TokenClassificationPipeline
    >>> ner = TokenClassificationPipeline("path/to/ner-model", dtype="int8")    # doctest: +SKIP
    >>> ner("Marie Curie worked in Paris.")[0]                                # doctest: +SKIP
    [{'entity_group': 'PER', 'score': 0.99, 'word': 'Marie Curie', 'start': 0, 'end': 11},
     {'entity_group': 'LOC', 'score': 0.98, 'word': 'Paris', 'start': 22, 'end': 27}]
    """

    task_model = nn.ModelForTokenClassification
    name = "TokenClassificationPipeline"

    def __init__(self, model_dir, *, aggregation_strategy="simple", ignore_labels=("O",),
                 **options):
        super().__init__(model_dir, **options)
        self.aggregation_strategy = self._strategy(aggregation_strategy)
        if isinstance(ignore_labels, str):
            ignore_labels = (ignore_labels,)
        self.ignore_labels = tuple(ignore_labels)
        self.id2label = self.model.id2label
        # transformers' word rule: a sub-word prefix makes tokens longer than their text
        self._subword_prefix = getattr(self.tokenizer.model, "continuing_subword_prefix", None)
        unk = [getattr(self.tokenizer.model, "unk_token", None), "[UNK]", "<unk>"]
        self._unk = next((self.tokenizer.token_to_id(t) for t in unk
                          if t and self.tokenizer.token_to_id(t) is not None), None)

    @staticmethod
    def _strategy(name):
        if name not in AGGREGATION_STRATEGIES:
            raise ValueError(f"aggregation_strategy must be one of {AGGREGATION_STRATEGIES}, "
                             f"got {name!r}")
        return name

    def __call__(self, texts, aggregation_strategy=None):
        """Entities of each text.

        Parameters
        ----------
        texts : str or sequence of str
        aggregation_strategy : str, optional
            Overrides the pipeline's for this call.

        Returns
        -------
        list of list of dict
            One list per text, entities in text order.
        """
        strategy = self.aggregation_strategy if aggregation_strategy is None else \
            self._strategy(aggregation_strategy)
        texts = _text_list(texts)
        encodings = self.encode(texts)
        return [self._entities(text, enc, logits, strategy)
                for text, enc, logits in zip(texts, encodings, self.run(encodings))]

    def _entities(self, text, enc, logits, strategy):
        scores = softmax(logits.astype(np.float32))
        tokens = []
        for i, (tid, token, (start, end)) in enumerate(zip(enc.ids, enc.tokens, enc.offsets)):
            if enc.special_tokens_mask[i]:
                continue
            span = text[start:end]
            if tid == self._unk:
                token, subword = span, False
            elif self._subword_prefix:
                subword = len(token) != len(span)
            else:
                subword = start > 0 and " " not in text[start - 1:start + 1]
            tokens.append({"word": token, "scores": scores[i], "start": start, "end": end,
                           "index": i, "is_subword": subword})
        if strategy in ("none", "simple"):
            entities = [self._token_entity(t) for t in tokens]
        else:
            entities = [self._word_entity(w, strategy) for w in self._words(tokens)]
        if strategy != "none":
            entities = self._groups(entities)
        key = "entity" if strategy == "none" else "entity_group"
        return [e for e in entities if e[key] not in self.ignore_labels]

    def _token_entity(self, t):
        best = int(t["scores"].argmax())
        return {"entity": self.id2label[best], "score": float(t["scores"][best]),
                "index": t["index"], "word": t["word"], "start": t["start"], "end": t["end"]}

    @staticmethod
    def _words(tokens):
        words = []
        for t in tokens:
            if words and t["is_subword"]:
                words[-1].append(t)
            else:
                words.append([t])
        return words

    def _word_entity(self, word, strategy):
        if strategy == "first":
            scores = word[0]["scores"]
        elif strategy == "max":
            scores = max(word, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in word]), axis=0)
        best = int(scores.argmax())
        return {"entity": self.id2label[best], "score": float(scores[best]),
                "word": self._string([t["word"] for t in word]),
                "start": word[0]["start"], "end": word[-1]["end"]}

    def _string(self, tokens):
        """Tokens (or words) back to text, as the tokenizer's decoder joins them."""
        decoder = self.tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def _groups(self, entities):
        groups, current = [], []
        for e in entities:
            bi, tag = _tag(e["entity"])
            if current and (tag != _tag(current[-1]["entity"])[1] or bi == "B"):
                groups.append(self._group(current))
                current = []
            current.append(e)
        if current:
            groups.append(self._group(current))
        return groups

    def _group(self, entities):
        return {"entity_group": _tag(entities[0]["entity"])[1],
                "score": float(np.nanmean([e["score"] for e in entities])),
                "word": self._string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}
