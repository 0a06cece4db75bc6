"""Data-parallel training: ``mpiexec -n 2`` and ``-n 3`` runs equal the single-process run in float64 (1e-10), and
the replicas are bitwise identical; a failing rank ends the job; the command line trains data-parallel under
mpiexec. Every launch has a timeout, so a deadlock fails instead of hanging. Needs mpi4py and an MPI runtime (the
``mpi`` extra: ``pip install 'gpunet[mpi]'``); skipped without them."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mpi_scenarios  # noqa: E402

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec (pip install 'gpunet[mpi]' brings MPICH's)", allow_module_level=True)

TOL = dict(rtol=1e-10, atol=1e-12)


def launch(ranks, *args, timeout=240, **kwargs):
    """``mpiexec -n ranks python ARGS`` with one BLAS thread per rank; returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent),
           **kwargs.pop("env", {})}
    return subprocess.run([MPIEXEC, "-n", str(ranks), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def runs(request, tmp_path_factory):
    """Every scenario under mpiexec with this many ranks: ``{scenario: [rank 0's arrays, rank 1's, ...]}``."""
    folder = tmp_path_factory.mktemp(f"mpi{request.param}")
    done = launch(request.param, sys.executable, str(HERE / "mpi_scenarios.py"), str(folder))
    assert done.returncode == 0, done.stderr[-3000:]
    names = [*mpi_scenarios.SCENARIOS, "resumed", "unseeded"]
    return request.param, {name: [dict(np.load(folder / f"{name}-{r}.npz")) for r in range(request.param)]
                           for name in names} | {"folder": folder}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    with warnings.catch_warnings():  # reused_optimizer: the warning that its state starts afresh, meant
        warnings.filterwarnings("ignore", message=".*last updated another model")
        out = {name: fn(None) for name, fn in mpi_scenarios.SCENARIOS.items()}
    out["resumed"] = mpi_scenarios.resumed(None, folder)
    return out


def assert_equal_runs(ranks_arrays, expected, what):
    first = ranks_arrays[0]
    assert set(first) == set(expected), what
    for key in expected:
        np.testing.assert_allclose(first[key], expected[key], **TOL, err_msg=f"{what}: {key}")
    for rank, arrays in enumerate(ranks_arrays[1:], start=1):  # replicas: bit for bit
        for key in first:
            assert first[key].tobytes() == arrays[key].tobytes(), f"{what}: rank {rank}'s {key} differs from rank 0's"


@pytest.mark.parametrize("scenario", ["sgd", "adam", "early_stopping", "diverged", "resumed", "reused_optimizer",
                                      "penalised"])
def test_ranks_train_exactly_like_one_process(runs, references, scenario):
    _, results = runs
    assert_equal_runs(results[scenario], references[scenario], scenario)


def test_the_scenarios_test_what_they_say(references):
    """Premises: early stopping did stop early, the divergence happened after a finished epoch, the validation
    metrics and r2 were logged."""
    assert len(references["early_stopping"]["epochs"]) < 30
    assert references["diverged"]["where"][0] >= 1
    assert {"h_val_f1", "h_f1", "h_val_accuracy"} <= set(references["sgd"])
    assert {"h_r2", "h_val_r2", "h_mae"} <= set(references["adam"])


def test_unseeded_ranks_train_rank_0s_model_on_the_same_rows(runs):
    """seed=None: the run equals one process training rank 0's starting model (its weights and generators, saved
    before the fit), validation_split's rows included."""
    ranks, results = runs
    expected = mpi_scenarios.unseeded_reference(results["folder"] / f"unseeded-{ranks}.safetensors")
    assert_equal_runs(results["unseeded"], expected, "unseeded")


def test_sharded_ranks_train_like_one_process_on_the_union(runs):
    ranks, results = runs
    assert_equal_runs(results["sharded"], mpi_scenarios.sharded_reference(ranks), "sharded")


def test_a_failing_rank_ends_the_job(tmp_path):
    """Rank 1 raises after init(), while rank 0 waits in a collective: the job ends, non-zero, within seconds."""
    script = tmp_path / "fail.py"
    script.write_text("import gpunet as gn, numpy as np\n"
                      "world = gn.distributed.init()\n"
                      "if world.rank == 1:\n"
                      "    raise RuntimeError('rank 1 breaks')\n"
                      "X = np.zeros((8, 2)); y = np.zeros(8)\n"
                      "gn.Sequential([gn.Dense(2, 1)]).fit(X, y, epochs=100, distributed=world)\n")
    start = time.monotonic()
    done = launch(2, sys.executable, str(script), timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - start < 30
    assert "rank 1 of 2 failed" in done.stderr and "rank 1 breaks" in done.stderr


def test_a_fit_one_rank_refuses_is_refused_on_every_rank_and_the_job_goes_on(tmp_path):
    """One rank's data is bad: its checks raise before training, it tells the others at the agreement every fit
    makes before its first step, and every rank raises (a ValueError a try/except catches) with the model as it
    was; the ranks stay in step, so the next, correct fit trains."""
    script = tmp_path / "bad_rank.py"
    script.write_text("import json, sys, gpunet as gn, numpy as np\n"
                      "world = gn.distributed.init()\n"
                      "X = np.arange(16.0).reshape(8, 2); y = np.arange(8.0)\n"
                      "bad = X.copy()\n"
                      "if world.rank == 1:\n"
                      "    bad[3, 1] = np.nan\n"
                      "model = gn.Sequential([gn.Dense(2, 1)], dtype='float64', seed=0)\n"
                      "before = [w.copy() for w in model.get_weights()]\n"
                      "try:\n"
                      "    model.fit(bad, y, epochs=3, distributed=world)\n"
                      "    message = None\n"
                      "except ValueError as exc:\n"
                      "    message = str(exc)\n"
                      "same = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))\n"
                      "model.fit(X, y, epochs=2, batch_size=4, distributed=world)\n"
                      f"json.dump({{'message': message, 'same': same, 'steps': model.optimizer.steps}}, "
                      f"open(f'{tmp_path}/rank-{{world.rank}}.json', 'w'))\n")
    done = launch(2, sys.executable, str(script), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert "X must be finite; X[3, 1] = nan" in reports[1]["message"]
    assert reports[0]["message"].startswith("rank 1 refused this data-parallel fit (ValueError: X must be finite")
    assert all(r["same"] and r["steps"] == 4 for r in reports)


def test_a_rank_failing_during_training_ends_the_job(tmp_path):
    """Once training has started, a rank that fails alone (here a callback at the end of epoch 2) cannot tell the
    others, which wait in the next all-reduce: the job ends, non-zero, within seconds."""
    script = tmp_path / "callback.py"
    script.write_text("import gpunet as gn, numpy as np\n"
                      "world = gn.distributed.init()\n"
                      "class Breaks(gn.callbacks.Callback):\n"
                      "    def on_epoch_end(self, epoch, logs):\n"
                      "        if world.rank == 1 and epoch == 1:\n"
                      "            raise ValueError('rank 1 breaks in epoch 2')\n"
                      "X = np.zeros((8, 2)); y = np.zeros(8)\n"
                      "try:\n"
                      "    gn.Sequential([gn.Dense(2, 1)]).fit(X, y, epochs=100, distributed=world, "
                      "callbacks=[Breaks()])\n"
                      "except ValueError:\n"
                      "    pass  # caught: without the abort, rank 0 would wait forever\n")
    start = time.monotonic()
    done = launch(2, sys.executable, str(script), timeout=60)
    assert done.returncode != 0 and time.monotonic() - start < 30
    assert "failed inside a data-parallel fit" in done.stderr and "rank 1 breaks in epoch 2" in done.stderr


@pytest.mark.parametrize("mismatch, message", [
    ("epochs", "epochs: 4 on rank 1, 3 on rank 0"),
    ("batch_size", "batch_size: 5 on rank 1, 4 on rank 0"),
    ("callbacks", "callbacks: ['EarlyStopping', 'TerminateOnNaN', 'History'] on rank 1"),
    ("labels", "rank 1's data differ from rank 0's (values or row order)"),
    ("order", "rank 1's data differ from rank 0's (values or row order)"),
])
def test_ranks_making_different_fit_calls_are_refused_not_hung(tmp_path, mismatch, message):
    """A rank whose fit call differs (epochs, batch size, callbacks) would leave the others waiting, and one whose
    data differ (other labels, the same rows in another order: a split without a random_state) would train on a
    mixture: refused, naming what differs, and the job ends instead of hanging."""
    script = tmp_path / "mismatch.py"
    script.write_text("import sys, gpunet as gn, numpy as np\n"
                      "world = gn.distributed.init()\n"
                      "X = np.arange(24.0).reshape(12, 2); y = np.arange(12) % 3\n"
                      "kwargs = dict(epochs=3, batch_size=4)\n"
                      "if world.rank == 1:\n"
                      f"    mismatch = {mismatch!r}\n"
                      "    if mismatch == 'epochs': kwargs['epochs'] = 4\n"
                      "    if mismatch == 'batch_size': kwargs['batch_size'] = 5\n"
                      "    if mismatch == 'callbacks': kwargs['callbacks'] = [gn.callbacks.EarlyStopping('loss')]\n"
                      "    if mismatch == 'labels': y = (y + 1) % 3\n"
                      "    if mismatch == 'order': X, y = X[::-1].copy(), y[::-1].copy()\n"
                      "gn.Sequential([gn.Dense(2, 3, 'softmax')]).fit(X, y, loss='cce', distributed=world, "
                      "**kwargs)\n")
    done = launch(2, sys.executable, str(script), timeout=60)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_a_progress_bar_on_rank_0_alone_is_no_mismatch(tmp_path):
    """verbose=1 (and the command line without --quiet) shows progress on rank 0 only; the job trains."""
    script = tmp_path / "verbose.py"
    script.write_text("import gpunet as gn, numpy as np\n"
                      "world = gn.distributed.init()\n"
                      "X = np.random.default_rng(0).normal(size=(50, 5)); y = np.arange(50) % 3\n"
                      "model = gn.Sequential([gn.Dense(5, 8, 'relu'), gn.Dense(8, 3, 'softmax')], seed=0)\n"
                      "model.fit(X, y, loss='cce', epochs=2, distributed=world, verbose=2)\n"
                      f"open(f'{tmp_path}/done-{{world.rank}}', 'w').close()\n")
    done = launch(2, sys.executable, str(script), timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "done-0").exists() and (tmp_path / "done-1").exists() and done.stdout.count("Epoch 2/2") == 1


def test_world_of_one_needs_no_mpi():
    world = gn.distributed.World()
    assert (world.rank, world.size, world.local_rank) == (0, 1, 0)
    a = np.arange(3.0)
    world.allreduce_(a)
    np.testing.assert_array_equal(a, [0.0, 1.0, 2.0])
    assert world.allgather(5) == [5] and world.any(True) and not world.any(False)


def test_distributed_argument_is_checked():
    X, y = np.zeros((4, 2)), np.zeros(4)
    model = gn.Sequential([gn.Dense(2, 1)])
    with pytest.raises(TypeError, match="distributed must be a gpunet.distributed.World"):
        model.fit(X, y, distributed="mpi")
    with pytest.raises(ValueError, match="sharded"):
        model.fit(X, y, sharded=True)


@pytest.mark.slow
def test_command_line_under_mpiexec_matches_one_process(tmp_path):
    """`mpiexec -n 2 gpunet train`: rank 0's report and file equal a one-process run's (float64)."""
    args = ["-m", "gpunet", "train", "--dataset", "iris", "--device", "cpu", "--dtype", "float64", "--epochs", "15",
            "--quiet"]
    single = subprocess.run([sys.executable, *args, "--save", str(tmp_path / "one.safetensors")], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    assert single.returncode == 0, single.stderr
    both = launch(2, sys.executable, *args, "--save", str(tmp_path / "two.safetensors"), cwd=tmp_path)
    assert both.returncode == 0, both.stderr

    def report(text, name):
        return [line.replace(name, "FILE") for line in text.splitlines() if not line.startswith("trained")]

    assert report(both.stdout, "two.safetensors") == report(single.stdout, "one.safetensors")
    for a, b in zip(gn.load(tmp_path / "one.safetensors").get_weights(),
                    gn.load(tmp_path / "two.safetensors").get_weights()):
        np.testing.assert_allclose(a, b, **TOL)


def test_cupy_buffers_go_through_nccl_on_the_current_stream(monkeypatch):
    """No GPU here: fake cupy and cupy.cuda.nccl modules record the calls the real ones would get (CuPy's
    NcclCommunicator(ndev, unique_id, rank), allReduce(send, recv, count, dtype, op, stream), bcast(buf, count,
    dtype, root, stream)): the unique id comes from rank 0 over MPI, the buffer is reduced in place."""
    import types

    calls = []
    nccl = types.SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0, get_unique_id=lambda: (1, 2, 3))

    class Communicator:
        def __init__(self, ndev, uid, rank):
            calls.append(("init", ndev, uid, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):
            calls.append(("allReduce", send, recv, count, dtype, op, stream))

        def bcast(self, buf, count, dtype, root, stream):
            calls.append(("bcast", buf, count, dtype, root, stream))

    nccl.NcclCommunicator = Communicator
    cuda = types.SimpleNamespace(nccl=nccl, get_current_stream=lambda: types.SimpleNamespace(ptr=4242),
                                 Device=lambda index: contextlib.nullcontext())
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)

    class FakeComm:  # rank 1 of 2: bcast returns rank 0's object
        def bcast(self, obj, root=0):
            calls.append(("mpi-bcast", obj, root))
            return (9, 9, 9)

    world = gn.distributed.World()
    world.comm, world.rank, world.size = FakeComm(), 1, 2
    array = types.SimpleNamespace(flags=types.SimpleNamespace(c_contiguous=True), dtype=np.dtype(np.float32),
                                  size=1000, data=types.SimpleNamespace(ptr=555), device=types.SimpleNamespace(id=0))
    world.allreduce_(array)
    world.bcast_(array, root=0)
    assert calls == [("mpi-bcast", None, 0), ("init", 2, (9, 9, 9), 1), ("allReduce", 555, 555, 1000, 7, 0, 4242),
                     ("bcast", 555, 1000, 7, 0, 4242)]
