"""Data bigger than memory (issue 13 part 3): memory-mapped arrays, Parquet files and iterables of batches streamed
through fit/predict/evaluate (gpunet.sources), held to the in-memory fit (bit for bit where the order is the same),
to batches made by hand from the documented shuffling rules, to the in-memory checks' messages, and to a memory
bound measured in a child process; the CUDA double buffer is checked on the host with fake streams and events."""

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpunet as gn
from gpunet import sources
from gpunet.backend import transfer as transfer_mod

N, D, K = 500, 6, 3
FEATURES = [f"f{j}" for j in range(D)]


def same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def classifier(seed=0, dropout=0.1, device="cpu", dtype="float32"):
    return gn.Sequential([gn.Dense(D, 16, "relu", dropout=dropout), gn.Dense(16, K, "softmax")], seed=seed,
                         device=device, dtype=dtype)


def regressor(seed=0, device="cpu", dtype="float32"):
    return gn.Sequential([gn.Dense(D, 12, "tanh"), gn.Dense(12, 1)], seed=seed, device=device, dtype=dtype)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N, D))
    labels = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    target = X @ np.linspace(1, 2, D) + 0.1 * rng.standard_normal(N)
    weights = rng.uniform(0.2, 2.0, N)
    return X, labels, target, weights


def memmap(tmp_path, name, a):
    path = tmp_path / f"{name}.npy"
    np.save(path, a)
    return np.load(path, mmap_mode="r")


# -- done means: the streamed fit of an array equals the in-memory fit when the order is the same -----------------
CASES = {
    "cce-dropout-adam-shuffled": dict(kind="cce", kw=dict(optimizer="adam", batch_size=32, metrics=["accuracy"])),
    "cce-unshuffled-partial-batch": dict(kind="cce", kw=dict(optimizer="sgd", batch_size=48, shuffle=False)),
    "cce-validation-split-class-weight": dict(kind="cce", kw=dict(optimizer="adam", batch_size=40,
                                                                 validation_split=0.2, class_weight={0: 2.0},
                                                                 metrics=["accuracy", "f1"])),
    "mse-sample-weight": dict(kind="mse", kw=dict(optimizer="adam", batch_size=64, metrics=["r2"]), weights=True),
    "mse-full-batch": dict(kind="mse", kw=dict(optimizer="sgd", batch_size=None)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("wrap", ["memmap", "ArrayStream"])
def test_streamed_fit_equals_the_in_memory_fit_bit_for_bit(case, wrap, data, tmp_path):
    spec = CASES[case]
    X, labels, target, weights = data
    y = labels if spec["kind"] == "cce" else target
    sw = weights if spec.get("weights") else None
    make = classifier if spec["kind"] == "cce" else regressor
    kw = dict(loss=spec["kind"], epochs=4, **spec["kw"])
    reference = make()
    expected = reference.fit(X, y, sample_weight=sw, **kw)
    if wrap == "memmap":  # float64 on disk, float32 model: the cast happens per batch
        args = (memmap(tmp_path, "X", X), memmap(tmp_path, "y", y), None if sw is None else memmap(tmp_path, "w", sw))
        model = make()
        history = model.fit(*args[:2], sample_weight=args[2], **kw)
    else:
        model = make()
        history = model.fit(sources.ArrayStream(X, y, sw), **kw)
    assert same_weights(model, reference)
    assert history.history == expected.history
    assert model.trainer.shuffle_rng.bit_generator.state == reference.trainer.shuffle_rng.bit_generator.state


def test_streamed_fit_equals_the_in_memory_fit_on_every_namespace(device, data, tmp_path):
    """array-api-strict gets each batch by one host -> device copy (HostTransfer); the result is the in-memory one."""
    X, labels, _, _ = data
    reference = classifier(device=device, dtype="float64", dropout=0.0)
    reference.fit(X, labels, loss="cce", optimizer="adam", epochs=2, batch_size=50)
    model = classifier(device=device, dtype="float64", dropout=0.0)
    model.fit(memmap(tmp_path, "X", X), labels, loss="cce", optimizer="adam", epochs=2, batch_size=50)
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in model.get_weights()]),
                               np.concatenate([w.ravel() for w in reference.get_weights()]), rtol=0, atol=1e-12)


