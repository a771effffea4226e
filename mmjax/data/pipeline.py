"""The grain input pipeline of one host: host-local numpy batches for training and eval.

Training order. The global example stream is the source shuffled and repeated forever;
grain's `MapDataset.shuffle(seed).repeat()` reshuffles each epoch (epoch e uses shuffle
seed + e). The stream is cut into blocks of global_batch/P examples and host i of P
takes blocks i, i+P, i+2P, ...: its j-th batch is stream elements
[j*G + i*G/P, j*G + (i+1)*G/P). So global batch j is always stream elements [j*G, (j+1)*G) however
many hosts share it, and a run can resume on a different number of hosts. All of it is a
random-access `MapDataset`, so resuming at batch j is a slice, O(1), not a replay: the
train loop only has to checkpoint the integer batch index.

Eval covers every example exactly once, in order, padded up to a whole number of global
batches with copies whose 'weight' is 0; every host yields the same number of batches.

Worker processes (config.data.workers > 0) each take every W-th batch and grain
interleaves them round-robin, so batches are the same as with 0 workers. Because batch j
is a pure function of (data, seed, j) and the resume position is the integer j, resuming
with a different worker count (or host count) gives exactly the batches an uninterrupted
run would have: unlike a stored grain iterator state, nothing depends on W, so a
mismatch needs no refusal (tests/data/test_pipeline.py checks it at a nonzero start).

Augmentation (config.data.augment, training only) draws from a Generator seeded with
(seed, the example's position in the global stream), so it is part of that pure function
too: the same on any host or worker count and after a resume.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import math
import weakref
from collections.abc import Iterator

import grain
import numpy as np

from mmjax.data import targets
from mmjax.data.augment import Augment
from mmjax.data.preprocess import Preprocess, TrainPreprocess
from mmjax.data.sources import Source, check_spec
from mmjax.media import make_tokenizer

# Read-ahead per process, in batches: enough to overlap decoding with the training step
# without holding many batches in memory.
_READ_THREADS = 2
_READ_AHEAD = 4
_WORKER_BUFFER = 2


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this host; explicit values override JAX's (tests, tools)."""
    if process_index is None or process_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        process_index = shard.shard_index if process_index is None else process_index
        process_count = shard.shard_count if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside 0..{process_count - 1}")
    return process_index, process_count


def _host_batch(global_batch: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(
            f"batch_size={global_batch} must be a positive multiple of the number of hosts "
            f"({process_count}); change --config.batch_size"
        )
    return global_batch // process_count


def _shuffle_seed(seed: int) -> int:
    """A 32-bit shuffle seed from config.seed (grain derives epoch e's seed as seed + e)."""
    digest = hashlib.sha256(f"mmjax-train-order:{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _training_order(ds: grain.MapDataset, config) -> grain.MapDataset:
    """The training stream: `ds` reshuffled every epoch, endlessly (len == sys.maxsize)."""
    return ds.shuffle(seed=_shuffle_seed(config.seed)).repeat()


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside absl.app.run nobody parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _own_arrays(batch: dict) -> dict:
    """Copies worker batches out of grain's shared memory into plain numpy arrays.

    The shared-memory blocks are then released at once instead of whenever (or, at
    interpreter exit, if ever) the consumer drops the batch.
    """
    return {k: np.array(v) for k, v in batch.items()}


_OPEN_ITERATORS: "weakref.WeakSet[BatchIterator]" = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for it in list(_OPEN_ITERATORS):
        it.close()


class BatchIterator(Iterator[dict]):
    """Iterator of batches over a grain pipeline; `close()` stops its threads and workers.

    Closing also drops the pipeline, so batches buffered in shared memory are released
    while Python is still fully alive. Iterators nobody closed are closed at exit, because
    grain's own clean-up during interpreter teardown prints tracebacks and leaks
    shared-memory blocks.
    """

    def __init__(self, it: grain.DatasetIterator):
        self._it = it
        _OPEN_ITERATORS.add(self)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict:
        if self._it is None:
            raise ValueError("this batch iterator was closed")
        return next(self._it)

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None:
            it.close()
            del it
            gc.collect()  # grain's iterators form cycles that hold buffered shared memory


def _iterate(ds: grain.MapDataset, workers: int) -> BatchIterator:
    """Iterator over `ds` with a small thread read-ahead and optional worker processes."""
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_READ_AHEAD)
    )
    if workers > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=_WORKER_BUFFER)
        ).map(_own_arrays)
    return BatchIterator(iter(it_ds))


