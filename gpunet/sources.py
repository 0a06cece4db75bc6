"""Where ``fit`` takes its batches from, and data bigger than memory.

**The seam.** A *source* gives the epoch loop (:mod:`gpunet.training`) its batches:

- ``source.n`` (rows per epoch, or None when unknown) and ``source.sizes``: the rows of every batch of an epoch (the
  last one may be partial), or None when the number of batches is only known once an epoch has been read (an
  iterable of batches); ``source.steps``: the number of batches when known (for the progress bar);
- ``source.epoch(trainer)`` returns ``batch(b) -> (x, y, w)``: device arrays of the batch's rows (``w`` None without
  row weights), for ``b = 0, 1, ...``; past the last batch of an epoch of unknown length it returns None;
- ``source.replayable``: whether ``batch(b)`` may be asked for again within the epoch (a diverged epoch replays its
  first steps; an epoch that cannot be replayed is rolled back to its start instead).

The shuffled order always comes from the trainer's generator (``trainer.shuffle_rng``), so every source shuffles
reproducibly from the model's seed, and a saved model resumes with the same orders.

**Streamed data sets** (what ``fit``, ``predict`` and ``evaluate`` accept besides in-memory arrays): the data stays on
the host (or on disk) and is read batch by batch, so memory holds a few batches, not the data set.

- :class:`ArrayStream`: host arrays read by rows. A ``numpy.memmap`` (``np.load(path, mmap_mode="r")``) passed to
  ``fit``/``predict``/``evaluate`` always streams; wrap any other host array in ``ArrayStream`` to stream it too.
- :class:`ParquetStream`: numeric columns of Parquet files, read one row group at a time (pyarrow).
- :class:`BatchStream`: an iterable of ``(x, y)`` or ``(x, y, sample_weight)`` batches (a list, a generator function,
  a Keras-PyDataset-like object); a bare callable, PyDataset-like object or list of batch tuples passed as ``X``
  without ``y`` is taken as one.

Shuffling (``fit(shuffle=True)``), each epoch, from the model's seed:

- ``ArrayStream(shuffle="rows")`` (the default, and what a memmap gets): PyTorch's ``RandomSampler`` order, one
  permutation of all rows, the very one the in-memory fit draws; each batch gathers its rows from the file in
  increasing order (for locality) and puts them back in the permuted order. With the same seed, a streamed fit of
  an array equals the in-memory fit bit for bit on the CPU. The order costs 8 bytes per row.
- Shuffled blocks (``ParquetStream``; ``ArrayStream(shuffle="blocks")``): the blocks (row groups; ``block_rows``
  consecutive rows) are visited in a random order, and the rows of each buffer of ``buffer_blocks`` consecutive
  blocks (in that order) are shuffled among themselves before being cut into batches of ``batch_size`` rows (a batch
  may span two buffers). Reads are sequential within a block; a row shares a batch only with rows of its buffer
  (or, at the buffer's end, of the next one). ``shuffle=False`` reads the rows in file order: the in-memory fit's unshuffled order.
- :class:`BatchStream`: the batches are the user's and are never re-cut. A list or PyDataset-like object is visited
  in a random order of its batches (Keras's PyDataset shuffling); a generator function's batches come in its own
  order. ``BatchStream(batches, buffer=k)`` also mixes the rows of every ``k`` consecutive batches among them
  (keeping the batch sizes).

On CuPy, the next batch is copied from pinned host memory on a side stream while the current step runs
(:mod:`gpunet.backend.transfer`); elsewhere batches are plain host arrays (NumPy) or one copy each.
"""

from __future__ import annotations

import itertools
import numbers
from pathlib import Path

import numpy as np
from array_api_compat import array_namespace

from . import validation
from .backend import to_numpy
from .backend import transfer as transfer_mod
from .backend.devices import on_device_of

CHUNK_BYTES = 4 << 20  # rows are checked, and predicted by default, in pieces of about this many bytes
BUFFER_BLOCKS = 4  # blocks per shuffle buffer (ParquetStream, ArrayStream(shuffle="blocks"))
NAMES = ("X", "y", "sample_weight")
BATCH_NAMES = ("x", "y", "sample_weight")  # inside one batch of an iterable (the messages say which batch)


class ArraySource:
    """Device arrays ``X`` ``(n, in)``, ``Y`` ``(n, out)`` and ``W`` ``(n, 1)`` or None, already checked: each epoch
    one shuffled copy (one host -> device upload of the order) cut into contiguous slices of ``batch`` rows."""

    replayable = True

    def __init__(self, X, Y, W, batch: int, shuffle: bool):
        self.arrays, self.batch, self.shuffle = (X, Y, W), batch, shuffle
        self.n = X.shape[0]
        self.sizes = [min(batch, self.n - start) for start in range(0, self.n, batch)]
        self.steps = len(self.sizes)

    def epoch(self, trainer):
        arrays = self.arrays
        if self.shuffle and self.batch < self.n:
            order = trainer.epoch_order(self.n)
            xp = trainer.model.xp
            arrays = tuple(None if a is None else xp.take(a, order, axis=0) for a in arrays)
        X, Y, W = arrays

        def batch(b):
            rows = slice(b * self.batch, b * self.batch + self.sizes[b])
            return X[rows, ...], Y[rows, ...], None if W is None else W[rows, ...]

        return batch