def test_streamed_fit_in_mixed_precision_equals_the_in_memory_one(data, tmp_path):
    pytest.importorskip("ml_dtypes")
    X, labels, _, _ = data
    reference = classifier(dropout=0.0)
    reference.fit(X, labels, loss="cce", optimizer="adam", epochs=2, batch_size=64, precision="bf16")
    model = classifier(dropout=0.0)
    model.fit(memmap(tmp_path, "X", X), labels, loss="cce", optimizer="adam", epochs=2, batch_size=64,
              precision="bf16")
    assert same_weights(model, reference)


def test_resuming_a_streamed_fit_from_a_file_equals_one_fit(data, tmp_path):
    X, labels, _, _ = data
    Xm = memmap(tmp_path, "X", X)
    whole = classifier()
    whole.fit(Xm, labels, loss="cce", optimizer="adam", epochs=4, batch_size=32)
    half = classifier()
    half.fit(Xm, labels, loss="cce", optimizer="adam", epochs=2, batch_size=32)
    half.save(tmp_path / "half.safetensors")
    resumed = gn.load(tmp_path / "half.safetensors")
    resumed.fit(Xm, labels, epochs=4, initial_epoch=2, batch_size=32)
    assert same_weights(resumed, whole)


# -- shuffled blocks and batches, against batches made by hand from the documented rules -------------------------
def hand_blocks(rng, block_sizes, buffer_blocks, batch, arrays):
    """One epoch of shuffled blocks, as the sources module docstring says: blocks in a random order, rows shuffled
    within buffers of ``buffer_blocks`` blocks (generator ``default_rng([seed, k])``), cut into ``batch`` rows."""
    starts = np.cumsum([0] + list(block_sizes))
    order = rng.permutation(len(block_sizes))
    seed = int(rng.integers(2**63))
    rows = []
    for k, i in enumerate(range(0, len(order), buffer_blocks)):
        buffer = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in order[i:i + buffer_blocks]])
        rows.append(buffer[np.random.default_rng([seed, k]).permutation(buffer.size)])
    rows = np.concatenate(rows)
    return [tuple(a[rows[s:s + batch]] for a in arrays) for s in range(0, rows.size, batch)]


