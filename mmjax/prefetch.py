"""Prepares the next batches in a background thread while the current step runs.

    batches = Prefetcher(host_batches, place=lambda b: host_batch_to_global(b, mesh), size=2)
    for batch in batches: ...        # the same batches, in the same order, already placed
    batches.close()                   # stops the thread, then closes host_batches

One producer thread reads the host iterator (grain decoding and preprocessing), places
each batch on the devices (`place`: host -> device copy) and queues at most `size` of them,
so the order is exactly the iterator's and memory stays bounded. An exception in the
producer is raised from the consumer's next(); the end of the iterator ends this one.
size 0 does everything in the caller's thread (no prefetch).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_END = object()  # the host iterator is exhausted


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    def __init__(self, source: Iterator, place: Callable[[Any], Any] = lambda b: b, size: int = 2):
        if size < 0:
            raise ValueError(f"config.data.prefetch={size} must be >= 0")
        self._source, self._place, self._size = source, place, size
        self._stop = threading.Event()
        self._done = False
        self._thread = None
        if size:
            self._queue: queue.Queue = queue.Queue(maxsize=size)
            self._thread = threading.Thread(target=self._produce, name="mmjax-prefetch", daemon=True)
            self._thread.start()

    def _put(self, item: Any) -> bool:
        """Queues item unless close() is called while waiting for room; False if stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    batch = next(self._source)
                except StopIteration:
                    self._put(_END)
                    return
                if not self._put(self._place(batch)):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Failure(e))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self._thread is None:
            try:
                return self._place(next(self._source))
            except StopIteration:
                self._done = True
                raise
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        """Stops the producer (dropping batches it prepared ahead), then closes the source."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._done = True
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