# -- from host pieces to the arrays a step takes -------------------------------------------------------------------
class _Prepare:
    """Host (or device) pieces of a batch -> ``(x, Y, W)``: ``x`` ``(rows, n_inputs)``, ``Y`` ``(rows, n_outputs)``
    prepared for ``loss`` (None without a loss: prediction), ``W`` ``(rows, 1)`` row weights or None; host pieces
    become C-contiguous NumPy arrays of the model's dtype. The arithmetic is the in-memory fit's, row by row, so the
    values are the same. ``check=True`` also runs the checks of in-memory data (``gpunet.validation``), naming rows
    from ``offset``; ``where`` prefixes every error message (``"X, batch 3"``)."""

    def __init__(self, model, loss, class_table=None, names=NAMES, check=False):
        self.model, self.loss, self.table, self.names, self.check = model, loss, class_table, names, check

    def __call__(self, x, y=None, w=None, *, check=None, offset=0, where=None):
        check = self.check if check is None else check
        try:
            return self._prepare(x, y, w, check, offset)
        except (ValueError, TypeError) as exc:
            if where is None:
                raise
            raise type(exc)(f"{where}: {exc}") from None

    def _prepare(self, x, y, w, check, offset):
        model, loss = self.model, self.loss
        xname, yname, wname = self.names
        x = validation.as_array(xname, x, model.backend)
        if check:
            validation.features(xname, x, model.n_inputs, offset)
            validation.within_dtype(xname, x, model.dtype)
        if loss is None:
            return self._cast(x), None, None
        if y is None:
            raise ValueError(f"{xname} gives no targets: batches must be (x, y) or (x, y, sample_weight) tuples")
        y = validation.as_array(yname, y, model.backend)
        if check:
            validation.numeric(yname, y)
            validation.finite(yname, y, offset)
        Y = loss.prepare_target(y, model.n_outputs, name=yname)
        if check:
            validation.within_dtype(yname, Y, model.dtype)
            if Y.shape[0] != x.shape[0]:
                raise ValueError(f"{xname} has {x.shape[0]} samples but {yname} has {Y.shape[0]}")
        return self._cast(x), self._cast(Y), self._weights(w, Y, x.shape[0], check, offset, wname)

    def _weights(self, w, Y, rows, check, offset, name):
        """``(rows, 1)`` weights as ``Sequential.fit`` computes them for in-memory data, or None."""
        if w is None and self.table is None:
            return None
        weights = np.ones(rows)
        if w is not None:
            sw = np.asarray(to_numpy(validation.as_array(name, w, self.model.backend)))
            if check:
                validation.numeric(name, sw)
                validation.finite(name, sw, offset)
                if sw.shape != (rows,):
                    raise ValueError(f"{name} must have shape ({rows},), one weight per sample; received {sw.shape}")
                if np.any(sw < 0):
                    raise ValueError(f"{name} must be non-negative with at least one positive weight")
            weights = weights * sw
        if self.table is not None:
            from .training import class_labels

            weights = weights * self.table[class_labels(Y, self.loss)]
        return self._cast(weights[:, None])

    def _cast(self, a):
        if isinstance(a, np.ndarray):
            return np.ascontiguousarray(a, dtype=self.model.dtype)
        return a  # a device array: cast by the transfer step


class _Prefetch:
    """``batch(b)`` of a streamed epoch: ``read(b)`` gives the prepared host arrays of batch ``b`` (None past the
    end) and the transfer moves them; where it overlaps (CUDA), batch ``b + 1`` is read and its upload started before
    batch ``b`` is returned, so it travels while step ``b`` runs. ``count``: the number of batches, or None."""

    def __init__(self, read, count, transfer, backend, dtype):
        self.read, self.count, self.transfer = read, count, transfer
        self.backend, self.dtype = backend, dtype
        self._ahead = None  # (b, handle) uploaded ahead

    def __call__(self, b):
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] != b:  # a replay asks for another batch than the one read ahead
            if ahead[1] is not None and ahead[1][0] == "upload":
                self.transfer.discard(ahead[1][1])
            ahead = None
        handle = ahead[1] if ahead is not None else self._upload(b)
        if handle is None:
            return None
        if self.transfer.overlaps and (self.count is None or b + 1 < self.count):
            self._ahead = (b + 1, self._upload(b + 1))
        kind, value = handle
        return self.transfer.ready(value) if kind == "upload" else value

    def _upload(self, b):
        arrays = self.read(b)
        if arrays is None:
            return None
        if all(a is None or isinstance(a, np.ndarray) for a in arrays):
            return "upload", self.transfer.upload(arrays)
        backend = self.backend  # a batch that is (partly) on the device already: cast, no transfer
        return "direct", tuple(None if a is None else backend.from_host(a, self.dtype) if isinstance(a, np.ndarray)
                               else backend.cast(a, self.dtype) for a in arrays)


def _concat(parts):
    """Concatenate along rows the tuples ``parts`` (entries may be None)."""
    if len(parts) == 1:
        return parts[0]
    out = []
    for column in zip(*parts):
        if column[0] is None:
            out.append(None)
        elif isinstance(column[0], np.ndarray):
            out.append(np.concatenate(column, axis=0))
        else:
            out.append(array_namespace(column[0]).concat(list(column), axis=0))
    return tuple(out)