@pytest.fixture
def parquet_file(data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    X, labels, target, weights = data
    table = pa.table({**{f"f{j}": X[:, j] for j in range(D)}, "label": labels, "value": target, "w": weights})
    path = tmp_path / "table.parquet"
    pq.write_table(table, path, row_group_size=60)  # 9 row groups, the last one of 20 rows
    return path


def test_parquet_unshuffled_equals_the_in_memory_fit(parquet_file, data):
    X, labels, _, weights = data
    reference = classifier()
    expected = reference.fit(X, labels, sample_weight=weights, loss="cce", optimizer="adam", epochs=3, batch_size=32,
                             shuffle=False, metrics=["accuracy"])
    model = classifier()
    stream = sources.ParquetStream(parquet_file, target="label", sample_weight="w", features=FEATURES)
    history = model.fit(stream, loss="cce", optimizer="adam", epochs=3, batch_size=32, shuffle=False,
                        metrics=["accuracy"])
    assert same_weights(model, reference) and history.history == expected.history
    assert model.feature_names == FEATURES


def test_a_folder_of_parquet_files_reads_as_one_table(parquet_file, data, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(parquet_file)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, start in enumerate((0, 130, 400)):  # part-0 (130 rows), part-1 (270), part-2 (100), in name order
        stop = {0: 130, 130: 400, 400: N}[start]
        pq.write_table(table.slice(start, stop - start), folder / f"part-{i}.parquet", row_group_size=50)
    X, labels, _, _ = data
    reference = classifier()
    reference.fit(X, labels, loss="cce", epochs=2, batch_size=32, shuffle=False)
    model = classifier()
    stream = sources.ParquetStream(folder, target="label", features=FEATURES)
    model.fit(stream, loss="cce", epochs=2, batch_size=32, shuffle=False)
    assert len(stream) == N and len(stream.blocks) == 3 + 6 + 2 and same_weights(model, reference)


def test_parquet_shuffled_blocks_follow_the_documented_order(parquet_file, data):
    X, _, target, _ = data
    model = regressor()
    rng = copy.deepcopy(model.trainer.shuffle_rng)
    model.fit(sources.ParquetStream(parquet_file, target="value", features=FEATURES, buffer_blocks=2),
              optimizer="adam", epochs=3, batch_size=25)
    sizes = [60] * 8 + [20]
    batches = [b for _ in range(3) for b in hand_blocks(rng, sizes, 2, 25, (X, target))]
    by_hand = regressor()  # the hand-made epochs, one after the other, in order
    by_hand.fit(batches, optimizer="adam", epochs=1, shuffle=False)
    assert same_weights(model, by_hand)


def test_memmap_blocks_follow_the_documented_order(data, tmp_path):
    X, labels, _, _ = data
    model = classifier(dropout=0.0)
    rng = copy.deepcopy(model.trainer.shuffle_rng)
    model.fit(sources.ArrayStream(memmap(tmp_path, "X", X), labels, shuffle="blocks", block_rows=70,
                                  buffer_blocks=3), loss="cce", optimizer="adam", epochs=2, batch_size=32)
    sizes = [70] * 7 + [10]
    batches = [b for _ in range(2) for b in hand_blocks(rng, sizes, 3, 32, (X, labels))]
    by_hand = classifier(dropout=0.0)
    by_hand.fit(batches, loss="cce", optimizer="adam", epochs=1, shuffle=False)
    assert same_weights(model, by_hand)


def batches_of(X, y, size, w=None):
    return [(X[s:s + size], y[s:s + size]) + (() if w is None else (w[s:s + size],)) for s in range(0, len(X), size)]


def test_batches_as_they_come_equal_the_unshuffled_in_memory_fit(data):
    X, labels, _, weights = data
    reference = classifier()
    expected = reference.fit(X, labels, sample_weight=weights, loss="cce", optimizer="adam", epochs=3, batch_size=32,
                             shuffle=False, metrics=["accuracy"])
    for batches in (batches_of(X, labels, 32, weights), lambda: iter(batches_of(X, labels, 32, weights))):
        model = classifier()
        history = model.fit(batches, loss="cce", optimizer="adam", epochs=3, shuffle=False, metrics=["accuracy"])
        assert same_weights(model, reference) and history.history == expected.history


class PyDatasetLike:
    """Keras's PyDataset protocol: __len__, __getitem__, on_epoch_end."""

    def __init__(self, batches):
        self.batches, self.ended, self.reads = batches, 0, []

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.batches[i]

    def on_epoch_end(self):
        self.ended += 1


def test_shuffled_list_and_pydataset_visit_their_batches_in_a_permuted_order(data):
    X, labels, _, _ = data
    batches = batches_of(X, labels, 50)
    model = classifier()
    rng = copy.deepcopy(model.trainer.shuffle_rng)
    model.fit(batches, loss="cce", optimizer="adam", epochs=3)
    by_hand = classifier()
    by_hand.fit([batches[i] for _ in range(3) for i in rng.permutation(len(batches))], loss="cce", optimizer="adam",
                epochs=1, shuffle=False)
    assert same_weights(model, by_hand)
    dataset = PyDatasetLike(batches)
    other = classifier()
    other.fit(dataset, loss="cce", optimizer="adam", epochs=3)
    assert same_weights(other, by_hand) and dataset.ended == 3 and len(dataset.reads) == 3 * len(batches)


def test_a_mixing_buffer_shuffles_rows_among_consecutive_batches(data):
    X, labels, _, _ = data
    batches = batches_of(X, labels, 50)
    model = classifier(dropout=0.0)
    rng = copy.deepcopy(model.trainer.shuffle_rng)
    model.fit(sources.BatchStream(lambda: iter(batches), buffer=3), loss="cce", optimizer="adam", epochs=2)
    by_hand = []
    for _ in range(2):
        seed = int(rng.integers(2**63))
        for k, i in enumerate(range(0, len(batches), 3)):
            group = batches[i:i + 3]
            x, y = np.concatenate([g[0] for g in group]), np.concatenate([g[1] for g in group])
            order = np.random.default_rng([seed, k]).permutation(len(x))
            x, y = x[order], y[order]
            bounds = np.cumsum([0] + [len(g[0]) for g in group])
            by_hand += [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    reference = classifier(dropout=0.0)
    reference.fit(by_hand, loss="cce", optimizer="adam", epochs=1, shuffle=False)
    assert same_weights(model, reference)


def test_generator_batches_of_unknown_number_and_size(data):
    """A generator of uneven batches: the epoch's loss is the mean over its rows, as for the same rows in memory."""
    X, _, target, _ = data
    cuts = [0, 7, 100, 101, 333, N]

    def gen():
        for a, b in zip(cuts[:-1], cuts[1:]):
            yield X[a:b], target[a:b]

    model = regressor()
    history = model.fit(gen, optimizer="sgd", epochs=2, shuffle=False, verbose=2)
    by_hand = regressor()
    for a, b in zip(cuts[:-1], cuts[1:]):
        by_hand.train_on_batch(X[a:b], target[a:b], "mse", by_hand.optimizer or gn.optim.SGD())
    # each train_on_batch reuses one optimizer, so the first epoch's weights are those of the hand-made steps
    first = regressor()
    first.fit(gen, optimizer="sgd", epochs=1, shuffle=False)
    assert same_weights(first, by_hand)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_gen_epoch_loss_is_the_row_weighted_mean_of_its_batch_losses(data):
    X, _, target, _ = data
    cuts = [0, 10, 400, N]

    def gen():
        for a, b in zip(cuts[:-1], cuts[1:]):
            yield X[a:b], target[a:b]

    model = regressor()
    optimizer = gn.optim.SGD(lr=0.0)  # lr 0: each batch loss is that of the initial weights
    history = model.fit(gen, optimizer=optimizer, epochs=1, shuffle=False)
    pred = np.asarray(model.predict(X), dtype=np.float64)[:, 0]
    expected = np.mean((pred - target) ** 2)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-6)


# -- predict / evaluate ---------------------------------------------------------------------------------------------
def test_predict_and_evaluate_stream_in_batches(data, tmp_path, parquet_file):
    X, labels, _, _ = data
    model = classifier()
    model.fit(X, labels, loss="cce", optimizer="adam", epochs=2, metrics=["accuracy"])
    Xm = memmap(tmp_path, "X", X)
    expected = model.predict(X, batch_size=64)
    assert np.array_equal(model.predict(Xm, batch_size=64), expected)
    parquet = sources.ParquetStream(parquet_file, target="label", features=FEATURES)
    assert np.array_equal(model.predict(parquet, batch_size=64), expected)
    assert np.array_equal(model.predict([X[s:s + 64] for s in range(0, N, 64)]), expected)
    assert np.array_equal(model.predict(iter([(X[s:s + 64],) for s in range(0, N, 64)])), expected)
    reference = model.evaluate(X, labels)
    for streamed in (model.evaluate(Xm, labels, batch_size=64), model.evaluate(batches_of(X, labels, 64)),
                     model.evaluate(parquet, batch_size=64)):
        assert streamed["loss"] == pytest.approx(reference["loss"], rel=1e-6)
        assert streamed["accuracy"] == reference["accuracy"]


def test_streamed_validation_data(data, tmp_path):
    X, labels, _, _ = data
    train, val = slice(0, 400), slice(400, N)
    reference = classifier()
    expected = reference.fit(X[train], labels[train], loss="cce", epochs=3, validation_data=(X[val], labels[val]),
                             metrics=["accuracy"])
    for validation_data in ((memmap(tmp_path, "Xv", X[val]), labels[val]),
                            sources.BatchStream(batches_of(X[val], labels[val], 30)),
                            lambda: iter(batches_of(X[val], labels[val], 30))):
        model = classifier()
        history = model.fit(memmap(tmp_path, "Xt", X[train]), labels[train], loss="cce", epochs=3,
                            validation_data=validation_data, metrics=["accuracy"])
        assert same_weights(model, reference)
        np.testing.assert_allclose(history.history["val_loss"], expected.history["val_loss"], rtol=1e-6)
        assert history.history["val_accuracy"] == expected.history["val_accuracy"]


# -- checks: the in-memory messages, naming the first bad row or batch; a refused fit changes nothing -------------
def refusal(fit, *args, **kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        fit(*args, **kwargs)
    return info.type, str(info.value)


BAD = {
    "nan-in-X": lambda X, y: (X.__setitem__((421, 3), np.nan), y)[1],
    "inf-in-y": lambda X, y: (y.__setitem__(377, np.inf), y)[1],
    "beyond-float32": lambda X, y: (X.__setitem__((250, 0), 1e39), y)[1],
    "class-out-of-range": lambda X, y: (y.__setitem__(480, 7.0), y)[1],
}


@pytest.mark.parametrize("bad", BAD, ids=list(BAD))
def test_memmap_checks_give_the_in_memory_message(bad, data, tmp_path, monkeypatch):
    X, labels, _, _ = data
    X, y = X.copy(), labels.astype(np.float64)
    BAD[bad](X, y)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 64 * D * 8)  # chunks of 64 rows: the bad row is in a later chunk
    expected = refusal(classifier().fit, X, y, loss="cce")
    model = classifier()
    before = model.get_weights()
    assert refusal(model.fit, memmap(tmp_path, "X", X), memmap(tmp_path, "y", y), loss="cce") == expected
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.trainer.loss is None  # not even configured


def test_stream_shape_and_weight_checks(data, tmp_path):
    X, labels, _, weights = data
    Xm = memmap(tmp_path, "X", X)
    model = classifier()
    assert refusal(model.fit, Xm, labels[:-1], loss="cce")[1] == "X has 500 samples but y has 499"
    assert refusal(model.fit, memmap(tmp_path, "X5", X[:, :5]), labels, loss="cce") == \
        refusal(model.fit, X[:, :5], labels, loss="cce")
    negative = weights.copy()
    negative[300] = -1
    assert refusal(model.fit, Xm, labels, sample_weight=negative, loss="cce") == \
        refusal(model.fit, X, labels, sample_weight=negative, loss="cce")
    assert refusal(model.fit, Xm, labels, sample_weight=np.zeros(N), loss="cce") == \
        refusal(model.fit, X, labels, sample_weight=np.zeros(N), loss="cce")
    refused = refusal(model.fit, batches_of(X, labels, 50), loss="cce", validation_split=0.2)
    assert "needs random access to the rows" in refused[1]


def test_bad_batches_are_named(data):
    X, labels, _, _ = data
    batches = batches_of(X, labels, 50)
    bad = list(batches)
    x = bad[3][0].copy()
    x[2, 1] = np.nan
    bad[3] = (x, bad[3][1])
    model = classifier()
    kind, message = refusal(model.fit, bad, loss="cce")
    assert message == "X, batch 3: x must be finite; x[2, 1] = nan"
    assert model.trainer.loss is None  # a list is checked whole before training
    kind, message = refusal(classifier().fit, lambda: iter(bad), loss="cce", shuffle=False)
    assert message == "X, batch 3: x must be finite; x[2, 1] = nan"
    wrong = [(X[:10, :4], labels[:10])]
    assert refusal(classifier().fit, wrong, loss="cce")[1] == \
        "X, batch 0: x has 4 features per sample but the model expects 6"
    assert refusal(classifier().fit, [(X[:10], labels[:10] + 5)], loss="cce")[1].startswith(
        "X, batch 0: y holds class indices, which must be in [0, 2]")
    assert "(x, y) or (x, y, sample_weight)" in refusal(classifier().fit, lambda: iter([X[:10]]), loss="cce")[1]
    one_shot = iter(batches)
    assert "read only once" in refusal(classifier().fit, one_shot, loss="cce", epochs=2)[1]
    classifier().fit(iter(batches), loss="cce", epochs=1)  # one epoch of an iterator is fine


def test_malformed_parquet_is_refused(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="is not a readable Parquet file"):
        sources.ParquetStream(path, target="y")


def test_parquet_text_columns_must_be_chosen(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "name": ["x", "y", "z"], "t": [0.0, 1.0, 0.0]}), path)
    model = gn.Sequential([gn.Dense(1, 1)], seed=0)
    with pytest.raises(TypeError, match=r"column\(s\) \['name'\] hold non-numeric values"):
        model.fit(sources.ParquetStream(path, target="t"))
    model.fit(sources.ParquetStream(path, target="t", features=["a"]))
    assert model.feature_names == ["a"]


