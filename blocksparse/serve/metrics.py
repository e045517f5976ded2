"""Prometheus metrics of the embeddings server (``GET /metrics``).

Each server gets its own registry, so that several apps in one process
(tests, Ray Serve replicas) do not collide.  Names follow Prometheus'
conventions: ``_total`` counters, ``_seconds`` histograms.
"""
__all__ = ["Metrics"]

# Buckets for a server whose requests take about 1 ms to 1 s on a CPU.
_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """The server's counters and histograms in a private registry.

    Parameters
    ----------
    model : str
        Value of the ``model`` label.

    Attributes
    ----------
    registry : prometheus_client.CollectorRegistry
    """

    def __init__(self, model):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = r = CollectorRegistry()
        label = ["model"]
        self.requests = Counter("blocksparse_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.in_flight = Gauge("blocksparse_requests_in_flight",
                               "Embedding requests accepted and not yet answered", registry=r)
        self.request_seconds = Histogram("blocksparse_request_seconds",
                                         "Time from request received to response ready",
                                         label, buckets=_SECONDS, registry=r)
        self.inputs = Counter("blocksparse_inputs", "Texts or token lists embedded", label,
                              registry=r)
        self.tokens = Counter("blocksparse_tokens", "Tokens embedded (after truncation, "
                              "special tokens included)", label, registry=r)
        self.queue_depth = Gauge("blocksparse_queue_requests", "Requests waiting for a worker",
                                 registry=r)
        self.queue_seconds = Histogram("blocksparse_queue_seconds",
                                       "Time a request waited before its batch started", label,
                                       buckets=_SECONDS, registry=r)
        self.batch_size = Histogram("blocksparse_batch_size", "Sequences per batch", label,
                                    buckets=_COUNTS, registry=r)
        self.batch_tokens = Histogram("blocksparse_batch_tokens", "Tokens per batch "
                                      "(before padding)", label, buckets=_TOKENS, registry=r)
        self.inference_seconds = Histogram("blocksparse_inference_seconds",
                                           "Time of one batch in the model", label,
                                           buckets=_SECONDS, registry=r)
        self.cancelled_requests = Counter("blocksparse_cancelled_requests",
                                          "Requests dropped because the client went away",
                                          registry=r)
        self._model = model

    # ---- hooks the batcher calls ------------------------------------------------------

    def observe_batch(self, n_sequences, n_tokens, seconds):
        """One batch ran: its size, tokens and time in the model."""
        self.batch_size.labels(self._model).observe(n_sequences)
        self.batch_tokens.labels(self._model).observe(n_tokens)
        self.inference_seconds.labels(self._model).observe(seconds)

    def observe_queue(self, seconds):
        """A request left the queue after `seconds`."""
        self.queue_seconds.labels(self._model).observe(seconds)

    def set_queue(self, n_requests):
        """Requests now waiting."""
        self.queue_depth.set(n_requests)

    def cancelled(self):
        """A queued request was dropped."""
        self.cancelled_requests.inc()

    # ---- hooks the app calls ----------------------------------------------------------

    def observe_request(self, endpoint, status, seconds=None, inputs=0, tokens=0):
        """A request was answered with `status`."""
        self.requests.labels(endpoint, str(status)).inc()
        if seconds is not None:
            self.request_seconds.labels(self._model).observe(seconds)
        if inputs:
            self.inputs.labels(self._model).inc(inputs)
            self.tokens.labels(self._model).inc(tokens)

    def exposition(self):
        """(body bytes, content type) of the text exposition format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
