"""The dynamic batcher of the server, with a fake model: packing, waiting, cancellation, draining.

The fake encoder returns, for each sequence, a row holding the sequence's
first id, so that every test can check that each request got its own rows.
"""
import asyncio
import threading
import time

import numpy as np
import pytest

from blocksparse.serve.batcher import DynamicBatcher, Overloaded, ShuttingDown


class FakeModel:
    """Records the batches it is called with; optionally blocks until released."""

    def __init__(self, delay=0.0, gate=None, fail_on=None):
        self.batches = []
        self.delay = delay
        self.gate = gate
        self.fail_on = fail_on
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, sequences):
        with self.lock:
            self.batches.append([list(s) for s in sequences])
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the model"
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and any(s[0] == self.fail_on for s in sequences):
            raise ValueError("the fake model fails on this id")
        return np.array([[s[0], len(s)] for s in sequences], dtype=np.float32)


class Counts:
    def __init__(self):
        self.n_cancelled, self.batches, self.queue_waits = 0, [], []

    def observe_batch(self, n, tokens, seconds):
        self.batches.append((n, tokens))

    def observe_queue(self, seconds):
        self.queue_waits.append(seconds)

    def set_queue(self, n):
        pass

    def cancelled(self):
        self.n_cancelled += 1


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def seqs(first, n=1, length=4):
    return [[first + i] + [0] * (length - 1) for i in range(n)]


def test_each_request_gets_its_own_rows_and_batches_respect_the_budget():
    model = FakeModel(delay=0.01)

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=64, max_wait=0.02)
        await b.start()
        reqs = [seqs(100 * k, n=1 + k % 3, length=4 + k % 5) for k in range(60)]
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        await b.close()
        return reqs, outs

    reqs, outs = run(main())
    for r, out in zip(reqs, outs):
        np.testing.assert_array_equal(out[:, 0], [s[0] for s in r])
        np.testing.assert_array_equal(out[:, 1], [len(s) for s in r])
    assert sum(len(b) for b in model.batches) == sum(len(r) for r in reqs)
    assert len(model.batches) < len(reqs), "concurrent requests were never batched"
    for batch in model.batches:
        assert sum(map(len, batch)) <= 64


def test_a_request_larger_than_the_budget_runs_alone():
    model = FakeModel()

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=16, max_wait=0.05)
        await b.start()
        big, small = seqs(1, n=10, length=8), seqs(500)
        out = await asyncio.gather(b.submit(big), b.submit(small))
        await b.close()
        return out

    big, small = run(main())
    assert big.shape == (10, 2) and small.shape == (1, 2)
    assert [len(b) for b in model.batches] == [10, 1]


def test_max_wait_lets_a_lone_request_go():
    model = FakeModel()

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=10_000, max_wait=0.05)
        await b.start()
        t0 = time.perf_counter()
        await b.submit(seqs(1))
        waited = time.perf_counter() - t0
        await b.close()
        return waited

    waited = run(main())
    assert 0.04 <= waited < 5.0  # waited for company, then ran alone


def test_a_full_batch_does_not_wait():
    model = FakeModel()

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=8, max_wait=5.0)
        await b.start()
        t0 = time.perf_counter()
        await asyncio.gather(b.submit(seqs(1, length=4)), b.submit(seqs(2, length=4)))
        elapsed = time.perf_counter() - t0
        await b.close()
        return elapsed

    assert run(main()) < 2.0  # budget reached: no 5 s wait


def test_cancelled_request_never_reaches_the_model():
    gate = threading.Event()
    model = FakeModel(gate=gate)
    counts = Counts()

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=8, max_wait=0.0, metrics=counts)
        await b.start()
        first = asyncio.ensure_future(b.submit(seqs(1, length=8)))   # occupies the worker
        await asyncio.to_thread(model.started.wait, 10)
        doomed = asyncio.ensure_future(b.submit(seqs(666, length=8)))
        later = asyncio.ensure_future(b.submit(seqs(7, length=8)))
        await asyncio.sleep(0.01)
        doomed.cancel()
        gate.set()
        out = await asyncio.gather(first, later)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await b.close()
        return out

    first, later = run(main())
    assert first[0, 0] == 1 and later[0, 0] == 7
    assert all(s[0] != 666 for batch in model.batches for s in batch)
    assert counts.n_cancelled == 1


def test_a_failing_batch_fails_its_requests_only():
    model = FakeModel(fail_on=13)

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=4, max_wait=0.0)
        await b.start()
        with pytest.raises(ValueError, match="fails on this id"):
            await b.submit(seqs(13))
        out = await b.submit(seqs(14))  # the batcher keeps serving
        await b.close()
        return out

    assert run(main())[0, 0] == 14


def test_close_answers_every_accepted_request_then_refuses():
    model = FakeModel(delay=0.005)

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=8, max_wait=0.0)
        await b.start()
        tasks = [asyncio.ensure_future(b.submit(seqs(k))) for k in range(30)]
        await asyncio.sleep(0)  # all queued
        await b.close()
        assert all(t.done() for t in tasks)
        with pytest.raises(ShuttingDown):
            await b.submit(seqs(99))
        return [t.result()[0, 0] for t in tasks]

    assert run(main()) == list(range(30))


def test_overloaded_when_the_queue_is_full():
    gate = threading.Event()
    model = FakeModel(gate=gate)

    async def main():
        b = DynamicBatcher(model, max_batch_tokens=4, max_wait=0.0, max_queue_tokens=8)
        await b.start()
        running = asyncio.ensure_future(b.submit(seqs(1)))
        await asyncio.to_thread(model.started.wait, 10)
        queued = [asyncio.ensure_future(b.submit(seqs(k))) for k in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="tokens queued"):
            await b.submit(seqs(4))
        gate.set()
        await asyncio.gather(running, *queued)
        await b.close()

    run(main())


def test_two_workers_run_two_batches_at_once():
    barrier = threading.Barrier(2, timeout=10)

    def encode(sequences):
        barrier.wait()  # raises BrokenBarrierError unless two batches overlap
        return np.zeros((len(sequences), 1), dtype=np.float32)

    async def main():
        b = DynamicBatcher(encode, max_batch_tokens=4, max_wait=0.0, workers=2)
        await b.start()
        await asyncio.gather(b.submit(seqs(1)), b.submit(seqs(2)))
        await b.close()

    run(main())


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_batch_tokens=0), "max_batch_tokens"),
    (dict(max_wait=-1), "max_wait"),
    (dict(workers=0), "workers"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicBatcher(lambda s: s, **kwargs)
    with pytest.raises(TypeError, match="encode must be callable"):
        DynamicBatcher(None)