# -- divergence: replayable streams roll back like in-memory data; batches read once go back to the epoch's start --
def test_divergence_roll_back(data, tmp_path):
    X, _, target, _ = data
    big = target * 1e18  # SGD at lr 1 diverges within the first epoch
    kw = dict(optimizer=gn.optim.SGD(lr=1.0), epochs=2, batch_size=50, shuffle=False)
    reference = regressor()
    with pytest.raises(gn.NonFiniteLossError) as expected:
        reference.fit(X, big, **{**kw, "optimizer": gn.optim.SGD(lr=1.0)})
    model = regressor()
    with pytest.raises(gn.NonFiniteLossError) as streamed:
        model.fit(memmap(tmp_path, "X", X), big, **{**kw, "optimizer": gn.optim.SGD(lr=1.0)})
    assert str(streamed.value) == str(expected.value) and same_weights(model, reference)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({**{f"f{j}": X[:, j] for j in range(D)}, "t": big}), path, row_group_size=70)
    for data_set in (batches_of(X, big, 50), PyDatasetLike(batches_of(X, big, 50)),
                     sources.ParquetStream(path, target="t")):  # random access: replayed like arrays
        model = regressor()
        with pytest.raises(gn.NonFiniteLossError) as replayed:
            model.fit(data_set, **{**kw, "optimizer": gn.optim.SGD(lr=1.0)})
        assert str(replayed.value) == str(expected.value) and same_weights(model, reference)
    start = regressor()
    once = regressor()
    with pytest.raises(gn.NonFiniteLossError) as error:
        once.fit(lambda: iter(batches_of(X, big, 50)), **{**kw, "optimizer": gn.optim.SGD(lr=1.0)})
    assert same_weights(once, start) and "the weights epoch 1 started with" in str(error.value)