def _take_rows(arrays, order):
    """Rows ``order`` (host int array) of each array of the tuple."""
    out = []
    for a in arrays:
        if a is None or isinstance(a, np.ndarray):
            out.append(None if a is None else a[order])
        else:
            xp = array_namespace(a)
            with on_device_of(a):
                out.append(xp.take(a, xp.asarray(order), axis=0))
    return tuple(out)


def _sizes(n: int, batch: int) -> list[int]:
    return [min(batch, n - start) for start in range(0, n, batch)]


# -- sources over streamed data -------------------------------------------------------------------------------------
class _Source:
    replayable = True

    def __init__(self, n, batch, shuffle, transfer, model):
        self.n, self.batch, self.shuffle, self.transfer = n, batch, shuffle, transfer
        self.backend, self.dtype = model.backend, model.dtype
        self.sizes = None if n is None else _sizes(n, batch)
        self.steps = None if self.sizes is None else len(self.sizes)

    def _prefetch(self, read, count):
        return _Prefetch(read, count, self.transfer, self.backend, self.dtype)


class _RowSource(_Source):
    """The exact permutation (PyTorch's ``RandomSampler``): ``read_rows(positions)`` returns the prepared batch of
    rows ``positions`` (a slice, or an int array in the epoch's order)."""

    def __init__(self, n, batch, shuffle, read_rows, transfer, model):
        super().__init__(n, batch, shuffle, transfer, model)
        self.read_rows = read_rows

    def epoch(self, trainer):
        sizes, batch = self.sizes, self.batch
        order = trainer.shuffle_rng.permutation(self.n) if self.shuffle and batch < self.n else None

        def read(b):
            if b >= len(sizes):
                return None
            start = b * batch
            stop = start + sizes[b]
            return self.read_rows(slice(start, stop) if order is None else order[start:stop])

        return self._prefetch(read, len(sizes))


class _BlockSource(_Source):
    """Shuffled blocks: ``read_block(k)`` returns the prepared rows of block ``k`` (``block_sizes[k]`` rows). Each
    epoch visits the blocks in a random order, shuffles the rows within buffers of ``buffer_blocks`` consecutive
    blocks (a permutation from a per-epoch seed and the buffer's index, so any batch can be rebuilt for a replay),
    and cuts the result into batches of ``batch`` rows."""

    def __init__(self, block_sizes, batch, shuffle, buffer_blocks, read_block, transfer, model):
        self.block_sizes = [int(s) for s in block_sizes]
        super().__init__(sum(self.block_sizes), batch, shuffle, transfer, model)
        self.buffer_blocks, self.read_block = buffer_blocks, read_block

    def epoch(self, trainer):
        sizes, batch, count = self.sizes, self.batch, len(self.block_sizes)
        shuffle = self.shuffle and batch < self.n
        order = trainer.shuffle_rng.permutation(count) if shuffle else np.arange(count)
        seed = int(trainer.shuffle_rng.integers(2**63)) if shuffle else None
        step = self.buffer_blocks
        buffers = [order[i:i + step] for i in range(0, count, step)]
        starts = np.cumsum([0] + [sum(self.block_sizes[j] for j in blocks) for blocks in buffers])
        cache: dict = {}

        def load(k):
            parts = [self.read_block(int(j)) for j in buffers[k]]
            if seed is None:
                return _concat(parts)
            total = int(starts[k + 1] - starts[k])
            # row i of the shuffled buffer is row order[i] of its blocks one after the other: each block's rows are
            # written straight to their places (one buffer in memory, not the blocks plus a shuffled copy)
            order = np.random.default_rng([seed, k]).permutation(total)
            place = np.empty(total, dtype=np.int64)
            place[order] = np.arange(total)
            out = tuple(None if a is None else np.empty((total,) + a.shape[1:], dtype=a.dtype) for a in parts[0])
            start = 0
            for part in parts:
                rows = place[start:start + part[0].shape[0]]
                for o, a in zip(out, part):
                    if o is not None:
                        o[rows] = a
                start += part[0].shape[0]
            return out

        def read(b):
            if b >= len(sizes):
                return None
            start = b * batch
            stop = start + sizes[b]
            first = int(np.searchsorted(starts, start, side="right")) - 1
            last = int(np.searchsorted(starts, stop - 1, side="right")) - 1
            for k in [k for k in cache if not first <= k <= last]:
                del cache[k]  # memory: the buffers of the current batch only
            pieces = []
            for k in range(first, last + 1):
                if k not in cache:
                    cache[k] = load(k)
                lo, hi = max(start, starts[k]) - starts[k], min(stop, starts[k + 1]) - starts[k]
                pieces.append(tuple(None if a is None else a[lo:hi] for a in cache[k]))
            return _concat(pieces)

        return self._prefetch(read, len(sizes))


# -- streamed data sets -------------------------------------------------------------------------------------------
class _Stream:
    """What the streamed data sets share; see the module docstring."""

    single_use = False
    n: int | None = None

    def _check(self, model, loss, class_table=None, names=NAMES, labels=False):
        """Check the data as in-memory data is checked (before anything trains); returns the host class label per
        row when ``labels`` (for a stratified ``validation_split``)."""
        return None

    def _feature_names(self, model):
        return None

    def _split(self, fraction, labels, rng, loss):
        raise ValueError(f"validation_split needs random access to the rows; {type(self).__name__} has none: give "
                         f"validation_data instead")


