"""Task pipelines: text in, model outputs out, with the model's own pre- and post-processing.

:class:`EmbeddingPipeline` turns texts (or token ids) into sentence embeddings
the way a sentence-transformers model directory describes them: its
tokenizer, its maximum sequence length, its pooling and its normalization,
with :mod:`blocksparse.nn` (float32 or INT8) in between.  It needs the
``models`` extra (``tokenizers``, ``safetensors``) and is imported only when
asked for.
"""
from .embedding import EmbeddingPipeline, plan_batches

__all__ = ["EmbeddingPipeline", "plan_batches"]