# -- the CUDA double buffer, on the host: fake streams and events that log what a GPU would be asked -------------
class FakeRuntime:
    """CupyRuntime's methods on NumPy arrays; copies happen at once, and every call is logged."""

    def __init__(self):
        self.log, self.pinned_allocations, self._events = [], 0, 0

    def side_stream(self):
        return "side"

    def current_stream(self):
        return "compute"

    def event(self):
        self._events += 1
        return f"event{self._events}"

    def pinned(self, shape, dtype):
        self.pinned_allocations += 1
        return np.full(shape, np.nan, dtype=dtype)

    def device_empty(self, shape, dtype):
        return np.full(shape, np.nan, dtype=dtype)

    def record(self, event, stream):
        self.log.append(("record", event, stream))

    def wait(self, stream, event):
        self.log.append(("wait", stream, event))

    def host_wait(self, event):
        self.log.append(("host_wait", event))

    def copy(self, device, host, stream):
        np.copyto(device, host)
        self.log.append(("copy", stream, device.__array_interface__["data"][0]))


class Reader:
    """Batch b: x full of b, y full of -b; logs when each batch is read."""

    def __init__(self, count, rows=4, log=None):
        self.count, self.rows, self.log = count, rows, log

    def __call__(self, b):
        if b >= self.count:
            return None
        self.log.append(("read", b))
        rows = self.rows if b < self.count - 1 else 2  # a partial last batch
        return np.full((rows, 3), b, dtype=np.float32), np.full((rows, 1), -b, dtype=np.float32), None


