"""Helpers for comparing pipeline batches (imported by the tests in this folder)."""
import numpy as np


def take(it, n):
    """The first n batches of an iterator, which is then closed."""
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def equal(a, b):
    """Whether two batches have the same keys and identical arrays."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
