"""The ASGI application: OpenAI-compatible embeddings over a dynamic batcher.

Routes:

* ``POST /v1/embeddings``: OpenAI's embeddings API (see
  :mod:`blocksparse.serve.protocol`);
* ``GET /v1/models``: the one served model;
* ``GET /health``: 200 ``{"status": "ok"}`` while serving, 503 while
  draining for shutdown;
* ``GET /metrics``: Prometheus text format (see
  :mod:`blocksparse.serve.metrics`).

A request is read up to ``max_request_bytes``, validated, tokenized (in a
helper thread when large), queued in the :class:`DynamicBatcher` and
answered with its own rows.  If the client disconnects while the request
waits, it is cancelled and never reaches the model.
"""
import asyncio
import contextlib
import dataclasses
import logging
import time

from .batcher import DynamicBatcher, Overloaded, ShuttingDown
from .metrics import Metrics
from .protocol import RequestError, embedding_response, error_body, parse_embedding_request

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("blocksparse.serve")

# Requests with more text than this are tokenized in a helper thread rather
# than on the event loop, which meanwhile keeps reading other requests.
_INLINE_TOKENIZE_CHARS = 16384


@dataclasses.dataclass
class ServerSettings:
    """Batching and limits of the embeddings server.

    Parameters
    ----------
    max_batch_tokens : int
        Tokens packed into one batch (also the padded tokens of one forward
        pass of the pipeline).
    max_wait : float
        Seconds the oldest queued request waits for others to join its batch.
    workers : int
        Inference threads, each running one batch at a time on the shared
        model (see the deployment guide for choosing them with the kernel
        threads).
    max_request_bytes : int
        Largest request body; larger ones get 413.
    max_inputs : int
        Items allowed in one request's ``input``.
    max_queue_tokens : int or None
        Tokens allowed to wait; past that new requests get 429.
    """

    max_batch_tokens: int = 8192
    max_wait: float = 0.0
    workers: int = 1
    max_request_bytes: int = 4 * 1024 * 1024
    max_inputs: int = 2048
    max_queue_tokens: int = 2_000_000

    def __post_init__(self):
        for name in ("max_batch_tokens", "workers", "max_request_bytes", "max_inputs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.max_wait, (int, float)) and self.max_wait >= 0):
            raise ValueError(f"max_wait must be a number of seconds >= 0, got "
                             f"{self.max_wait!r}")
        q = self.max_queue_tokens
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or q < 1):
            raise ValueError(f"max_queue_tokens must be None or a positive integer, got {q!r}")


def _json(body, status=200):
    from starlette.responses import JSONResponse
    return JSONResponse(body, status_code=status)


async def _read_body(request, limit):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"the request body has {length} bytes; this server takes at most "
                           f"{limit}", status=413, code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is larger than {limit} bytes", status=413,
                               code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _sequences(pipeline, req):
    """Token ids with special tokens, truncated as the model's config says."""
    if not req.tokens:
        return pipeline.tokenize(req.inputs)
    try:
        return [pipeline.add_special_tokens(ids) for ids in req.inputs]
    except (TypeError, ValueError) as exc:
        raise RequestError(f"'input': {exc}", param="input") from None