def test_pinned_double_buffer_orders_copies_and_steps():
    rt = FakeRuntime()
    transfer = transfer_mod.PinnedTransfer(rt)
    backend = gn.get_backend("cpu")
    batch = sources._Prefetch(Reader(6, log=rt.log), 6, transfer, backend, "float32")
    seen = []
    for b in range(6):
        x, y, w = batch(b)
        assert np.all(x == b) and np.all(y == -b) and w is None  # the right data, whatever the slot reuse
        seen.append((x.__array_interface__["data"][0]))
        rt.log.append(("step", b))
    log = rt.log
    at = {entry: i for i, entry in enumerate(log) if entry[0] in ("read", "step")}
    assert rt.pinned_allocations == 4  # two slots of (x, y): reused for all six batches
    assert len(set(seen)) == 2  # the device buffers of two slots, in turn
    slots = transfer.slots
    for b in range(6):
        slot = slots[b % 2]
        copies = [i for i, e in enumerate(log) if e[0] == "copy"]
        if b + 1 < 6:  # batch b + 1 is read and its copy issued before step b
            assert at[("read", b + 1)] < at[("step", b)]
        # the compute stream waits for the slot's copy before the step
        waits = [i for i, e in enumerate(log) if e == ("wait", "compute", slot.copied) and i < at[("step", b)]]
        assert waits and waits[-1] > at[("read", b)]
        if b >= 2:  # slot reuse: the step that last read it (b - 2) is enqueued before the consumed event...
            read = at[("read", b)]
            record = min(i for i, e in enumerate(log) if e == ("record", slot.consumed, "compute") and i > read)
            assert record > at[("step", b - 2)]
            # ...which the side stream waits for before copying, and the host waited for the last copy out of
            # the pinned buffers before they were overwritten
            wait = next(i for i, e in enumerate(log) if e == ("wait", "side", slot.consumed) and i > record)
            assert wait < min(i for i in copies if i > read)
            assert ("host_wait", slot.copied) in log[read:record]


