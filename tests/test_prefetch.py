"""mmjax/prefetch.py: same batches in the same order, bounded, errors raised, clean close."""
import threading
import time

import pytest

from mmjax.prefetch import Prefetcher


class Source:
    """An iterator that records how far it was read and whether it was closed."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at, self.read, self.closed = n, fail_at, 0, False

    def __iter__(self):
        return self

    def __next__(self):
        if self.read == self.fail_at:
            raise RuntimeError("bad record")
        if self.read >= self.n:
            raise StopIteration
        self.read += 1
        return self.read - 1

    def close(self):
        self.closed = True


@pytest.mark.parametrize("size", [0, 1, 2])
def test_same_items_in_order_then_stops(size):
    source = Source(20)
    with Prefetcher(source, place=lambda b: ("placed", b), size=size) as it:
        assert list(it) == [("placed", i) for i in range(20)]
        with pytest.raises(StopIteration):
            next(it)
    assert source.closed


def test_reads_at_most_size_ahead():
    source = Source(1000)
    it = Prefetcher(source, size=2)
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while source.read < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert source.read <= 1 + 2 + 1  # consumed + queued + one held by the blocked producer
    it.close()


def test_close_stops_the_thread_and_closes_the_source():
    source = Source(10**9)
    it = Prefetcher(source, size=2)
    next(it)
    it.close()
    assert source.closed
    assert not any(t.name == "mmjax-prefetch" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(it)


def test_producer_errors_reach_the_consumer_after_the_good_items():
    it = Prefetcher(Source(10, fail_at=3), size=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="bad record"):
        next(it)
    it.close()


def test_negative_size_is_a_clear_error():
    with pytest.raises(ValueError, match="config.data.prefetch"):
        Prefetcher(Source(1), size=-1)