def check_preprocessing(config, modalities) -> int:
    """Checks config.data.augment and config.data.tokenizer before any pipeline is built, and
    that the text tower finds the tokenizer's padding where it looks (mask='pad' masks ids equal
    to model.text.pad_id; the LSTM does too); returns the tokenizer's vocabulary size (0 when
    `modalities` has no text). Raises ValueError naming the key to set."""
    augment = Augment.from_config(config.data.augment)
    if "text" not in modalities:
        return 0
    tokenizer = make_tokenizer(config.data.tokenizer)
    if augment.text_dropout and not tokenizer.offset:
        raise ValueError(f"data.augment.text_dropout replaces tokens with mmjax's reserved id, which "
                         f"data.tokenizer={config.data.tokenizer!r} does not have; set it to 0")
    text = config.model.text
    reads_pad = text.kind == "lstm" or text.mask == "pad"
    if reads_pad and text.pad_id != tokenizer.pad_id:
        if tokenizer.pad_id == tokenizer.eos_id and text.kind != "lstm":  # CLIP-style: padded with the end token
            raise ValueError(f"data.tokenizer={config.data.tokenizer!r} pads with its end token "
                             f"{tokenizer.pad_id}; set --config.model.text.mask=eos "
                             f"--config.model.text.eos_id={tokenizer.eos_id}")
        raise ValueError(f"config.model.text.pad_id={text.pad_id} but data.tokenizer={config.data.tokenizer!r} "
                         f"pads with {tokenizer.pad_id}; set --config.model.text.pad_id={tokenizer.pad_id}")
    return tokenizer.vocab_size


def _preprocess(source: Source, config) -> Preprocess:
    check_spec(source.spec, config.data, config.modalities)
    targets.check_task(source.spec, targets.task_of(config), source.directory)
    if source.num_examples == 0:
        raise ValueError(f"data set {source.directory} has no examples")
    return Preprocess.from_config(config, num_classes=source.num_classes, spec=source.spec)


def train_dataset(source: Source, config, *, global_batch: int, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
    """This host's infinite, random-access dataset of training batches (see module docstring)."""
    index, count = _process(process_index, process_count)
    host_batch = _host_batch(global_batch, count)
    ds = _training_order(grain.MapDataset.source(source.records), config)
    # Cut the stream into host-sized blocks; global batch j is blocks jP .. jP+P-1, and host
    # i takes block jP+i. Rows of the global array are then in stream order whatever P is,
    # so 1 and N hosts put the same examples on the same devices (and agree bitwise).
    preprocess = _preprocess(source, config)
    augment = Augment.from_config(config.data.augment)
    if augment.enabled:
        # Mapped before batching and the host slice, so the index is the example's global
        # stream position; the dataset is lazy, so each host still decodes only its share.
        ds = ds.map_with_index(TrainPreprocess(preprocess, augment, seed=config.seed,
                                               audio_rate=config.data.audio_rate))
    else:
        ds = ds.map(preprocess)
    ds = ds.batch(host_batch, drop_remainder=True)
    return ds[index::count]


def train_batches(source: Source, config, *, global_batch: int, start_batch: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> BatchIterator:
    """Infinite iterator of host-local training batches, starting at global batch `start_batch`.

    `start_batch=j` yields exactly what an uninterrupted iterator yields as its j-th batch
    (0-based), for any number of hosts. Close it (`.close()`) when done.
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    ds = train_dataset(source, config, global_batch=global_batch, process_index=process_index,
                       process_count=process_count)
    return _iterate(ds[start_batch:], config.data.workers)


def batch_example_indices(source: Source, config, *, global_batch: int, batch: int) -> np.ndarray:
    """Indices in `source` of the examples of global training batch `batch` (0-based), in
    row order: `train_dataset`'s order, applied to the indices instead of the records."""
    order = _training_order(grain.MapDataset.range(len(source.records)), config)
    return np.asarray(order[batch * global_batch:(batch + 1) * global_batch], np.int64)


class _AddWeight(grain.transforms.MapWithIndex):
    """Adds 'weight': 1 for the first `num_real` positions, 0 for padding copies."""

    def __init__(self, num_real: int):
        self.num_real = num_real

    def map_with_index(self, index: int, element: dict) -> dict:
        return {**element, "weight": np.asarray(index < self.num_real, np.float32)}


class EvalBatches:
    """Re-iterable eval batches of one host; `len()` is the (same on every host) batch count."""

    def __init__(self, dataset: grain.MapDataset, workers: int):
        self.dataset = dataset
        self.workers = workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict]:
        it = _iterate(self.dataset, self.workers)
        try:
            yield from it
        finally:
            it.close()  # stops worker processes even when the caller breaks out early


def eval_batches(source: Source, config, *, global_batch: int, process_index: int | None = None,
                 process_count: int | None = None) -> EvalBatches:
    """Host-local eval batches covering each example once over all hosts (see module docstring)."""
    index, count = _process(process_index, process_count)
    host_batch = _host_batch(global_batch, count)
    n = source.num_examples
    preprocess = _preprocess(source, config)
    num_batches = math.ceil(n / global_batch)
    total = num_batches * global_batch
    # Position p < n is example p; positions past the end repeat examples with weight 0.
    ds = grain.MapDataset.source(source.records).map(preprocess)
    ds = ds.repeat(math.ceil(total / n))[:total].map_with_index(_AddWeight(n))
    return EvalBatches(ds[index::count].batch(host_batch), config.data.workers)