def test_a_replay_drops_the_batch_read_ahead_but_still_orders_its_copy():
    rt = FakeRuntime()
    transfer = transfer_mod.PinnedTransfer(rt)
    backend = gn.get_backend("cpu")
    batch = sources._Prefetch(Reader(6, log=rt.log), 6, transfer, backend, "float32")
    for b in (0, 1, 2, 0, 1, 2, 3):  # a diverged epoch's replay of its first steps
        x, y, _ = batch(b)
        assert np.all(x == b) and np.all(y == -b)
        rt.log.append(("step", b))
    log = rt.log
    ahead = log.index(("read", 3))  # read ahead of the first step 2, then dropped for the replay's batch 0
    again = log.index(("read", 0), ahead)
    slot = transfer.slots[3 % 2]  # uploads alternate between the two slots: 0, 1, 0, 1 (batch 3)...
    assert ("wait", "compute", slot.copied) in log[ahead:again]


def test_host_transfer_reads_each_batch_when_asked():
    log = []
    batch = sources._Prefetch(Reader(3, log=log), 3, transfer_mod.HostTransfer(gn.get_backend("cpu"), "float32"),
                              gn.get_backend("cpu"), "float32")
    for b in range(3):
        batch(b)
        log.append(("step", b))
    assert log == [("read", 0), ("step", 0), ("read", 1), ("step", 1), ("read", 2), ("step", 2)]


