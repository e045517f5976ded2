"""An OpenAI-compatible embeddings server with dynamic batching (``blocksparse serve``).

:func:`create_app` builds a Starlette application around an
:class:`~blocksparse.pipelines.EmbeddingPipeline`: ``POST /v1/embeddings``,
``GET /v1/models``, ``GET /health`` and ``GET /metrics``; concurrent
requests are packed into forward passes by a :class:`DynamicBatcher`.
:func:`run` serves it on uvicorn with a graceful shutdown.  Needs the
``serve`` extra (``pip install 'blocksparse[serve]'``); the rest of the
package never imports this module.

Examples
--------
>>> from blocksparse.pipelines import EmbeddingPipeline      # doctest: +SKIP
>>> from blocksparse.serve import ServerSettings, bind, create_app, run
>>> app = create_app(EmbeddingPipeline(dtype="int8"),
...                  ServerSettings(max_wait=0.005))           # doctest: +SKIP
>>> run(app, bind("127.0.0.1", 8000))                        # doctest: +SKIP
"""
from .app import ServerSettings, create_app
from .batcher import DynamicBatcher, Overloaded, ShuttingDown
from .server import bind, run

__all__ = ["create_app", "ServerSettings", "DynamicBatcher", "Overloaded", "ShuttingDown",
           "bind", "run"]