async def _until_disconnect(request):
    # After the body, the server's next message is http.disconnect: when the
    # client goes away, or once the response is complete.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _result_unless_disconnected(request, coro):
    """The coroutine's result, or None if the client disconnected first (it is cancelled)."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        return None
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def create_app(pipeline, settings=None):
    """The embeddings server as a Starlette application.

    Parameters
    ----------
    pipeline : EmbeddingPipeline
        Or any object with ``name``, ``dimension``, ``max_length``,
        ``tokenize(texts)``, ``add_special_tokens(ids)`` and
        ``encode_ids(sequences)``.
    settings : ServerSettings, optional

    Returns
    -------
    starlette.applications.Starlette
        ``app.state`` holds ``pipeline``, ``settings``, ``batcher``,
        ``metrics`` and ``draining`` (set it to make ``/health`` answer 503).
        The batcher starts and stops with the app's lifespan; on shutdown
        every accepted request is answered first.

    Raises
    ------
    ImportError
        Without Starlette or prometheus_client (``pip install
        'blocksparse[serve]'``).
    """
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect
        from starlette.responses import Response
        from starlette.routing import Route
    except ImportError:
        raise ImportError("the server needs Starlette, uvicorn and prometheus_client "
                          "(pip install 'blocksparse[serve]')") from None
    settings = settings or ServerSettings()
    metrics = Metrics(pipeline.name)
    batcher = DynamicBatcher(pipeline.encode_ids, max_batch_tokens=settings.max_batch_tokens,
                             max_wait=settings.max_wait, workers=settings.workers,
                             max_queue_tokens=settings.max_queue_tokens, metrics=metrics)
    created = int(time.time())

    async def embeddings(request):
        t0 = time.perf_counter()
        status, n_inputs, n_tokens = 200, 0, 0
        metrics.in_flight.inc()
        try:
            body = await _read_body(request, settings.max_request_bytes)
            req = parse_embedding_request(body, max_inputs=settings.max_inputs)
            if req.dimensions is not None and req.dimensions != pipeline.dimension:
                raise RequestError(f"'dimensions' must be {pipeline.dimension} for this model "
                                   f"(it does not shorten its vectors)", param="dimensions")
            if req.tokens or sum(map(len, req.inputs)) <= _INLINE_TOKENIZE_CHARS:
                sequences = _sequences(pipeline, req)
            else:
                sequences = await asyncio.to_thread(_sequences, pipeline, req)
            rows = await _result_unless_disconnected(request, batcher.submit(sequences))
            if rows is None:
                status = 499  # nginx's "client closed request"; nobody reads it
                return Response(status_code=status)
            n_inputs, n_tokens = len(sequences), sum(map(len, sequences))
            content = embedding_response(rows, model=pipeline.name,
                                         encoding_format=req.encoding_format,
                                         prompt_tokens=n_tokens)
            return Response(content, media_type="application/json")
        except RequestError as exc:
            status = exc.status
            return _json(exc.body(), status)
        except Overloaded as exc:
            status = 429
            return _json(error_body(str(exc), type="server_overloaded", code="overloaded"),
                         status)
        except ClientDisconnect:  # gone while sending its body
            status = 499
            return Response(status_code=status)
        except ShuttingDown as exc:
            status = 503
            return _json(error_body(str(exc), type="server_error", code="shutting_down"),
                         status)
        except Exception as exc:
            status = 500
            log.exception("embedding request failed")
            return _json(error_body(f"internal error: {type(exc).__name__}: {exc}",
                                    type="server_error"), status)
        finally:
            metrics.in_flight.dec()
            metrics.observe_request("/v1/embeddings", status, time.perf_counter() - t0,
                                    n_inputs, n_tokens)

    async def models(request):
        metrics.observe_request("/v1/models", 200)
        return _json({"object": "list", "data": [{
            "id": pipeline.name, "object": "model", "created": created,
            "owned_by": "blocksparse", "dimension": pipeline.dimension,
            "max_input_tokens": pipeline.max_length}]})

    async def health(request):
        if app.state.draining or batcher.closing:
            metrics.observe_request("/health", 503)
            return _json({"status": "draining"}, 503)
        metrics.observe_request("/health", 200)
        return _json({"status": "ok", "model": pipeline.name})

    async def prometheus(request):
        body, content_type = metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    async def http_error(request, exc):
        metrics.observe_request("other", exc.status_code)
        return _json(error_body(f"{request.method} {request.url.path}: {exc.detail}",
                                code=str(exc.status_code)), exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        # one small batch first, so that no client pays for lazily built caches
        await batcher.submit(pipeline.tokenize(["warm up"]))
        yield
        app.state.draining = True
        await batcher.close()

    app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                            Route("/embeddings", embeddings, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"]),
                            Route("/metrics", prometheus, methods=["GET"])],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.pipeline = pipeline
    app.state.settings = settings
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.draining = False
    return app