def test_a_fit_through_the_double_buffer_equals_the_in_memory_fit(data, tmp_path, monkeypatch):
    """The whole training loop through PinnedTransfer (fake CUDA calls, eager copies into reused buffers), replays
    of a diverged epoch included: the same weights as in memory."""
    X, labels, _, _ = data
    runtimes = []

    def pinned(backend, dtype):
        runtimes.append(FakeRuntime())
        return transfer_mod.PinnedTransfer(runtimes[-1])

    monkeypatch.setattr(transfer_mod, "for_backend", pinned)
    reference = classifier()
    reference.fit(X, labels, loss="cce", optimizer="adam", epochs=3, batch_size=32, validation_split=0.2)
    model = classifier()
    model.fit(memmap(tmp_path, "X", X), labels, loss="cce", optimizer="adam", epochs=3, batch_size=32,
              validation_split=0.2)
    assert same_weights(model, reference) and len(runtimes) == 2  # training and validation: two transfers
    assert runtimes[0].pinned_allocations == 4


@pytest.mark.gpu
def test_streamed_fit_on_a_gpu_matches_the_cpu(data, tmp_path):
    ok, why = gn.cuda_available()
    if not ok:
        pytest.skip(f"no usable GPU: {why}")
    X, labels, _, _ = data
    cpu = classifier(dtype="float64", dropout=0.0)
    cpu.fit(X, labels, loss="cce", optimizer="adam", epochs=3, batch_size=32)
    gpu = classifier(device="cuda", dtype="float64", dropout=0.0)
    gpu.fit(memmap(tmp_path, "X", X), labels, loss="cce", optimizer="adam", epochs=3, batch_size=32)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


# -- done means: a memory-mapped file several times larger than a memory cap, and the peak stays under it ---------
CHILD = textwrap.dedent("""
    import json, sys, tracemalloc
    import numpy as np
    import gpunet as gn

    def anon():  # resident anonymous memory (RssAnon): what the process allocated, not the file's page cache
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    mode, folder = sys.argv[1], sys.argv[2]
    X = np.load(folder + "/X.npy", mmap_mode="r")
    y = np.load(folder + "/y.npy", mmap_mode="r")
    if mode == "in-memory":
        X, y = np.array(X), np.array(y)
    model = gn.Sequential([gn.Dense(X.shape[1], 32, "relu"), gn.Dense(32, 4, "softmax")], seed=0)
    samples = []

    class Probe(gn.callbacks.Callback):
        def on_batch_end(self, batch, logs):
            if batch % 20 == 0:
                samples.append(anon())

    base = anon()
    tracemalloc.start()
    history = model.fit(X, y, loss="cce", optimizer="adam", epochs=1, batch_size=256, callbacks=[Probe()],
                        metrics=["accuracy"])
    scores = model.evaluate(X, y, batch_size=2048)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"traced_peak": peak, "anon_growth": max(samples) - base, "loss": history.history["loss"][0],
                      "accuracy": scores["accuracy"]}))
""")


def test_training_from_a_memmap_six_times_a_memory_cap_stays_under_it(tmp_path):
    """A 48 MiB float32 file, a cap of 8 MiB: the streamed fit (and a streamed evaluate) allocates at most a few
    batches, chunks and the row order (tracemalloc peak: every NumPy allocation; RssAnon sampled during the epoch).
    The same measurement of the in-memory fit exceeds the file's size, so it does see the data when it is loaded."""
    cap = 8 << 20
    n, d = 196_608, 64  # 48 MiB of float32
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for start in range(0, n, 32768):
        X[start:start + 32768] = rng.standard_normal((32768, d), dtype=np.float32)
    X.flush()
    np.save(tmp_path / "y.npy", rng.integers(0, 4, n))
    size = (tmp_path / "X.npy").stat().st_size
    assert size >= 6 * cap

    def child(mode):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(tmp_path)], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    streamed = child("streamed")
    assert streamed["traced_peak"] < cap, streamed
    assert streamed["anon_growth"] < cap, streamed
    loaded = child("in-memory")
    assert loaded["traced_peak"] > size, loaded
    assert streamed["loss"] == loaded["loss"] and streamed["accuracy"] == loaded["accuracy"]