class ArrayStream(_Stream):
    """Host arrays read batch by batch: never copied whole into memory or onto the device.

    Args:
        X: ``(n, n_inputs)`` features: a ``numpy.memmap`` (``np.load(path, mmap_mode="r")``, ``np.memmap(...)``) or
            any NumPy array.
        y: targets as ``fit`` takes them (``(n,)`` class indices, ``(n, n_outputs)``...), host arrays; None for
            ``predict``.
        sample_weight: ``(n,)`` row weights, or None.
        shuffle: with ``fit(shuffle=True)``: ``"rows"`` (the in-memory fit's exact permutation; each batch's rows
            read in increasing order) or ``"blocks"`` (shuffled blocks of ``block_rows`` rows, rows shuffled within
            buffers of ``buffer_blocks`` blocks; sequential reads).
        block_rows: rows per block for ``shuffle="blocks"`` (default: a buffer of ``buffer_blocks`` blocks holds
            about 4 MiB of ``X``).
        buffer_blocks: blocks per shuffle buffer.

    Before training, the arrays are checked in chunks of about 4 MiB with the checks and messages of in-memory
    data (finite, within the model's dtype, shapes, targets, weights), naming the first bad row: one sequential
    read of the data. Memory holds a few batches and chunks, plus 8 bytes per row for the shuffled order.

    >>> import numpy as np, gpunet as gn
    >>> model = gn.Sequential([gn.Dense(3, 1)], seed=0)
    >>> X, y = np.ones((10, 3)), np.zeros(10)
    >>> history = model.fit(gn.sources.ArrayStream(X, y), epochs=2, batch_size=4)
    >>> model.predict(gn.sources.ArrayStream(X)).shape
    (10, 1)
    """

    def __init__(self, X, y=None, sample_weight=None, *, shuffle: str = "rows", block_rows: int | None = None,
                 buffer_blocks: int = BUFFER_BLOCKS):
        self.X = _host_array("X", X)
        self.y = None if y is None else _host_array("y", y)
        self.sample_weight = None if sample_weight is None else _host_array("sample_weight", sample_weight)
        self.shuffle = validation.one_of("shuffle", shuffle, ("rows", "blocks"))
        validation.numeric("X", self.X)
        if self.X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features); received shape {self.X.shape}")
        self.block_rows = None if block_rows is None else validation.positive_int("block_rows", block_rows)
        self.buffer_blocks = validation.positive_int("buffer_blocks", buffer_blocks)
        self.rows = None  # sorted positions of a subset (validation_split), or None for all rows
        self.n = self.X.shape[0]
        for name, a in (("y", self.y), ("sample_weight", self.sample_weight)):
            if a is not None and (a.ndim == 0 or a.shape[0] != self.n):
                raise ValueError(f"X has {self.n} samples but {name} has {a.shape[0] if a.ndim else 0}")

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        kind = "memmap" if isinstance(self.X, np.memmap) else "array"
        return f"ArrayStream({self.n} rows of {self.X.shape[1]} {self.X.dtype} ({kind}), shuffle={self.shuffle!r})"

    def subset(self, positions) -> "ArrayStream":
        """The rows ``positions`` (0-based, increasing) of this stream, e.g. a train/test split of a memmap; reads
        nothing (the positions themselves are held: 8 bytes a row)."""
        sub = object.__new__(ArrayStream)
        sub.__dict__.update(self.__dict__)
        rows = np.asarray(positions, dtype=np.int64)
        sub.rows = rows if self.rows is None else self.rows[rows]
        sub.n = int(rows.size)
        return sub

    def _take(self, a, positions):
        """Rows ``positions`` (a slice or int array of positions) of host array ``a``, read in increasing order."""
        if a is None:
            return None
        if self.rows is not None:
            positions = self.rows[positions]
        if isinstance(positions, slice):
            return np.asarray(a[positions])
        if positions.size < 2 or np.all(positions[1:] >= positions[:-1]):
            return np.asarray(a[positions])
        order = np.argsort(positions, kind="stable")
        out = np.empty((positions.size,) + a.shape[1:], dtype=a.dtype)
        out[order] = a[positions[order]]
        return out

    def _chunks(self):
        """``(start, stop)`` positions of the check chunks (about CHUNK_BYTES of X each)."""
        rows = _chunk_rows(self.X)
        return [(s, min(s + rows, self.n)) for s in range(0, self.n, rows)]

    def _check(self, model, loss, class_table=None, names=NAMES, labels=False):
        validation.features(names[0], self.X[:1], model.n_inputs)  # shape and dtype (the rows come below)
        if loss is not None and self.y is None:
            raise ValueError(f"{names[1]} is needed: give ArrayStream(X, y)")
        prepare = _Prepare(model, loss, class_table, names)
        found, out = self.sample_weight is None and class_table is None, []
        for start, stop in self._chunks():
            x, Y, W = prepare(*(self._take(a, slice(start, stop)) for a in (self.X, self.y, self.sample_weight)),
                              check=True, offset=start)
            if W is not None:
                found = found or bool(np.any(W > 0))
            if labels and Y is not None:
                from .training import class_labels

                out.append(class_labels(Y, loss))
        if loss is not None and not found:
            raise ValueError(f"{names[2]} must be non-negative with at least one positive weight"
                             if class_table is None else
                             "class_weight (with sample_weight) gives every sample weight 0: nothing to learn")
        if labels and loss is not None and out and out[0] is not None:
            return np.concatenate(out)
        return None

    def _split(self, fraction, labels, rng, loss):
        from .training import split_validation

        train, val = split_validation(self.n, fraction, labels, rng)
        return self.subset(train), self.subset(val)

    def _source(self, model, loss, *, batch, shuffle, class_table=None, names=NAMES, check=False):
        if check:
            validation.features(names[0], self.X[:1], model.n_inputs)
            if loss is not None and self.y is None:
                raise ValueError(f"{names[1]} is needed: give ArrayStream(X, y)")
        prepare = _Prepare(model, loss, class_table, names, check)
        transfer = transfer_mod.for_backend(model.backend, model.dtype)
        arrays = (self.X, None if loss is None else self.y, None if loss is None else self.sample_weight)
        if self.shuffle == "blocks" and shuffle:
            rows = self.block_rows or max(1, _chunk_rows(self.X) // self.buffer_blocks)  # a buffer: about 4 MiB
            blocks = _sizes(self.n, rows)

            def read_block(k):
                start = k * rows
                return prepare(*(self._take(a, slice(start, start + blocks[k])) for a in arrays), offset=start)

            return _BlockSource(blocks, batch, shuffle, self.buffer_blocks, read_block, transfer, model)

        def read_rows(positions):
            offset = positions.start if isinstance(positions, slice) and self.rows is None else 0
            return prepare(*(self._take(a, positions) for a in arrays), offset=offset)

        return _RowSource(self.n, batch, shuffle, read_rows, transfer, model)


class ParquetStream(_Stream):
    """Numeric columns of Parquet files, read one row group at a time with pyarrow.

    Args:
        path: a Parquet file, a folder of ``*.parquet`` files (read in name order), or a list of files.
        target: the target column name (or a list of names for several outputs); None for ``predict``.
        features: the feature column names, in the model's input order. Default: the model's ``feature_names`` (set
            by a fit on a DataFrame or a ParquetStream), else every numeric or boolean column but the target and
            weight columns.
        sample_weight: the name of a column of row weights, or None.
        buffer_blocks: row groups per shuffle buffer (see the module docstring: shuffled blocks).

    A block is a row group: memory holds about ``buffer_blocks + 1`` row groups of the chosen columns, so write
    big files with bounded row groups (``pyarrow.parquet.write_table(table, path, row_group_size=65536)``). Before
    training, the file is read once and checked with the checks of in-memory data (a missing cell is NaN and
    refused), rows counted from 0 over all files. ``fit`` on a ParquetStream sets ``model.feature_names``.
    """

    def __init__(self, path, target=None, features=None, sample_weight: str | None = None, *,
                 buffer_blocks: int = BUFFER_BLOCKS):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("ParquetStream needs pyarrow: pip install 'gpunet[data]'") from None
        if isinstance(path, (list, tuple)):
            files = [Path(p) for p in path]
        elif Path(path).is_dir():
            files = sorted(Path(path).glob("*.parquet"))
            if not files:
                raise ValueError(f"{path} is a folder without *.parquet files")
        else:
            files = [Path(path)]
        self.files, self._handles = files, []
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"Parquet file not found: {file}")
            try:
                self._handles.append(pq.ParquetFile(file))
            except Exception as exc:  # ArrowInvalid, OSError...: a damaged or foreign file
                raise ValueError(f"{file} is not a readable Parquet file ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
        self.targets = [] if target is None else [target] if isinstance(target, str) else [str(t) for t in target]
        self.target = target
        self.weight = sample_weight
        self.features = None if features is None else [str(c) for c in features]
        self.buffer_blocks = validation.positive_int("buffer_blocks", buffer_blocks)
        self.blocks = [(f, g) for f, h in enumerate(self._handles) for g in range(h.metadata.num_row_groups)]
        self.block_sizes = [self._handles[f].metadata.row_group(g).num_rows for f, g in self.blocks]
        self.n = int(sum(self.block_sizes))
        if self.n == 0:
            raise ValueError(f"{self._label()} holds no rows")
        names = self._handles[0].schema_arrow.names
        for file, handle in zip(files[1:], self._handles[1:]):
            if handle.schema_arrow.names != names:
                raise ValueError(f"{file} has columns {handle.schema_arrow.names}, but {files[0]} has {names}")
        self.columns = list(names)
        for name in self.targets + ([self.weight] if self.weight else []) + (self.features or []):
            if name not in self.columns:
                raise ValueError(f"{self._label()} has no column {name!r}; columns: {self.columns}")

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ParquetStream({self._label()}, {self.n} rows in {len(self.blocks)} row groups, target={self.target!r})"

    def _label(self) -> str:
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{len(self.files)} Parquet files in {self.files[0].parent}"

    def _feature_names(self, model):
        if self.features is not None:
            return self.features
        if model.feature_names is not None:
            return list(model.feature_names)
        import pyarrow.types as pat

        schema = self._handles[0].schema_arrow
        skip = set(self.targets) | {self.weight}
        names, refused = [], []
        for field in schema:
            if field.name in skip:
                continue
            numeric = pat.is_integer(field.type) or pat.is_floating(field.type) or pat.is_boolean(field.type)
            (names if numeric else refused).append(field.name)
        if refused:
            raise TypeError(f"{self._label()}: column(s) {refused} hold non-numeric values; choose the feature "
                            f"columns with ParquetStream(..., features=[...]) or encode raw tables with "
                            f"gpunet.tabular.TableTransform (the command line does)")
        return names

    def _reader(self, model, loss, class_table, names, targets=True, check=False):
        """``read_block(k, check=False)``: the prepared rows of row group ``k``."""
        features = self._feature_names(model)
        if len(features) != model.n_inputs:
            raise ValueError(f"{self._label()} gives {len(features)} feature column(s) {features}, but the model "
                             f"expects {model.n_inputs}")
        missing = [c for c in features if c not in self.columns]
        if missing:
            raise ValueError(f"{self._label()} lacks the column(s) {missing} the model was trained on; its columns: "
                             f"{self.columns}")
        use_targets = targets and loss is not None
        if use_targets and not self.targets:
            raise ValueError(f"{self._label()}: name the target column, ParquetStream(path, target=...)")
        columns = features + (self.targets + ([self.weight] if self.weight else []) if use_targets else [])
        prepare = _Prepare(model, loss if use_targets else None, class_table, names)
        starts = np.cumsum([0] + self.block_sizes)

        default = check

        def read_block(k, check=None):
            check = default if check is None else check
            f, g = self.blocks[k]
            try:
                table = self._handles[f].read_row_group(g, columns=columns)
            except Exception as exc:
                raise ValueError(f"{self.files[f]}, row group {g}: not readable ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
            where = f"{self.files[f]}, row group {g}" if check else None
            try:
                x, _ = validation.table_features(names[0], table.select(features), features)
                y = w = None
                if use_targets:
                    ys = [np.asarray(table.column(t).to_numpy(zero_copy_only=False)) for t in self.targets]
                    y = ys[0] if len(ys) == 1 else np.column_stack(ys)
                    if self.weight:
                        w = np.asarray(table.column(self.weight).to_numpy(zero_copy_only=False))
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{where or self.files[f]}: {exc}") from None
            return prepare(x, y, w, check=check, offset=int(starts[k]), where=where)

        return read_block

    def _check(self, model, loss, class_table=None, names=NAMES, labels=False):
        read_block = self._reader(model, loss, class_table, names)
        found = loss is None or (self.weight is None and class_table is None)
        for k in range(len(self.blocks)):
            _, _, W = read_block(k, check=True)
            if W is not None:
                found = found or bool(np.any(W > 0))
        if not found:
            raise ValueError(f"{self._label()}: {names[2]} must be non-negative with at least one positive weight")
        return None

    def _source(self, model, loss, *, batch, shuffle, class_table=None, names=NAMES, check=False):
        read_block = self._reader(model, loss, class_table, names, check=check)
        transfer = transfer_mod.for_backend(model.backend, model.dtype)
        return _BlockSource(self.block_sizes, batch, shuffle, self.buffer_blocks, read_block, transfer, model)


class BatchStream(_Stream):
    """Batches from a Python iterable, used as they come (never re-cut into ``batch_size`` rows).

    Args:
        batches: a list or tuple of batches; an object with ``__len__`` and ``__getitem__(i)`` (Keras's PyDataset
            protocol: ``on_epoch_end()`` is called after each epoch when it has one); or a callable returning a fresh
            iterator each epoch (a generator function). Each batch is ``(x, y)`` or ``(x, y, sample_weight)`` of host
            arrays or arrays of the model's namespace; for ``predict``, a bare ``x`` is fine too. A single-use
            iterator (a generator object) is read once: ``predict``/``evaluate`` take it, ``fit`` for one epoch.
        buffer: with ``fit(shuffle=True)``, mix the rows of every ``buffer`` consecutive batches among them (the
            batch sizes stay); 1 (default) leaves each batch's rows together.

    Every batch is checked as it comes (shape, dtype, finite, targets, weights: the checks of in-memory data), and
    an error names the batch (its index in a list or PyDataset, its position in a generator's epoch); a list is
    checked whole before training. A bad batch met during training stops ``fit`` with that error, the model keeping
    the weights of the steps before it. An epoch of batches can be read only once, so a diverged epoch rolls back
    to the weights it started with instead of replaying its finite steps (a list or PyDataset can be replayed).
    ``fit``'s ``batch_size`` is ignored and ``validation_split`` is refused (give ``validation_data``).
    """

    def __init__(self, batches, *, buffer: int = 1):
        if isinstance(batches, BatchStream):
            batches = batches.batches
        self.batches = batches
        self.buffer = validation.positive_int("buffer", buffer)
        self.sequence = isinstance(batches, (list, tuple)) or (
            not callable(batches) and hasattr(batches, "__getitem__") and hasattr(batches, "__len__"))
        self.single_use = not self.sequence and not callable(batches)
        if self.single_use and not hasattr(batches, "__next__"):
            raise TypeError(f"batches must be a list of (x, y) batches, an object with __len__ and __getitem__, or a "
                            f"callable returning an iterator of batches; received {type(batches).__name__}")
        self._used = False
        self.n = None
        self.sizes = None
        if isinstance(batches, (list, tuple)):
            if not batches:
                raise ValueError("batches is empty: give at least one (x, y) batch")
            self.sizes = [int(_first(b).shape[0]) if hasattr(_first(b), "shape") else len(_first(b)) for b in batches]
            self.n = sum(self.sizes)

    def __repr__(self) -> str:
        count = len(self.batches) if self.sequence else "?"
        return f"BatchStream({type(self.batches).__name__}, {count} batches, buffer={self.buffer})"

    def _items(self):
        """A fresh ``(index, batch)`` iterator over one epoch in the stored order."""
        if self.sequence:
            return ((i, self.batches[i]) for i in range(len(self.batches)))
        if self.single_use:
            if self._used:
                raise ValueError("batches is an iterator, which can be read only once; pass a callable returning a "
                                 "fresh iterator (a generator function) to read it every epoch")
            self._used = True
            return enumerate(self.batches)
        iterator = self.batches()
        if not hasattr(iterator, "__next__"):
            iterator = iter(iterator)
        return enumerate(iterator)

    def _check(self, model, loss, class_table=None, names=NAMES, labels=False):
        if isinstance(self.batches, (list, tuple)):  # in memory already: checked whole before training
            prepare = _Prepare(model, loss, class_table, BATCH_NAMES)
            for i, item in enumerate(self.batches):
                prepare(*_unpack(item, loss, i), check=True, where=f"{names[0]}, batch {i}")
        return None

    def _source(self, model, loss, *, batch, shuffle, class_table=None, names=NAMES, check=False):
        return _ItemSource(self, model, loss, shuffle, class_table, names, check)


class _ItemSource:
    """The source of a :class:`BatchStream`: batch ``b`` of an epoch is item ``order[b]`` of a sequence (random
    access: replayable), or the ``b``-th of the callable's iterator (read once, in order); with shuffling and
    ``buffer > 1`` the rows of each buffer of items are mixed and re-cut into the items' sizes."""

    def __init__(self, stream, model, loss, shuffle, class_table, names, check):
        self.stream, self.model, self.loss, self.shuffle = stream, model, loss, shuffle
        self.prepare = _Prepare(model, loss, class_table, BATCH_NAMES)
        self.names = names
        self.transfer = transfer_mod.for_backend(model.backend, model.dtype)
        self.sizes, self.n = stream.sizes, stream.n
        self.batch = None  # the batches are the iterable's own
        self.steps = len(stream.batches) if stream.sequence else None
        self.replayable = stream.sequence
        # a list is checked whole before training (BatchStream._check); anything else batch by batch as it comes
        self.check = check or not isinstance(stream.batches, (list, tuple))

    def epoch(self, trainer):
        stream, step = self.stream, self.stream.buffer
        if stream.sequence:
            count = len(stream.batches)
            order = trainer.shuffle_rng.permutation(count) if self.shuffle and trainer is not None and count > 1 \
                else np.arange(count)
            items = None
        else:
            count, order, items = None, None, stream._items()
        mix = self.shuffle and step > 1 and trainer is not None
        seed = int(trainer.shuffle_rng.integers(2**63)) if mix else None
        state = {"buffer": None, "next": 0, "ended": False}

        def fetch(i):
            if order is not None:
                if i >= count:
                    end = getattr(stream.batches, "on_epoch_end", None)  # a PyDataset's hook, as Keras calls it
                    if end is not None and not state["ended"]:
                        state["ended"] = True
                        end()
                    return None
                index = int(order[i])
                return index, stream.batches[index]
            if i != state["next"]:
                raise RuntimeError(f"batches of a generator are read in order: batch {i} was asked for after "
                                   f"{state['next'] - 1}")
            state["next"] = i + 1
            return next(items, None)

        def load(k):
            out = []
            for i in range(k * step, k * step + step):
                got = fetch(i)
                if got is None:
                    break
                index, item = got
                where = f"{self.names[0]}, batch {index}"
                out.append(self.prepare(*_unpack(item, self.loss, index), check=self.check, where=where))
            if mix and out:
                sizes = [x.shape[0] for x, _, _ in out]
                merged = _take_rows(_concat(out), np.random.default_rng([seed, k]).permutation(sum(sizes)))
                bounds = np.cumsum([0] + sizes)
                out = [tuple(None if a is None else a[bounds[j]:bounds[j + 1]] for a in merged)
                       for j in range(len(sizes))]
            return out

        def read(b):
            k, j = divmod(b, step)
            if state["buffer"] is None or state["buffer"][0] != k:
                state["buffer"] = (k, load(k))
            got = state["buffer"][1]
            return got[j] if j < len(got) else None

        return _Prefetch(read, count, self.transfer, self.model.backend, self.model.dtype)


def _first(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def _unpack(item, loss, index):
    """``(x, y, w)`` of one batch: a tuple ``(x, y)``/``(x, y, w)``, or a bare ``x`` when predicting."""
    if isinstance(item, (tuple, list)):
        if len(item) not in (1, 2, 3) or (loss is not None and len(item) == 1):
            raise ValueError(f"batch {index} must be (x, y) or (x, y, sample_weight); received a "
                             f"{type(item).__name__} of {len(item)}")
        return tuple(item) + (None,) * (3 - len(item))
    if loss is not None:
        raise ValueError(f"batch {index} must be (x, y) or (x, y, sample_weight); received "
                         f"{type(item).__name__}")
    return item, None, None


def _host_array(name, a):
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__array_namespace__") or hasattr(a, "__dlpack__"):
        raise TypeError(f"{name} of an ArrayStream must be a host array (NumPy, numpy.memmap); received "
                        f"{type(a).__module__.split('.')[0]} {type(a).__name__}")
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be a numeric array; could not convert it ({exc})") from None


def _chunk_rows(X) -> int:
    row_bytes = max(1, int(np.prod(X.shape[1:])) * X.dtype.itemsize)
    return max(1, CHUNK_BYTES // row_bytes)


# -- what fit, predict and evaluate call ------------------------------------------------------------------------------
def is_batches(X, predict: bool = False) -> bool:
    """Whether ``X`` (given without ``y``) is an iterable of batches rather than in-memory data: a callable, an
    iterator, an object with ``__len__``/``__getitem__`` that is no array or table, or a list/tuple whose first
    element is an ``(x, y[, w])`` tuple of arrays (for ``predict`` also a list of 2-D arrays)."""
    from .tabular import is_table

    if isinstance(X, (np.ndarray, np.generic, str, bytes, dict, numbers.Number)) or is_table(X) or \
            hasattr(X, "__array_namespace__") or hasattr(X, "__dlpack__") or hasattr(X, "__array__"):
        return False
    if isinstance(X, (list, tuple)):
        if not X:
            return False
        first = X[0]
        if isinstance(first, (list, tuple)) and len(first) in (2, 3):
            return getattr(first[0], "ndim", None) == 2
        return predict and getattr(first, "ndim", None) == 2
    if callable(X) or hasattr(X, "__next__"):
        return True
    return hasattr(X, "__getitem__") and hasattr(X, "__len__")


def as_stream(X, y=None, sample_weight=None, *, predict: bool = False):
    """The streamed data set to read ``X`` (with ``y``, ``sample_weight``) from, or None for in-memory data: a
    streamed data set itself; an :class:`ArrayStream` when any of the arrays is a ``numpy.memmap``; a
    :class:`BatchStream` for an iterable of batches given without ``y``."""
    if isinstance(X, _Stream):
        for name, a in (("y", y), ("sample_weight", sample_weight)):
            if a is not None:
                raise ValueError(f"{type(X).__name__} carries its own targets and weights; leave {name}=None")
        return X
    if any(isinstance(a, np.memmap) for a in (X, y, sample_weight)):
        return ArrayStream(X, y, sample_weight)
    if y is None and sample_weight is None and is_batches(X, predict):
        return BatchStream(X)
    return None


def predict(model, stream, batch_size=None):
    """``(n, n_outputs)`` outputs of the model's namespace for a streamed data set, batch by batch (memory: a few
    batches plus the outputs themselves, which are concatenated). ``batch_size``: rows per batch for arrays and
    Parquet (default: about 4 MiB of inputs); an iterable's batches are its own."""
    rows = batch_size or max(1, CHUNK_BYTES // (4 * model.n_inputs))
    source = stream._source(model, None, batch=rows, shuffle=False, check=True)
    batch, parts = source.epoch(None), []
    for b in itertools.count():
        arrays = batch(b)
        if arrays is None:
            break
        parts.append(model._forward(arrays[0]))
    for layer in model.layers:
        layer._cache = None
    if not parts:
        raise ValueError("X gives no batches to predict")
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)


class Evaluation:
    """A streamed data set evaluated in batches, e.g. ``validation_data`` during ``fit`` (its source, and so its
    transfer buffers, made once): ``evaluate(model, loss, metrics) -> {"loss": ..., <metric>: ...}``, the loss being
    the mean over all rows (with sample weights, ``sum(w * row loss) / n``, as in training) and each metric
    (unweighted) merged over the batches, as in a training epoch; equal to the in-memory evaluation up to
    rounding."""

    def __init__(self, model, stream, loss, batch_size=None, names=NAMES, check=False):
        rows = batch_size or max(1, CHUNK_BYTES // (4 * model.n_inputs))
        self.source = stream._source(model, loss, batch=rows, shuffle=False, names=names, check=check)

    def evaluate(self, model, loss, metrics) -> dict[str, float]:
        batch = self.source.epoch(None)
        values, sizes, stats = [], [], [None] * len(metrics)
        for b in itertools.count():
            arrays = batch(b)
            if arrays is None:
                break
            x, Y, w = arrays
            pred = model._forward(x)
            values.append(loss.weighted_value(pred, Y, w, model.ops))
            sizes.append(x.shape[0])
            for j, metric in enumerate(metrics):
                s = metric.stats(pred, Y)
                stats[j] = s if stats[j] is None else metric.combine(stats[j], s)
        for layer in model.layers:
            layer._cache = None
        if not values:
            raise ValueError("the evaluation data gives no batches")
        losses = to_numpy(model.xp.stack(values)).astype(np.float64)
        rows = np.asarray(sizes, dtype=np.float64)
        out = {"loss": float(losses @ rows / rows.sum())}
        for metric, s in zip(metrics, stats):
            out[metric.name] = metric.result([to_numpy(v) for v in s])
        return out
