"""Data-parallel training over MPI and NCCL: P processes train exactly like one.

    comm = gn.distributed.init()          # the MPI world under mpiexec/srun; alone, a world of one (no MPI needed)
    model.fit(X, y, batch_size=256, distributed=comm)     # batch_size is the global batch

Launch with ``mpiexec -n 4 python train.py`` (or ``srun``; the command line: ``mpiexec -n 4 gpunet train ...``).
MPI (mpi4py) starts and coordinates the processes and carries NumPy buffers; CuPy buffers go through NCCL
(``cupy.cuda.nccl``, its unique id broadcast over MPI as ChainerMN does), on the training stream, never through host
copies per step. What makes P ranks equal one process (checked to 1e-10 in float64 by the tests):

1. At the start of every fit, rank 0's weights, optimizer state and generator states are broadcast, and every rank
   checks that it holds the same architecture.
2. Every rank draws the same shuffled order from the shared generator. Global batch ``b`` is that order's ``b``-th
   slice of ``batch_size`` rows, split over the ranks with ``numpy.array_split`` (uneven and empty parts allowed).
   With ``sharded=True`` each rank holds only its own rows: every rank draws every rank's permutation in rank order
   (the streams stay identical) and cuts its own into the same number of parts; batch ``b`` is the union of every
   rank's part ``b``, and the run equals one process training on the union of the shards in that order.
3. Each rank's loss gradient is scaled by its share of the batch's rows (``n_local / n_batch``), so one SUM
   all-reduce of the flat gradient buffer gives the single-process gradient of the batch, also for an uneven last
   batch (plain 1/P averaging would not). The all-reduce is a gradient hook: clipping and weight decay see the
   combined gradient.
4. Dropout masks are drawn for the whole global batch on every rank and sliced.
5. Everything above the step is decided from values identical on every rank: the epoch's loss and metrics are
   merged from every rank's statistics in rank order (r2 by Chan's formula, not averaged), validation rows are
   split over the ranks and merged the same way, "weights finite" and Ctrl-C are agreed by all-reductions. So
   early stopping, schedules, TerminateOnNaN and the divergence roll-back act identically everywhere.
6. Only rank 0 shows progress, warns, and writes checkpoints and ``model.save``.
7. After :func:`init`, an exception that escapes on any rank aborts the whole job (``MPI.Abort``, as
   ``python -m mpi4py`` does) instead of leaving the other ranks waiting in a collective. A fit refused before
   training (its checks on one rank, or ranks that differ) is agreed at :meth:`DataParallel.start` and raised on
   every rank, the model as it was; an exception escaping a data-parallel ``fit`` once training has started aborts
   the job (except the divergence error, which every rank raises together).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import numpy as np

from .backend import devices

# environment variables by which a launcher tells a process it is one of several (MPICH/Intel MPI/MVAPICH: PMI_SIZE;
# Open MPI: OMPI_COMM_WORLD_SIZE; PMIx launchers: PMIX_RANK with a size elsewhere; Slurm's srun: SLURM_NTASKS)
_LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")


class World:
    """The processes that train together: ``rank`` (0 ... ``size - 1``), ``size``, and ``local_rank`` /
    ``local_size`` among the processes of this machine. ``comm`` is the ``mpi4py`` communicator, or ``None`` for
    a world of one (then every collective is the identity)."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            from mpi4py import MPI

            local = comm.Split_type(MPI.COMM_TYPE_SHARED)
            self.rank, self.size = comm.Get_rank(), comm.Get_size()
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        self._nccl = {}  # CUDA device index -> NcclCommunicator
        self._flag = np.zeros(1, dtype=np.int32)

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # -- collectives on host objects (small: once per fit or per epoch) ----------------------------------------------
    def bcast(self, obj, root: int = 0):
        """``obj`` of ``root`` on every rank (pickled)."""
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def allgather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (pickled)."""
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any."""
        if self.comm is None:
            return bool(flag)
        from mpi4py import MPI

        self._flag[0] = 1 if flag else 0  # the buffer API: no pickling (it runs after every step)
        self.comm.Allreduce(MPI.IN_PLACE, self._flag, op=MPI.MAX)
        return bool(self._flag[0])

    def all(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on all."""
        return not self.any(not flag)

    def abort(self, code: int = 1) -> None:
        """End the whole job now (every rank), with exit status ``code``."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is None:
            os._exit(code)
        time.sleep(0.5)  # the launcher forwards output asynchronously: let this rank's last lines reach it first
        self.comm.Abort(code)

    # -- collectives on arrays, in place ------------------------------------------------------------------------------
    def allreduce_(self, a) -> None:
        """``a`` becomes the elementwise sum of every rank's ``a`` (C-contiguous NumPy: MPI; CuPy: NCCL on the
        current stream)."""
        if self.comm is None:
            return
        if isinstance(a, np.ndarray):
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
            return
        self._cupy_collective(a, "allReduce")

    def bcast_(self, a, root: int = 0) -> None:
        """``a`` becomes ``root``'s ``a`` on every rank."""
        if self.comm is None:
            return
        if isinstance(a, np.ndarray):
            self.comm.Bcast(a, root=root)
            return
        self._cupy_collective(a, "bcast", root)

    def _cupy_collective(self, a, what: str, root: int = 0) -> None:
        import cupy
        from cupy.cuda import nccl

        if not a.flags.c_contiguous:
            raise ValueError("NCCL collectives need C-contiguous arrays")
        dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        comm = self.nccl(a.device.id)
        stream = cupy.cuda.get_current_stream().ptr
        if what == "allReduce":
            comm.allReduce(a.data.ptr, a.data.ptr, a.size, dtypes[a.dtype], nccl.NCCL_SUM, stream)
        else:
            comm.bcast(a.data.ptr, a.size, dtypes[a.dtype], root, stream)

    def nccl(self, device: int):
        """The NCCL communicator of this world on CUDA device ``device``: rank 0 makes the unique id, MPI
        broadcasts it, every rank joins (ChainerMN's way: no extra server, no port)."""
        comm = self._nccl.get(device)
        if comm is None:
            import cupy
            from cupy.cuda import nccl

            uid = self.bcast(nccl.get_unique_id() if self.rank == 0 else None)
            with cupy.cuda.Device(device):
                comm = self._nccl[device] = nccl.NcclCommunicator(self.size, uid, self.rank)
        return comm


_WORLD: World | None = None


def launched_size() -> int:
    """How many processes the launcher started (1 when none did)."""
    for name in _LAUNCHER_SIZES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def init() -> World:
    """The world of this process (made on the first call, the same object after).

    Under a launcher (``mpiexec -n P``, ``srun``) it is MPI's world through mpi4py (``pip install
    'gpunet[mpi]'``); started alone, a world of one that needs no MPI. With P > 1 an uncaught exception on any
    rank aborts the whole job, and each rank's ``"cuda"`` / ``"auto"`` device becomes GPU ``local_rank %
    device_count`` (one GPU per rank on a node with as many GPUs as ranks).
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if launched_size() == 1 or os.environ.get("GPUNET_DISTRIBUTED", "1") == "0":
        _WORLD = World()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"this process was started by an MPI launcher ({launched_size()} processes) but mpi4py "
                          f"cannot be imported ({exc}); install it with pip install 'gpunet[mpi]'") from None
    _WORLD = World(MPI.COMM_WORLD)
    if _WORLD.size > 1:
        _abort_on_uncaught_exceptions(_WORLD)
        ok, _ = devices.cuda_available()
        if ok:
            import cupy

            devices.set_default_cuda_index(_WORLD.local_rank % cupy.cuda.runtime.getDeviceCount())
    return _WORLD


def current() -> World | None:
    """The world :func:`init` made, or None before it."""
    return _WORLD


def is_leader() -> bool:
    """True on rank 0, and in a process that is not part of a larger world: the one that prints and writes."""
    return _WORLD is None or _WORLD.rank == 0


def _abort_on_uncaught_exceptions(world: World) -> None:
    """Print an uncaught exception (main thread or any other) with the rank, then abort every rank."""
    def abort(kind, value, tb):
        sys.stderr.write(f"gpunet: rank {world.rank} of {world.size} failed; aborting the job\n")
        traceback.print_exception(kind, value, tb, file=sys.stderr)
        sys.stderr.flush()
        world.abort(1)

    sys.excepthook = abort
    threading.excepthook = lambda args: abort(args.exc_type, args.exc_value, args.exc_traceback)


def abort_on_failure(world: World, exc: BaseException) -> None:
    """Inside a data-parallel fit: a rank that fails alone would leave the others waiting in a collective, so print
    the failure and end the job."""
    sys.stderr.write(f"gpunet: rank {world.rank} of {world.size} failed inside a data-parallel fit; aborting "
                     f"the job\n")
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    world.abort(1)


# -- data-parallel fit ------------------------------------------------------------------------------------------------
def _fingerprint(xp, arrays) -> list:
    """Order-sensitive float64 sums of each array (``None`` entries skipped): its sum, and its cells weighted by
    their row index and by the product of their row and column index, so that other values, other rows, the same
    rows in another order or other one-hot labels differ. Computed the same way on every rank, so equal data give
    equal bits."""
    prints = []
    for a in arrays:
        if a is None:
            prints.append(None)
            continue
        a = xp.reshape(xp.astype(a, xp.float64), (a.shape[0], -1))
        rows = xp.reshape(xp.arange(1, a.shape[0] + 1, dtype=xp.float64), (-1, 1))
        columns = xp.reshape(xp.arange(1, a.shape[1] + 1, dtype=xp.float64), (1, -1))
        prints.append((float(xp.sum(a)), float(xp.sum(a * rows)), float(xp.sum(a * (rows * columns)))))
    return prints


class DataParallel:
    """What ``fit(..., distributed=world)`` adds around the trainer's steps (see the module docstring): the start
    (checks and broadcasts), the gradient all-reduce hook, the sources of each rank's rows, and the merged epoch
    totals and validation."""

    def __init__(self, world: World, model, sharded: bool = False):
        if model.backend.name not in ("numpy", "cupy"):
            raise TypeError(f"data-parallel training needs NumPy or CuPy arrays (MPI or NCCL buffers); the model "
                            f"runs on {model.backend.name}")
        self.world, self.model, self.sharded = world, model, sharded
        self.rows = None  # every rank's row count, in rank order (sharded)
        # "new"; "checking" once the generators are shared (the fit's checks run); "started" once start() agreed;
        # "refused" when a rank refused the fit before that, which every rank then raises
        self.phase = "new"
        self.undo = None  # the fit's: puts the model back as it was (set by Sequential._fit)
        self._generators = None  # this rank's generator states before the fit

    def sync_generators(self) -> None:
        """Give every rank rank 0's generator states (the shuffling order, NumPy's dropout masks)."""
        trainer = self.model.trainer
        if self.phase == "new":
            self._generators = trainer.generator_states()
        trainer.set_generator_states(self.world.bcast(trainer.generator_states() if self.world.rank == 0 else None))
        if self.phase == "new":
            self.phase = "checking"

    def refuse(self, exc: BaseException) -> bool:
        """Whether ``exc`` ends the fit on every rank alike, so the job goes on: a ValueError or TypeError raised
        while the fit's arguments and data are checked (this rank tells the others at :meth:`start`'s agreement,
        where they raise too), or one that start() itself raised on every rank. Anything else (a failure during
        training) is not: the job must abort."""
        if self.phase == "refused":
            return True
        if self.phase != "checking" or not isinstance(exc, (ValueError, TypeError)):
            return False
        self.world.allgather((None, None, None, None, f"{type(exc).__name__}: {exc}"))  # start()'s agreement
        self._refused()
        return True

    def _refused(self) -> None:
        self.phase = "refused"
        if self._generators is not None:
            self.model.trainer.set_generator_states(self._generators)
        if self.undo is not None:
            self.undo()

    def start(self, n_rows: int, fit_args: dict | None = None, data=()) -> None:
        """Check that every rank holds the same model and makes the same fit call (``fit_args``: epochs, batch
        size, callbacks... and, unless sharded, the same rows: ``data``, the fit's arrays ``(X, Y, W)``, are
        compared by an order-sensitive fingerprint), then give every rank rank 0's weights, optimizer state and
        generators, and install the all-reduce."""
        world, model, trainer = self.world, self.model, self.model.trainer
        described = {"dtype": model.dtype, "device": model.backend.name,
                     "layers": [(layer.in_features, layer.out_features, repr(layer.activation), layer.dropout)
                                for layer in model.layers],
                     "loss": repr(trainer.loss), "optimizer": repr(trainer.optimizer),
                     "metrics": [m.name for m in trainer.metrics], **(fit_args or {})}
        prints = None if self.sharded else _fingerprint(model.xp, data)
        everyone = world.allgather((described, n_rows, model.seed, prints, None))  # (None: this rank agrees)
        refusals = [(rank, why) for rank, (*_, why) in enumerate(everyone) if why is not None]
        if refusals:
            self._refused()
            rank, why = refusals[0]
            raise ValueError(f"rank {rank} refused this data-parallel fit ({why}); every rank refuses it")
        try:
            self._agree(everyone, described, n_rows, prints)
        except ValueError:
            self._refused()  # seen alike on every rank
            raise
        self.phase = "started"
        with model.backend.activate():
            if model._flat_params is not None:
                world.bcast_(model._flat_params)
            else:
                for p in model.parameters():
                    world.bcast_(p)
        optimizer = trainer.optimizer
        state = world.bcast(optimizer.state_dict(model) if world.rank == 0 else None)  # (only this model's state)
        optimizer.load_state_dict(state, model)  # rank 0 too: a state of another model is dropped everywhere
        self.sync_generators()
        trainer.gradient_hooks.insert(0, self._allreduce)  # first: penalties added later count once

    def _agree(self, everyone, described: dict, n_rows: int, prints) -> None:
        """start()'s checks of every rank's model, fit call and data against this rank's (each rank sees every
        difference, so each raises)."""
        world, model = self.world, self.model
        for rank, (theirs, rows, _, their_prints, _) in enumerate(everyone):
            differ = [key for key in described if theirs.get(key) != described[key]]
            if differ:
                shown = "; ".join(f"{key}: {theirs.get(key)!r} on rank {rank}, {described[key]!r} on rank "
                                  f"{world.rank}" for key in differ)
                raise ValueError(f"rank {rank}'s model or fit call differs from rank {world.rank}'s: {shown}; every "
                                 f"rank must build the same model and make the same fit call")
            if not self.sharded and rows != n_rows:
                raise ValueError(f"rank {rank} holds {rows} rows and rank {world.rank} {n_rows}: without "
                                 f"sharded=True every rank holds the whole data set")
            if not self.sharded and their_prints != prints:
                raise ValueError(f"rank {rank}'s data differ from rank {world.rank}'s (values or row order): without "
                                 f"sharded=True every rank holds the same data set in the same order (a split "
                                 f"needs the same random_state everywhere)")
        self.rows = [rows for _, rows, _, _, _ in everyone]
        if (model.backend.name == "cupy" and any(layer.dropout for layer in model.layers)
                and len({seed for _, _, seed, _, _ in everyone}) > 1):
            raise ValueError("dropout on CuPy draws its masks from the model's seed on the GPU: build the model "
                             "with the same integer seed on every rank")

    def finish(self) -> None:
        trainer = self.model.trainer
        if self._allreduce in trainer.gradient_hooks:
            trainer.gradient_hooks.remove(self._allreduce)
        trainer.batch_share = None

    def _allreduce(self, trainer, grads) -> None:
        """The SUM all-reduce of the gradients, each already this rank's share of the batch's mean: in place on
        the flat gradient buffer when the gradients are its views, else through a fused buffer."""
        world = self.world
        if trainer.grads_are_flat(grads):
            world.allreduce_(trainer.flat_grads)
            return
        from .backend import flat

        model = trainer.model
        fused, views = flat.gather(model.xp, grads, grads[0].dtype)
        world.allreduce_(fused)
        for g, v in zip(grads, views):
            g[...] = v

    # -- the batches ----------------------------------------------------------------------------------------------
    def source(self, X, Y, W, batch_size: int | None, shuffle: bool) -> "ShareSource":
        """This rank's batches; ``batch_size`` is the global batch (``None``: all rows of all ranks)."""
        return ShareSource(self, X, Y, W, batch_size, shuffle)

    # -- what the epoch and the validation sum to, identical on every rank ----------------------------------------
    def merge(self, totals):
        """The global :class:`gpunet.trainer.EpochTotals` from every rank's: batch losses weighted by the rows of
        each share, metric statistics merged in rank order."""
        from .trainer import EpochTotals

        everyone = self.world.allgather((totals.batch_losses, totals.sizes, totals.stats))
        sizes = np.sum([sizes for _, sizes, _ in everyone], axis=0)
        weighted = np.sum([losses * sizes for losses, sizes, _ in everyone], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            losses = weighted / sizes
        stats = [_merge(metric, [theirs[j] for _, _, theirs in everyone])
                 for j, metric in enumerate(self.model.trainer.metrics)]
        values = {m.name: m.result(st) for m, st in zip(self.model.trainer.metrics, stats) if st is not None}
        return EpochTotals(losses, sizes, values, stats)

    def evaluate(self, X, Y, loss, metrics, W=None) -> dict:
        """``{"loss": ..., metric: ...}`` over the validation rows (the loss weighted by ``W`` as in
        :meth:`gpunet.Sequential._evaluate`), each rank evaluating its part (its own rows when sharded, else its
        ``array_split`` part of the shared rows), merged in rank order."""
        from .backend import to_numpy

        model, world = self.model, self.world
        if not self.sharded:
            part = np.array_split(np.arange(X.shape[0]), world.size)[world.rank]
            lo, hi = (int(part[0]), int(part[-1]) + 1) if part.size else (0, 0)
            X, Y = X[lo:hi, ...], Y[lo:hi, ...]
            W = None if W is None else W[lo:hi, ...]
        local = (0.0, 0, [None] * len(metrics))
        if X.shape[0]:
            pred = model._predict(X, None)
            local = (float(loss.weighted_value(pred, Y, W, model.ops)) * X.shape[0], X.shape[0],
                     [[s if isinstance(s, (int, bool)) else to_numpy(s) for s in m.stats(pred, Y)] for m in metrics])
        everyone = world.allgather(local)
        rows = sum(r for _, r, _ in everyone)
        out = {"loss": sum(total for total, _, _ in everyone) / rows}
        for j, metric in enumerate(metrics):
            merged = _merge(metric, [stats[j] for _, _, stats in everyone])
            out[metric.name] = metric.result(merged)
        return out


def _merge(metric, stats: list):
    """Statistics of several ranks (None for a rank that saw no row) combined in rank order."""
    merged = None
    for st in stats:
        if st is not None:
            merged = st if merged is None else list(metric.combine(merged, st))
    return merged


class ShareSource:
    """This rank's rows of every global batch (:mod:`gpunet.sources`' interface). Unless sharded, every rank holds
    all ``n`` rows and draws the same order; global batch ``b`` is its ``b``-th slice of ``batch`` rows, split over
    the ranks by ``numpy.array_split``. Sharded, each rank holds its own rows, every rank draws every rank's
    permutation in rank order, and batch ``b`` is the union of every rank's ``b``-th ``array_split`` part (as many
    parts as ``ceil(total rows / batch)``, or more where uneven shards would make a batch larger than ``batch``).
    Each batch tells the trainer its share ``(start, stop, total)``."""

    def __init__(self, parallel: DataParallel, X, Y, W, batch_size: int | None, shuffle: bool):
        world, rows = parallel.world, parallel.rows
        self.n = sum(rows) if parallel.sharded else rows[world.rank]
        batch = self.n if batch_size is None else min(batch_size, self.n)
        self.parallel, self.arrays, self.batch, self.shuffle = parallel, (X, Y, W), batch, shuffle
        steps = -(-self.n // batch)
        while parallel.sharded and sum(-(-r // steps) for r in rows) > batch:  # no global batch above batch_size
            steps += 1
        if parallel.sharded:
            parts = [[len(p) for p in np.array_split(np.arange(r), steps)] for r in rows]
        else:
            parts = [[len(p) for p in np.array_split(np.arange(min(batch, self.n - b * batch)), world.size)]
                     for b in range(steps)]
            parts = [list(column) for column in zip(*parts)]  # [rank][batch]
        self.totals = [sum(parts[q][b] for q in range(world.size)) for b in range(steps)]
        self.starts = [sum(parts[q][b] for q in range(world.rank)) for b in range(steps)]
        self.sizes = parts[world.rank]

    def epoch(self, trainer):
        parallel, world = self.parallel, self.parallel.world
        rng = trainer.shuffle_rng
        if parallel.sharded:  # every rank's permutation, in rank order, so the generators stay identical
            orders = [rng.permutation(r) if self.shuffle and len(self.sizes) > 1 else np.arange(r)
                      for r in parallel.rows]
            mine = orders[world.rank]  # its parts, one per batch, one after another
        else:
            order = rng.permutation(self.n) if self.shuffle and self.batch < self.n else np.arange(self.n)
            mine = np.concatenate([np.array_split(order[b * self.batch:b * self.batch + total], world.size)[world.rank]
                                   for b, total in enumerate(self.totals)])
        model = trainer.model
        with model.backend.activate():
            index = model.xp.asarray(mine.astype(np.int64))
            X, Y, W = (None if a is None else model.xp.take(a, index, axis=0) for a in self.arrays)
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])

        def batch(b):
            trainer.batch_share = (self.starts[b], self.starts[b] + self.sizes[b], self.totals[b])
            rows = slice(int(offsets[b]), int(offsets[b + 1]))
            return X[rows, ...], Y[rows, ...], None if W is None else W[rows, ...]

        return batch
