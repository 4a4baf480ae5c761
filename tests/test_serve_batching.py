"""The adaptive micro-batcher, with a scorer of our own: each caller gets exactly its own result."""

from __future__ import annotations

import asyncio
import threading

import pytest

from batch_infer.serve.batching import AdaptiveBatcher


class RecordingScorer:
    """Scores a payload (a list of numbers) as their squares; remembers every call's payloads.

    ``gate`` (when set) holds the first call until released, so later requests pile up.
    """

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[list[int]]] = []
        self.gate = gate

    def __call__(self, payloads: list[list[int]]) -> list[object]:
        if self.gate is not None and not self.calls:
            self.calls.append(payloads)
            self.gate.wait()
        else:
            self.calls.append(payloads)
        return [
            ValueError(f"refused {payload}") if -1 in payload else [v * v for v in payload]
            for payload in payloads
        ]


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_lone_request_is_scored_at_once_without_waiting_for_others():
    scorer = RecordingScorer()

    async def main():
        # a batch time this long would show as a hung test if a lone request waited for it
        batcher = AdaptiveBatcher(scorer, max_batch_size=64, max_batch_time_ms=60_000)
        result = await asyncio.wait_for(batcher.submit([3], rows=1), timeout=30)
        await batcher.close()
        return result

    assert run(main()) == [9]
    assert scorer.calls == [[[3]]]


def test_requests_arriving_while_the_model_works_share_the_next_call():
    gate = threading.Event()
    scorer = RecordingScorer(gate)

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=64, max_batch_time_ms=5)
        first = asyncio.ensure_future(batcher.submit([0], rows=1))
        while not scorer.calls:  # the first call is in the model
            await asyncio.sleep(0.001)
        others = [asyncio.ensure_future(batcher.submit([i, i + 100], rows=2)) for i in range(1, 21)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *others)
        await batcher.close()
        return results

    results = run(main())
    assert results[0] == [0]
    assert results[1:] == [[i * i, (i + 100) ** 2] for i in range(1, 21)]
    assert len(scorer.calls) == 2
    assert scorer.calls[1] == [[i, i + 100] for i in range(1, 21)]


def test_batches_never_exceed_the_batch_size_and_a_larger_request_goes_whole():
    gate = threading.Event()
    scorer = RecordingScorer(gate)

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=8, max_batch_time_ms=1)
        first = asyncio.ensure_future(batcher.submit([0], rows=1))
        while not scorer.calls:
            await asyncio.sleep(0.001)
        small = [asyncio.ensure_future(batcher.submit([i] * 3, rows=3)) for i in range(1, 6)]
        large = asyncio.ensure_future(batcher.submit(list(range(20)), rows=20))
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *small, large)
        await batcher.close()
        return results

    results = run(main())
    assert results[1:6] == [[i * i] * 3 for i in range(1, 6)]
    assert results[6] == [v * v for v in range(20)]
    for call in scorer.calls:
        rows = sum(len(payload) for payload in call)
        assert rows <= 8 or len(call) == 1, call
    assert [list(range(20))] in scorer.calls  # scored whole, on its own


def test_a_failing_request_fails_alone_and_its_batch_mates_get_their_results():
    gate = threading.Event()
    scorer = RecordingScorer(gate)

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=64, max_batch_time_ms=1)
        first = asyncio.ensure_future(batcher.submit([0], rows=1))
        while not scorer.calls:
            await asyncio.sleep(0.001)
        good = asyncio.ensure_future(batcher.submit([2], rows=1))
        bad = asyncio.ensure_future(batcher.submit([-1], rows=1))
        also_good = asyncio.ensure_future(batcher.submit([4], rows=1))
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, good, bad, also_good, return_exceptions=True)
        await batcher.close()
        return results

    first, good, bad, also_good = run(main())
    assert (first, good, also_good) == ([0], [4], [16])
    assert isinstance(bad, ValueError) and "refused [-1]" in str(bad)


def test_only_requests_with_the_same_key_share_a_call():
    gate = threading.Event()
    scorer = RecordingScorer(gate)

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=64, max_batch_time_ms=1)
        first = asyncio.ensure_future(batcher.submit([0], rows=1, key="a"))
        while not scorer.calls:
            await asyncio.sleep(0.001)
        mixed = [
            asyncio.ensure_future(batcher.submit([i], rows=1, key="ab"[i % 2])) for i in range(1, 9)
        ]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *mixed)
        await batcher.close()
        return results

    results = run(main())
    assert results[1:] == [[i * i] for i in range(1, 9)]
    for call in scorer.calls[1:]:
        parities = {payload[0] % 2 for payload in call}
        assert len(parities) == 1, call


def test_a_scorer_that_raises_fails_every_caller_of_that_call_and_the_batcher_goes_on():
    calls = []

    def scorer(payloads):
        calls.append(payloads)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return payloads

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=4, max_batch_time_ms=1)
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.submit("x", rows=1)
        after = await batcher.submit("y", rows=1)
        await batcher.close()
        return after

    assert run(main()) == "y"


def test_a_caller_that_goes_away_does_not_break_the_others():
    gate = threading.Event()
    scorer = RecordingScorer(gate)

    async def main():
        batcher = AdaptiveBatcher(scorer, max_batch_size=64, max_batch_time_ms=1)
        first = asyncio.ensure_future(batcher.submit([0], rows=1))
        while not scorer.calls:
            await asyncio.sleep(0.001)
        leaving = asyncio.ensure_future(batcher.submit([5], rows=1))
        staying = asyncio.ensure_future(batcher.submit([6], rows=1))
        await asyncio.sleep(0)
        leaving.cancel()
        gate.set()
        results = await asyncio.gather(first, staying)
        await batcher.close()
        return results

    assert run(main()) == [[0], [36]]


def test_metrics_hooks_see_every_batch_and_the_queue():
    batches, depths = [], []

    async def main():
        batcher = AdaptiveBatcher(
            lambda payloads: payloads,
            max_batch_size=64,
            max_batch_time_ms=1,
            on_batch=lambda rows, requests: batches.append((rows, requests)),
            on_queue=depths.append,
        )
        await asyncio.gather(*(batcher.submit(i, rows=2) for i in range(10)))
        await batcher.close()

    run(main())
    assert sum(rows for rows, _ in batches) == 20
    assert sum(requests for _, requests in batches) == 10
    assert max(depths) >= 1 and depths[-1] == 0
