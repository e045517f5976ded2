"""Dynamic batching: concurrent requests packed into forward passes.

Requests wait in a FIFO queue.  When an inference worker is free, the
batcher takes the oldest request and adds the next ones while their tokens
fit in ``max_batch_tokens`` and the oldest has waited less than
``max_wait``; the batch then runs in a worker thread (the kernels release
the GIL, so the event loop keeps accepting and parsing requests meanwhile)
and each request's future gets its own rows.  A worker that is busy lets
the queue grow, so batches get larger exactly when the load is high; at low
load a request waits at most ``max_wait`` for company.

A request whose client went away is cancelled: its future is cancelled and
the batcher skips it if it has not started yet.
"""
import asyncio
import collections
import concurrent.futures
import time

__all__ = ["DynamicBatcher", "Overloaded", "ShuttingDown"]


class Overloaded(RuntimeError):
    """The queue holds more tokens than the server accepts to wait (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The batcher is stopping and takes no new work (HTTP 503)."""


class _Job:
    __slots__ = ("sequences", "tokens", "future", "enqueued")

    def __init__(self, sequences, future):
        self.sequences = sequences
        self.tokens = sum(len(s) for s in sequences)
        self.future = future
        self.enqueued = time.perf_counter()


class DynamicBatcher:
    """Queue token-id sequences and run them through `encode` in packed batches.

    Parameters
    ----------
    encode : callable
        ``encode(list of sequences) -> ndarray of shape (n, dim)``, rows in
        input order; called in a worker thread (for example
        :meth:`blocksparse.pipelines.EmbeddingPipeline.encode_ids`).
    max_batch_tokens : int, optional
        Tokens (before padding) packed into one call of `encode`; a single
        request larger than this runs alone.
    max_wait : float, optional
        Seconds the oldest queued request may wait for others to join its
        batch (0: take whatever is queued when a worker is free).
    workers : int, optional
        Worker threads, each running one batch at a time.
    max_queue_tokens : int, optional
        Refuse new requests with :class:`Overloaded` while more tokens than
        this are queued (None: no limit).
    metrics : object, optional
        With methods ``observe_batch(n_sequences, n_tokens, seconds)``,
        ``observe_queue(seconds)``, ``set_queue(n_requests)`` and
        ``cancelled()``; see :class:`blocksparse.serve.metrics.Metrics`.

    Notes
    -----
    Create it, then ``await start()`` inside the event loop that will
    :meth:`submit` to it; ``await close()`` finishes every accepted request
    before returning.
    """

    def __init__(self, encode, *, max_batch_tokens=8192, max_wait=0.0, workers=1,
                 max_queue_tokens=None, metrics=None):
        if not callable(encode):
            raise TypeError("encode must be callable")
        if isinstance(max_batch_tokens, bool) or int(max_batch_tokens) < 1:
            raise ValueError(f"max_batch_tokens must be a positive integer, got "
                             f"{max_batch_tokens!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        if isinstance(workers, bool) or int(workers) < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.encode = encode
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_wait = float(max_wait)
        self.workers = int(workers)
        self.max_queue_tokens = None if max_queue_tokens is None else int(max_queue_tokens)
        self.metrics = metrics
        self._jobs = collections.deque()
        self._queued_tokens = 0
        self._arrived = None
        self._slots = None
        self._running = set()
        self._executor = None
        self._task = None
        self._closing = False

    # ---- life cycle ------------------------------------------------------------------

    async def start(self):
        """Start the batching task and the worker threads in the running loop."""
        if self._task is not None:
            raise RuntimeError("the batcher is already running")
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(self.workers)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="blocksparse-infer")
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self):
        """Refuse new requests, finish the queued and running ones, stop the threads."""
        if self._task is None:
            return
        self._closing = True
        self._arrived.set()
        try:
            await self._task
        finally:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            self._executor.shutdown(wait=True)
            self._task = None

    @property
    def closing(self):
        """True once :meth:`close` was called."""
        return self._closing

    @property
    def queued(self):
        """Requests waiting for a worker."""
        return len(self._jobs)

    # ---- requests --------------------------------------------------------------------

    async def submit(self, sequences):
        """Queue one request's sequences and wait for their rows.

        Parameters
        ----------
        sequences : list of list of int

        Returns
        -------
        ndarray of shape (len(sequences), dim)

        Raises
        ------
        ShuttingDown
            After :meth:`close`.
        Overloaded
            If the queue is over ``max_queue_tokens``.
        asyncio.CancelledError
            If the awaiting task is cancelled (the request is then dropped
            unless its batch already started).
        """
        if self._task is None or self._closing:
            raise ShuttingDown("the server is shutting down")
        job = _Job(list(sequences), asyncio.get_running_loop().create_future())
        if self.max_queue_tokens is not None and self._jobs and \
                self._queued_tokens + job.tokens > self.max_queue_tokens:
            raise Overloaded(f"the server has {self._queued_tokens} tokens queued; "
                             f"try again later")
        self._jobs.append(job)
        self._queued_tokens += job.tokens
        self._set_queue_metric()
        self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # cancelling the awaiting task has cancelled the future too, unless
            # its rows were already there
            job.future.cancel()
            if job.future.cancelled() and self.metrics is not None:
                self.metrics.cancelled()
            raise

    # ---- the batching loop -----------------------------------------------------------

    def _set_queue_metric(self):
        if self.metrics is not None:
            self.metrics.set_queue(len(self._jobs))

    def _pop(self):
        job = self._jobs.popleft()
        self._queued_tokens -= job.tokens
        return job

    async def _wait_for_job(self, timeout=None):
        """Wait until the queue is not empty; False on timeout."""
        while not self._jobs:
            if self._closing and timeout is None:
                return False
            self._arrived.clear()
            try:
                if timeout is None:
                    await self._arrived.wait()
                else:
                    await asyncio.wait_for(self._arrived.wait(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                return False
            if timeout is not None and not self._jobs:
                return False
        return True

    async def _next_batch(self):
        """The next jobs to run together, or None when closing with an empty queue."""
        first = None
        while first is None:
            if not await self._wait_for_job():
                return None
            job = self._pop()
            if not job.future.done():  # skip requests cancelled while queued
                first = job
        jobs, tokens = [first], first.tokens
        deadline = first.enqueued + self.max_wait
        while tokens < self.max_batch_tokens:
            if not self._jobs:
                left = deadline - time.perf_counter()
                if left <= 0 or self._closing or not await self._wait_for_job(left):
                    break
            job = self._jobs[0]
            if job.future.done():
                self._pop()
                continue
            if tokens + job.tokens > self.max_batch_tokens:
                break  # it heads the next batch
            jobs.append(self._pop())
            tokens += job.tokens
        self._set_queue_metric()
        return jobs

    async def _run(self):
        while True:
            await self._slots.acquire()
            try:
                jobs = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if jobs is None:
                self._slots.release()
                return
            task = asyncio.get_running_loop().create_task(self._dispatch(jobs))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _encode(self, jobs):
        # worker thread: requests cancelled since they were taken are left out
        live = [j for j in jobs if not j.future.done()]
        sequences = [s for j in live for s in j.sequences]
        t0 = time.perf_counter()
        rows = self.encode(sequences) if sequences else None
        return live, rows, t0, time.perf_counter()

    async def _dispatch(self, jobs):
        loop = asyncio.get_running_loop()
        try:
            start = time.perf_counter()
            if self.metrics is not None:
                for job in jobs:
                    self.metrics.observe_queue(start - job.enqueued)
            try:
                live, rows, t0, t1 = await loop.run_in_executor(self._executor, self._encode,
                                                                 jobs)
            except Exception as exc:  # the whole batch failed: every request hears why
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                return
            if self.metrics is not None and live:
                self.metrics.observe_batch(sum(len(j.sequences) for j in live),
                                           sum(j.tokens for j in live), t1 - t0)
            offset = 0
            for job in live:
                n = len(job.sequences)
                if not job.future.done():
                    job.future.set_result(rows[offset:offset + n])
                offset += n
        finally:
            self._slots.release()
