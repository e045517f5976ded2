"""Task pipelines: text in, model outputs out, with the model's own pre- and post-processing.

:class:`EmbeddingPipeline` turns texts (or token ids) into sentence embeddings
the way a sentence-transformers model directory describes them: its
tokenizer, its maximum sequence length, its pooling and its normalization,
with :mod:`blocksparse.nn` (float32 or INT8) in between.
:class:`TextClassificationPipeline` (labels and scores of texts or text
pairs, cross-encoder scores), :class:`TokenClassificationPipeline` (named
entities, transformers' aggregation strategies) and
:class:`QuestionAnsweringPipeline` (answer spans, with :func:`answer_spans`)
run the task models of :func:`blocksparse.nn.from_pretrained` as
transformers' pipelines of the same names do.  They need the ``models``
extra (``tokenizers``, ``safetensors``) and are imported only when asked for.
"""
from ._task import TaskPipeline, pad_batch
from .classification import TextClassificationPipeline
from .embedding import EmbeddingPipeline, plan_batches
from .question_answering import QuestionAnsweringPipeline, answer_spans
from .token_classification import TokenClassificationPipeline

__all__ = ["EmbeddingPipeline", "plan_batches", "TextClassificationPipeline",
           "TokenClassificationPipeline", "QuestionAnsweringPipeline", "answer_spans",
           "TaskPipeline", "pad_batch"]
