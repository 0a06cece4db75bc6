"""Saving and loading (``gpunet.io``): round trips on every namespace, across devices, exact resumption of training,
a plain safetensors file, the metadata, errors for every kind of bad file, and atomic writes."""

import ast
import hashlib
import json
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
from gpunet import io as gio

safetensors_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402

rng0 = np.random.default_rng(0)
X = rng0.normal(size=(40, 4))
LABELS = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)  # 3 classes
Y_REG = X @ rng0.normal(size=(4, 2)) + 0.1


def classifier(device="cpu", dtype="float32", seed=0, **kw):
    layers = [gn.Dense(4, 6, gn.activations.LeakyReLU(0.2)), gn.Dense(6, 5, gn.activations.ELU(0.5), init="he_normal"),
              gn.Dense(5, 3, "softmax")]
    return gn.Sequential(layers, device=device, dtype=dtype, seed=seed, **kw)


def regressor(device="cpu", dtype="float64", seed=3):
    return gn.Sequential([gn.Dense(4, 8, "tanh"), gn.Dense(8, 2)], device=device, dtype=dtype, seed=seed)


def trained(device="cpu", dtype="float32", optimizer=None, epochs=2):
    model = classifier(device, dtype)
    model.fit(X, LABELS, loss="cce", optimizer=optimizer or gn.optim.Adam(lr=0.01), epochs=epochs, batch_size=16,
              metrics=["accuracy"])
    return model


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def read_file(path):
    """``(tensors, gpunet metadata dict)`` of a saved file, read with the safetensors library itself."""
    tensors = safetensors_numpy.load_file(str(path))
    with safe_open(str(path), "np") as handle:
        meta = json.loads(handle.metadata()["gpunet"])
    return tensors, meta


def rewrite(path, tensors=None, meta=None, checksums=True):
    """Write a (doctored) gpunet file: ``tensors`` and ``meta`` as given, checksums recomputed unless False."""
    meta = dict(meta)
    if checksums:
        meta["checksums"] = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                             for k, v in tensors.items()}
    safetensors_numpy.save_file(tensors, str(path), metadata={"gpunet": json.dumps(meta)})


# -- round trips ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_on_every_namespace(device, backend, tmp_path, dtype):
    model = trained(device, dtype)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = gn.load(path, device=device)
    assert loaded.device == model.device and loaded.dtype == dtype
    assert loaded.seed == model.seed and loaded.fused == model.fused
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(gn.to_numpy(loaded.predict(X)), gn.to_numpy(model.predict(X)))
    assert [repr(layer) for layer in loaded.layers] == [repr(layer) for layer in model.layers]
    assert [layer.init for layer in loaded.layers] == ["auto", "he_normal", "auto"]
    assert loaded.layers[0].activation == gn.activations.LeakyReLU(0.2)
    assert loaded.layers[1].activation == gn.activations.ELU(0.5)
    assert repr(loaded.loss) == repr(model.loss) and [m.name for m in loaded.metrics] == ["accuracy"]
    assert repr(loaded.optimizer) == repr(model.optimizer) and loaded.optimizer.steps == model.optimizer.steps
    assert loaded.evaluate(X, LABELS) == model.evaluate(X, LABELS)
    # the optimizer state lives on the device and belongs to the loaded model
    for saved, restored in zip(model.optimizer.state, loaded.optimizer.state):
        assert sorted(restored) == sorted(saved)
        for k in saved:
            if saved[k] is None:
                assert restored[k] is None
                continue
            assert backend.owns(restored[k])
            assert gn.to_numpy(restored[k]).tobytes() == gn.to_numpy(saved[k]).tobytes()
    assert loaded.optimizer._model() is loaded and loaded.optimizer._backend == loaded.backend
    assert loaded.trainer.shuffle_rng.bit_generator.state == model.trainer.shuffle_rng.bit_generator.state


def test_cpu_to_device_and_back(device, backend, tmp_path):
    cpu = trained("cpu", "float64", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9))
    cpu.save(tmp_path / "cpu.safetensors")
    on_device = gn.load(tmp_path / "cpu.safetensors", device=device)
    assert on_device.device == backend.label and all(backend.owns(p) for p in on_device.parameters())
    assert_same_weights(cpu, on_device)
    np.testing.assert_allclose(gn.to_numpy(on_device.predict(X)), gn.to_numpy(cpu.predict(X)), rtol=1e-12,
                               atol=1e-12)
    on_device.fit(X, LABELS, epochs=1, batch_size=16)  # the restored state steps on the device
    assert on_device.optimizer.steps == cpu.optimizer.steps + 3
    on_device.save(tmp_path / "device.safetensors")
    back = gn.load(tmp_path / "device.safetensors")
    assert back.device == "cpu" and isinstance(back.parameters()[0], np.ndarray)
    assert_same_weights(on_device, back)
    assert back.optimizer.steps == on_device.optimizer.steps
    assert all(isinstance(s["momentum_buffer"], np.ndarray) for s in back.optimizer.state)


def test_load_accepts_str_pathlike_and_any_suffix(tmp_path):
    model = regressor()
    for path in (str(tmp_path / "a.safetensors"), tmp_path / "b.gpunet", tmp_path / "no_suffix"):
        gn.save(model, path)
        assert_same_weights(model, gn.load(path))
        assert_same_weights(model, gn.load(os.fspath(path)))


def test_huge_seed_is_json_safe(tmp_path):
    model = regressor(seed=2**64 + 7)
    model.save(tmp_path / "m.safetensors")
    assert read_file(tmp_path / "m.safetensors")[1]["seed"] == str(2**64 + 7)
    loaded = gn.load(tmp_path / "m.safetensors")
    assert loaded.seed == 2**64 + 7
    assert_same_weights(model, loaded)


def test_untrained_model_saves_without_loss_or_optimizer(tmp_path):
    model = regressor(seed=None)
    model.save(tmp_path / "m.safetensors")
    tensors, meta = read_file(tmp_path / "m.safetensors")
    assert sorted(tensors) == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    assert meta["loss"] is None and meta["metrics"] == [] and meta["optimizer"] is None and meta["seed"] is None
    loaded = gn.load(tmp_path / "m.safetensors")
    assert loaded.loss is None and loaded.optimizer is None and loaded.seed is None
    assert loaded.trainer.shuffle_rng.bit_generator.state == model.trainer.shuffle_rng.bit_generator.state
    assert_same_weights(model, loaded)


def test_losses_with_arguments_round_trip(tmp_path):
    for loss, y in ((gn.losses.Huber(delta=2.5), Y_REG), (gn.losses.MAE(), Y_REG)):
        model = regressor()
        model.fit(X, y, loss=loss, epochs=1, metrics=["r2", "mae"])
        model.save(tmp_path / "r.safetensors")
        loaded = gn.load(tmp_path / "r.safetensors")
        assert repr(loaded.loss) == repr(loss) and [m.name for m in loaded.metrics] == ["r2", "mae"]
        assert loaded.evaluate(X, y) == model.evaluate(X, y)
    model = gn.Sequential([gn.Dense(4, 3, "relu"), gn.Dense(3, 1)], seed=1)
    model.fit(X, LABELS == 1, loss=gn.losses.BinaryCrossEntropy(from_logits=True), metrics="accuracy", epochs=1)
    model.save(tmp_path / "b.safetensors")
    loaded = gn.load(tmp_path / "b.safetensors")
    assert loaded.loss.from_logits is True and loaded.metrics[0].threshold == 0.0
    assert loaded.evaluate(X, LABELS == 1) == model.evaluate(X, LABELS == 1)


def test_model_metadata_travels_with_the_file(tmp_path):
    model = regressor()
    model.metadata = {"cli": {"task": "regression", "features": ["a", "b", "c", "d"]}, "note": "é"}
    model.save(tmp_path / "m.safetensors")
    assert gn.load(tmp_path / "m.safetensors").metadata == model.metadata
    model.metadata = {"bad": object()}
    with pytest.raises(TypeError, match="metadata must be JSON"):
        model.save(tmp_path / "other.safetensors")
    assert not (tmp_path / "other.safetensors").exists()


# -- resuming -------------------------------------------------------------------------------------------------------
OPTIMIZERS = [
    lambda: gn.optim.SGD(lr=0.05, momentum=0.9),
    lambda: gn.optim.SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
    lambda: gn.optim.Adam(lr=0.01),
    lambda: gn.optim.Adam(lr=0.01, amsgrad=True),
    lambda: gn.optim.AdamW(lr=0.01),
    lambda: gn.optim.RMSprop(lr=0.01, momentum=0.5, centered=True),
    lambda: gn.optim.Adagrad(lr=0.05, lr_decay=0.01),
]
OPT_IDS = ["sgd-momentum", "sgd-nesterov", "adam", "adam-amsgrad", "adamw", "rmsprop", "adagrad"]


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS, ids=OPT_IDS)
def test_resumed_training_matches_uninterrupted_training_bitwise(tmp_path, make_optimizer):
    straight = classifier()
    straight.fit(X, LABELS, loss="cce", optimizer=make_optimizer(), epochs=4, batch_size=8, shuffle=True)

    first = classifier()
    first.fit(X, LABELS, loss="cce", optimizer=make_optimizer(), epochs=2, batch_size=8, shuffle=True)
    first.save(tmp_path / "ckpt.safetensors")
    resumed = gn.load(tmp_path / "ckpt.safetensors")
    resumed.fit(X, LABELS, epochs=2, batch_size=8, shuffle=True)  # loss and optimizer: the saved ones
    assert_same_weights(straight, resumed)
    assert resumed.optimizer.steps == straight.optimizer.steps == 20

    # the control: the same resumption with a fresh shuffling generator (or fresh optimizer state) differs
    control = gn.load(tmp_path / "ckpt.safetensors")
    control.trainer.shuffle_rng = np.random.default_rng(0)
    control.fit(X, LABELS, epochs=2, batch_size=8)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(straight.get_weights(), control.get_weights()))
    no_state = gn.load(tmp_path / "ckpt.safetensors")
    no_state.optimizer.reset()
    no_state.fit(X, LABELS, epochs=2, batch_size=8)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(straight.get_weights(), no_state.get_weights()))


def test_resuming_with_an_optimizer_name_warns_that_it_starts_afresh(tmp_path):
    first = classifier()
    first.fit(X, LABELS, loss="cce", optimizer="adam", epochs=2, batch_size=8)
    first.save(tmp_path / "ckpt.safetensors")
    continued = gn.load(tmp_path / "ckpt.safetensors")
    continued.fit(X, LABELS, epochs=1, batch_size=8)  # no warning: the saved Adam goes on
    renamed = gn.load(tmp_path / "ckpt.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="epochs must be a positive integer"):  # refused: nothing to say
            renamed.fit(X, LABELS, epochs=0, batch_size=8, optimizer="adam")
    with pytest.warns(UserWarning, match=r"optimizer='adam' starts a new Adam \(step 0, no state\); the last fit's "
                                         r"Adam at step 10 is not continued") as record:
        renamed.fit(X, LABELS, epochs=1, batch_size=8, optimizer="adam")
    assert record[0].filename == __file__
    assert renamed.optimizer.steps == 5 and continued.optimizer.steps == 15
    assert any(a.tobytes() != b.tobytes() for a, b in zip(continued.get_weights(), renamed.get_weights()))
    fresh = classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.fit(X, LABELS, loss="cce", optimizer="adam", epochs=1, batch_size=8)  # nothing to continue: silent
        continued.fit(X, LABELS, epochs=1, batch_size=8, optimizer=gn.optim.Adam())  # an object: deliberate


def test_resume_on_every_namespace(device, tmp_path):
    def run(model, epochs):
        model.fit(X, Y_REG, epochs=epochs, batch_size=16)
        return model

    straight = regressor(device)
    straight.fit(X, Y_REG, loss="huber", optimizer=gn.optim.Adam(lr=0.01), epochs=3, batch_size=16)
    first = regressor(device)
    first.fit(X, Y_REG, loss="huber", optimizer=gn.optim.Adam(lr=0.01), epochs=1, batch_size=16)
    first.save(tmp_path / "ckpt.safetensors")
    resumed = run(gn.load(tmp_path / "ckpt.safetensors", device=device), 2)
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in resumed.get_weights()]),
                               np.concatenate([w.ravel() for w in straight.get_weights()]), rtol=1e-12, atol=1e-14)
    # saved on this namespace, resumed on the CPU
    cpu = run(gn.load(tmp_path / "ckpt.safetensors", device="cpu"), 2)
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in cpu.get_weights()]),
                               np.concatenate([w.ravel() for w in straight.get_weights()]), rtol=1e-9, atol=1e-12)


def test_optimizer_argument(tmp_path):
    model = trained(optimizer=gn.optim.SGD(lr=0.05, momentum=0.9))
    model.save(tmp_path / "none.safetensors", optimizer=False)
    tensors, meta = read_file(tmp_path / "none.safetensors")
    assert meta["optimizer"] is None and not any(k.startswith("optimizer.") for k in tensors)
    assert gn.load(tmp_path / "none.safetensors").optimizer is None

    fresh = gn.optim.RMSprop(lr=0.003)  # never stepped: hyperparameters only
    gn.save(model, tmp_path / "fresh.safetensors", optimizer=fresh)
    tensors, meta = read_file(tmp_path / "fresh.safetensors")
    assert meta["optimizer"]["state"] is None and meta["optimizer"]["steps"] == 0
    loaded = gn.load(tmp_path / "fresh.safetensors")
    assert repr(loaded.optimizer) == repr(fresh) and loaded.optimizer.state is None

    other = classifier(seed=5)  # an optimizer that last stepped another model: its state is not this model's
    gn.save(other, tmp_path / "other.safetensors", optimizer=model.optimizer)
    _, meta = read_file(tmp_path / "other.safetensors")
    assert meta["optimizer"]["state"] is None and meta["optimizer"]["steps"] == 0

    with pytest.raises(TypeError, match="optimizer must be a gpunet.optim.Optimizer"):
        model.save(tmp_path / "x.safetensors", optimizer="adam")


def test_custom_components(tmp_path):
    class MySGD(gn.optim.SGD):
        pass

    class Cube(gn.activations.Activation):
        name = "cube"

    model = regressor()
    model.fit(X, Y_REG, optimizer=MySGD(lr=0.01), epochs=1)
    with pytest.raises(TypeError, match="MySGD is not one of gpunet's optimizers.*optimizer=False"):
        model.save(tmp_path / "m.safetensors", optimizer=model.optimizer)
    for save in (model.save, lambda path: gn.save(model, path)):  # the warning points at this file's call
        with pytest.warns(UserWarning, match="saving the model without it") as record:
            save(tmp_path / "m.safetensors")
        assert len(record) == 1 and record[0].filename == __file__
    assert gn.load(tmp_path / "m.safetensors").optimizer is None
    model.loss, model.optimizer = Cube(), None  # not a loss at all: io cannot rebuild it, so it warns and drops it
    with pytest.warns(UserWarning, match="the file will not hold it") as record:
        model.save(tmp_path / "m.safetensors")
    assert len(record) == 1 and record[0].filename == __file__
    cube = gn.Sequential([gn.Dense(4, 2, Cube())])
    with pytest.raises(TypeError, match="is not one of gpunet's activations"):
        cube.save(tmp_path / "cube.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_optimizer_state_dict_binds_to_the_model():
    model = trained(optimizer=gn.optim.Adam(lr=0.01))
    sd = model.optimizer.state_dict()
    assert sd["steps"] == 6 and sd["hyperparameters"]["lr"] == 0.01
    assert all(isinstance(v, np.ndarray) for s in sd["state"] for v in s.values() if v is not None)
    twin = classifier()
    twin.set_weights(model.get_weights())
    opt = gn.optim.Adam()
    opt.load_state_dict(sd, twin)
    assert opt.lr == 0.01 and opt.steps == 6 and opt._model() is twin
    twin.fit(X, LABELS, loss="cce", optimizer=opt, epochs=1, batch_size=16)
    model.fit(X, LABELS, epochs=1, batch_size=16)
    assert opt.steps == 9  # continued, not restarted
    with pytest.raises(ValueError, match="a Adam state cannot be loaded into SGD"):
        gn.optim.SGD().load_state_dict(sd, twin)
    with pytest.raises(ValueError, match=r"optimizer state 0 holds \['exp_avg'\]; Adam\(.*\) keeps \['exp_avg', "):
        gn.optim.Adam().load_state_dict(dict(sd, state=[{"exp_avg": None}] * 6), twin)
    with pytest.raises(ValueError, match="the optimizer state has 2 entries; the model has 6 parameters"):
        gn.optim.Adam().load_state_dict(dict(sd, state=sd["state"][:2]), twin)


# -- the file -------------------------------------------------------------------------------------------------------
def test_file_is_plain_safetensors_with_named_tensors(tmp_path):
    model = trained(optimizer=gn.optim.Adam(lr=0.01))
    path = tmp_path / "model.safetensors"
    model.save(path)
    tensors, _ = read_file(path)
    expected = [f"layers.{i}.{p}" for i in range(3) for p in "Wb"]
    expected += [f"optimizer.{j}.{k}" for j in range(6) for k in ("exp_avg", "exp_avg_sq")]
    assert sorted(tensors) == sorted(expected)
    for name, w in zip(expected, model.get_weights()):
        assert tensors[name].dtype == np.float32 and tensors[name].tobytes() == w.tobytes()
    np.testing.assert_array_equal(tensors["optimizer.4.exp_avg"], gn.to_numpy(model.optimizer.state[4]["exp_avg"]))


def test_torch_reads_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = trained()
    model.save(tmp_path / "model.safetensors")
    tensors = safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    assert tensors["layers.0.W"].dtype == torch.float32 and tuple(tensors["layers.0.W"].shape) == (4, 6)
    # the same forward pass in torch (LeakyReLU 0.2, ELU 0.5, softmax)
    x = torch.tensor(X, dtype=torch.float32)
    h = torch.nn.functional.leaky_relu(x @ tensors["layers.0.W"] + tensors["layers.0.b"], 0.2)
    h = torch.nn.functional.elu(h @ tensors["layers.1.W"] + tensors["layers.1.b"], 0.5)
    p = torch.softmax(h @ tensors["layers.2.W"] + tensors["layers.2.b"], dim=-1)
    np.testing.assert_allclose(p.numpy(), gn.to_numpy(model.predict(X)), rtol=1e-5, atol=1e-6)


def test_metadata_contents(tmp_path):
    model = trained(optimizer=gn.optim.SGD(lr=0.05, momentum=0.9, nesterov=True))
    model.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "np") as handle:
        assert list(handle.metadata()) == ["gpunet"]
        text = handle.metadata()["gpunet"]
    meta = json.loads(text)
    assert meta["format"] == "gpunet.Sequential" and meta["format_version"] == 1
    assert meta["gpunet_version"] == gn.__version__
    assert meta["dtype"] == "float32" and meta["seed"] == 0 and meta["fused"] is model.fused
    assert meta["layers"] == [
        {"in_features": 4, "out_features": 6, "activation": {"name": "leaky_relu", "args": {"negative_slope": 0.2}},
         "init": "auto", "dropout": 0.0},
        {"in_features": 6, "out_features": 5, "activation": {"name": "elu", "args": {"alpha": 0.5}},
         "init": "he_normal", "dropout": 0.0},
        {"in_features": 5, "out_features": 3, "activation": {"name": "softmax", "args": {}}, "init": "auto",
         "dropout": 0.0},
    ]
    assert meta["loss"] == {"name": "cce", "args": {"from_logits": False}}
    assert meta["metrics"] == [{"name": "accuracy", "args": {"binary": None, "threshold": 0.5}}]
    assert meta["optimizer"] == {
        "class": "SGD", "name": "sgd", "steps": 6,
        "hyperparameters": {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.0},
        "state": [{"momentum_buffer": True}] * 6, "initial_lr": None,
    }
    rng_state = meta["shuffle_rng"]
    assert rng_state["bit_generator"] == "PCG64"
    assert int(rng_state["state"]["state"]) == model.trainer.shuffle_rng.bit_generator.state["state"]["state"]
    # JSON-safe: no integer a double cannot hold exactly
    ints = [int(v) for v in re.findall(r"(?<![\w.\"])-?\d+(?![\w.\"])", text)]
    assert all(abs(v) < 2**53 for v in ints)
    assert sorted(meta["checksums"]) == sorted(read_file(tmp_path / "m.safetensors")[0])


# -- bad files ------------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    """A trained model saved with its Adam state: ``(path, tensors, metadata)``."""
    path = tmp_path / "model.safetensors"
    trained(optimizer=gn.optim.Adam(lr=0.01)).save(path)
    tensors, meta = read_file(path)
    return path, tensors, meta


def assert_load_fails(path, exc, match):
    with pytest.raises(exc, match=match) as info:
        gn.load(path)
    assert str(path) in str(info.value)  # the message names the file
    return info.value


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        gn.load(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1, -100])
def test_truncated_file(saved, keep):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[:keep if keep >= 0 else len(data) + keep])
    assert_load_fails(path, ValueError, "truncated|too short")


def test_corrupted_bytes(saved, tmp_path):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    flipped = bytearray(data)
    flipped[-3] ^= 0x40  # inside the last tensor's data: caught by its checksum
    path.write_bytes(bytes(flipped))
    assert_load_fails(path, ValueError, "does not match its SHA-256 checksum: the file is corrupted")

    header_len = int.from_bytes(data[:8], "little")
    broken = bytearray(data)
    broken[8 + header_len // 2] = 0xFF  # inside the JSON header
    path.write_bytes(bytes(broken))
    assert_load_fails(path, ValueError, "corrupted")

    broken = bytearray(data)
    broken[:8] = (10**9).to_bytes(8, "little")  # a header length no file has
    path.write_bytes(bytes(broken))
    assert_load_fails(path, ValueError, "corrupted")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_load_fails(garbage, ValueError, "not a gpunet model file|not a safetensors file|truncated|corrupted")
    text = tmp_path / "notes.safetensors"
    text.write_text("just some text, not a model at all\n" * 10)
    assert_load_fails(text, ValueError, "corrupted|truncated")


def test_foreign_safetensors_file(tmp_path, saved):
    foreign = tmp_path / "foreign.safetensors"
    safetensors_numpy.save_file({"weight": np.ones((2, 2), np.float32)}, str(foreign))
    assert_load_fails(foreign, ValueError, r"a safetensors file but not a gpunet model.*\['weight'\]")
    safetensors_numpy.save_file({"weight": np.ones((2, 2), np.float32)}, str(foreign), metadata={"format": "pt"})
    assert_load_fails(foreign, ValueError, "not a gpunet model")
    _, tensors, meta = saved
    rewrite(foreign, tensors, dict(meta, format="keras.Sequential"))
    assert_load_fails(foreign, ValueError, "not a gpunet model: its metadata names the format 'keras.Sequential'")
    safetensors_numpy.save_file(tensors, str(foreign), metadata={"gpunet": "{not json"})
    assert_load_fails(foreign, ValueError, "gpunet metadata is not valid JSON")


def test_newer_format_version(saved):
    path, tensors, meta = saved
    rewrite(path, tensors, dict(meta, format_version=2, gpunet_version="9.0"))
    err = assert_load_fails(path, ValueError, "format version 2")
    assert "gpunet 9.0" in str(err) and "reads versions up to 1" in str(err) and "upgrade gpunet" in str(err)
    rewrite(path, tensors, dict(meta, format_version="1"))
    assert_load_fails(path, ValueError, "invalid format_version '1'")


def test_missing_and_extra_tensors(saved):
    path, tensors, meta = saved
    rewrite(path, {k: v for k, v in tensors.items() if k != "layers.1.b"}, meta)
    assert_load_fails(path, ValueError, r"tensor\(s\) \['layers.1.b'\] are missing")
    rewrite(path, {k: v for k, v in tensors.items() if k != "optimizer.3.exp_avg_sq"}, meta)
    assert_load_fails(path, ValueError, r"\['optimizer.3.exp_avg_sq'\] are missing")
    rewrite(path, dict(tensors, **{"layers.3.W": np.zeros((3, 2), np.float32)}), meta)
    assert_load_fails(path, ValueError, r"unexpected tensor\(s\) \['layers.3.W'\]")


def test_wrong_shapes_and_dtypes(saved):
    path, tensors, meta = saved
    rewrite(path, dict(tensors, **{"layers.0.W": np.ascontiguousarray(tensors["layers.0.W"].T)}), meta)
    assert_load_fails(path, ValueError, r"tensor 'layers.0.W' has shape \(6, 4\) but the architecture needs \(4, 6\)")
    rewrite(path, dict(tensors, **{"optimizer.2.exp_avg": tensors["optimizer.2.exp_avg"][:3]}), meta)
    assert_load_fails(path, ValueError, r"'optimizer.2.exp_avg' has shape \(3, 5\) but the architecture needs")
    layers = [dict(spec) for spec in meta["layers"]]
    layers[0]["out_features"] = 7  # the metadata disagrees with the tensors (and the next layer)
    rewrite(path, tensors, dict(meta, layers=layers))
    assert_load_fails(path, ValueError, "invalid architecture in the gpunet metadata: layer sizes do not chain")
    rewrite(path, dict(tensors, **{"layers.2.b": tensors["layers.2.b"].astype(np.float64)}), meta)
    assert_load_fails(path, ValueError, "tensor 'layers.2.b' has dtype float64 but the model's dtype is float32")
    rewrite(path, tensors, dict(meta, dtype="float16"))
    assert_load_fails(path, ValueError, "unknown dtype 'float16'")
    rewrite(path, tensors, dict(meta, precision="int8"))
    assert_load_fails(path, ValueError, "unknown precision 'int8' in the metadata")
    rewrite(path, tensors, dict(meta, grad_scaler={"scale": -1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                   "growth_interval": 2000, "_growth_tracker": 0}))
    assert_load_fails(path, ValueError, "invalid loss scaler in the gpunet metadata")


@pytest.mark.parametrize("name, value", [("layers.1.W", np.nan), ("layers.2.b", np.inf),
                                         ("optimizer.0.exp_avg_sq", -np.inf)])
def test_non_finite_tensors(saved, name, value):
    path, tensors, meta = saved
    bad = tensors[name].copy()
    bad.flat[1] = value
    rewrite(path, dict(tensors, **{name: bad}), meta)
    assert_load_fails(path, ValueError, rf"tensor '{name}' holds NaN or infinity \(at \[[\d, ]+\]: -?(nan|inf)\)")


def test_saving_non_finite_weights_is_refused(tmp_path):
    model = regressor()
    w = model.get_weights()
    model.layers[0].W[0, 0] = np.nan  # as a diverged run could leave them
    with pytest.raises(ValueError, match=r"layers.0.W holds NaN or infinity \(at \[0, 0\]: nan\)"):
        model.save(tmp_path / "nan.safetensors")
    assert os.listdir(tmp_path) == []
    model.set_weights(w)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["layers"][1]["activation"].update(name="swishy"),
     r"unknown name 'swishy' for layer 1's activation in the gpunet metadata; this gpunet knows \['elu'"),
    (lambda m: m["layers"][0]["activation"]["args"].update(negative_slope=2.0),
     "invalid layer 0's activation in the gpunet metadata: negative_slope must be a number in"),
    (lambda m: m["layers"][0].update(init="orthogonal"), "invalid layer 0 in the gpunet metadata: unknown init"),
    (lambda m: m["loss"].update(name="hinge"), r"unknown name 'hinge' for loss.*\['bce', 'cce', 'huber'"),
    (lambda m: m["loss"].update(args={"delta": 1.0}), "invalid loss in the gpunet metadata"),
    (lambda m: m["metrics"][0].update(name="auc"), "unknown name 'auc' for metric"),
    (lambda m: m["optimizer"].update(name="lbfgs", **{"class": "LBFGS"}),
     r"unknown optimizer 'LBFGS' in the gpunet metadata; this gpunet knows \['adagrad', 'adam'"),
    (lambda m: m["optimizer"]["hyperparameters"].update(lr=-1.0),
     r"invalid optimizer in the gpunet metadata: lr must be in \[0.0, inf\); received lr=-1.0"),
    (lambda m: m["optimizer"].update(steps=-2), "invalid optimizer state in the gpunet metadata: steps must be"),
    (lambda m: m["optimizer"]["state"][0].update(momentum_buffer=False),
     r"invalid optimizer state in the gpunet metadata: optimizer state 0 holds \['exp_avg', 'exp_avg_sq', "
     r"'max_exp_avg_sq', 'momentum_buffer'\]; Adam\(.*\) keeps"),
    (lambda m: m["shuffle_rng"].update(bit_generator="os.system"), "unknown random bit generator 'os.system'"),
    (lambda m: m["shuffle_rng"]["state"].pop("inc"), "random generator state|malformed"),
    (lambda m: m.pop("layers"), "malformed gpunet metadata \\(KeyError: 'layers'\\)"),
    (lambda m: m.update(seed="zero"), "invalid architecture in the gpunet metadata: seed must be"),
])
def test_bad_metadata(saved, edit, match):
    path, tensors, meta = saved
    meta = json.loads(json.dumps(meta))
    edit(meta)
    rewrite(path, tensors, meta)
    assert_load_fails(path, ValueError, match)


def test_device_errors_are_not_blamed_on_the_file(saved):
    with pytest.raises(ValueError, match="device must be 'cpu'") as info:
        gn.load(saved[0], device="tpu")
    assert str(saved[0]) not in str(info.value)


# -- atomic writes --------------------------------------------------------------------------------------------------
def _half_then_fail(handle, data):
    handle.write(data[:len(data) // 2])
    raise OSError(28, "No space left on device")


def _raise(*args, **kwargs):
    raise OSError(5, "Input/output error")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("target, replacement", [
    ("gpunet.io._write_bytes", _half_then_fail),
    ("os.fsync", _raise),
    ("os.replace", _raise),
    ("os.replace", _interrupt),
], ids=["disk-full-halfway", "fsync", "replace", "interrupted"])
def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, target, replacement):
    path = tmp_path / "model.safetensors"
    old = trained(optimizer=gn.optim.SGD(lr=0.05, momentum=0.9))
    old.save(path)
    before = path.read_bytes()
    new = trained(optimizer=gn.optim.Adam(lr=0.02), epochs=3)
    monkeypatch.setattr(target, replacement)
    with pytest.raises((OSError, KeyboardInterrupt)):
        new.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left behind
    assert path.read_bytes() == before
    loaded = gn.load(path)
    assert_same_weights(old, loaded)
    assert isinstance(loaded.optimizer, gn.optim.SGD)
    new.save(path)  # and a save that succeeds replaces it
    assert_same_weights(new, gn.load(path))
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(gio, "_write_bytes", _half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        regressor().save(tmp_path / "model.safetensors")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_save_keeps_permissions_and_follows_the_umask(tmp_path):
    path = tmp_path / "model.safetensors"
    regressor().save(path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0o600
    path.chmod(0o640)
    regressor(seed=9).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_save_into_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist"):
        regressor().save(tmp_path / "missing" / "model.safetensors")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        regressor().save(42)


# -- no code execution ----------------------------------------------------------------------------------------------
def test_no_pickle_anywhere():
    package = Path(gn.__file__).parent
    tree = ast.parse((package / "io.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
    for source in package.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert not re.search(r"allow_pickle\s*=\s*True", text), source
        if source.name == "io.py":
            assert "np.load(" not in text and "pickle.load" not in text


def test_pickle_and_deepcopy_round_trip_and_resume_exactly():
    import copy
    import pickle

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    model = gn.Sequential([gn.Dense(3, 5, "relu"), gn.Dense(5, 2, "softmax")], seed=0)
    model.fit(X, y, loss="cce", optimizer="adam", epochs=2, batch_size=8)
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
    for m in [model, *copies]:
        m.fit(X, y, epochs=2, batch_size=8)  # continues with the restored optimizer state and shuffling
    for m in copies:
        for a, b in zip(model.get_weights(), m.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_copies_keep_what_the_file_format_refuses():
    """deepcopy and pickle copy the object as it is: an infinite weight, NaN optimizer state, dropout generator state
    and metadata (the file format refuses non-finite tensors; a copy is not a file)."""
    import copy
    import pickle

    rng = np.random.default_rng(0)
    model = gn.Sequential([gn.Dense(3, 5, "tanh", dropout=0.2), gn.Dense(5, 1)], dtype="float64", seed=0)
    model.fit(rng.normal(size=(16, 3)), rng.normal(size=16), loss="mse", optimizer="adam", epochs=1, batch_size=4)
    model.metadata = {"note": "kept"}
    model.layers[1].W[0, 0] = np.inf
    model.optimizer.state[0]["exp_avg"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.save("never-written.safetensors")
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.layers[1].W[0, 0] == np.inf and np.isnan(clone.optimizer.state[0]["exp_avg"][0, 0])
        assert clone.metadata == {"note": "kept"}
        assert clone.layers[1].W is not model.layers[1].W
        assert clone.optimizer._model() is clone  # the state belongs to the copy: its next step continues it
        assert (clone.trainer.dropout_rng.bit_generator.state == model.trainer.dropout_rng.bit_generator.state)
        assert clone.trainer.shuffle_rng.bit_generator.state == model.trainer.shuffle_rng.bit_generator.state


def test_a_checkpoint_at_learning_rate_zero_loads(tmp_path):
    """CosineAnnealingLR(T_max=2) reaches lr = 0 at epoch 2: the checkpoint of that epoch loads (torch accepts a
    zero rate, and so does every gpunet optimizer)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 4)), rng.normal(size=(24, 2))
    model = regressor()
    path = tmp_path / "ckpt-{epoch}.safetensors"
    model.fit(X, y, loss="mse", optimizer=gn.optim.Adam(lr=0.1), epochs=3, batch_size=8,
              callbacks=[gn.callbacks.CosineAnnealingLR(T_max=2), gn.callbacks.ModelCheckpoint(str(path))])
    assert model.optimizer.lr == 0.0
    loaded = gn.load(tmp_path / "ckpt-3.safetensors")
    assert loaded.optimizer.lr == 0.0
    before = loaded.get_weights()
    loaded.fit(X, y, epochs=1, batch_size=8)  # a zero rate changes nothing (Adam's moments still advance)
    for a, b in zip(before, loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_copies_of_a_model_whose_optimizer_stepped_another_model_train_like_it():
    """An optimizer that last stepped another model restarts on this one (its next step): a copy must too, not
    bind the other model's moments to itself."""
    import copy
    import pickle

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 4)), rng.normal(size=(24, 2))
    optimizer = gn.optim.Adam(lr=0.05)
    model = regressor()
    model.fit(X, y, loss="mse", optimizer=optimizer, epochs=1, batch_size=8)
    with pytest.warns(UserWarning, match="last updated another model"):  # now the other model's
        regressor(seed=9).fit(X, y, loss="mse", optimizer=optimizer, epochs=2, batch_size=8)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    for m in [model, *copies]:
        m.fit(X, y, epochs=1, batch_size=8)
    for m in copies:
        assert m.optimizer.steps == model.optimizer.steps == 3
        for a, b in zip(model.get_weights(), m.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_pickle_holds_each_weight_once():
    model = gn.Sequential([gn.Dense(200, 300, "relu"), gn.Dense(300, 10)], seed=0)
    weights = sum(w.nbytes for w in model.get_weights())
    import pickle

    assert len(pickle.dumps(model)) < 1.2 * weights


def test_pickles_of_gpunet_0_1_load(rng):
    """A pickle written by gpunet 0.1 (through the file format; tests/data/gpunet-0.1-model.pickle: 3-4-2 softmax,
    2 epochs of Adam on default_rng(0)'s data) loads and trains on."""
    import pickle

    with open(Path(__file__).parent / "data" / "gpunet-0.1-model.pickle", "rb") as handle:
        model = pickle.load(handle)
    data = np.random.default_rng(0)
    X, y = data.normal(size=(20, 3)), data.integers(0, 2, 20)
    assert model.optimizer.steps == 8 and model.optimizer.owns_state(model)
    probabilities = model.predict(X)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    model.fit(X, y, epochs=1, batch_size=5)
    assert model.optimizer.steps == 12


def test_one_optimizer_for_two_models_warns_that_its_state_starts_afresh():
    """torch.optim keeps its state per parameter; gpunet's optimizer keeps the state of the model it last updated,
    so stepping another model starts it afresh, and going back to the first starts it afresh again: said."""
    opt = gn.optim.Adam(lr=0.01)
    first, second = classifier(seed=0), classifier(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first.fit(X, LABELS, loss="cce", optimizer=opt, epochs=1, batch_size=8)
    with pytest.warns(UserWarning, match=r"this Adam last updated another model \(step 5\): its state starts "
                                         r"afresh for this one") as record:
        second.fit(X, LABELS, loss="cce", optimizer=opt, epochs=1, batch_size=8)
    assert record[0].filename == __file__ and opt.steps == 5
    with pytest.warns(UserWarning, match="last updated another model"):
        first.fit(X, LABELS, epochs=1, batch_size=8)


def test_model_checkpoint_saves_each_epoch_or_the_best_and_refuses_a_missing_folder_first(tmp_path):
    """Keras's ModelCheckpoint: a file per epoch with {epoch} in the path, or the best epoch's weights only; a
    folder that does not exist is refused before the first step (the model unchanged), not after an epoch."""
    model = classifier(dtype="float64")
    before = model.get_weights()
    with pytest.raises(FileNotFoundError, match=r"ModelCheckpoint cannot save to .*nope.*: the folder .* does not"):
        model.fit(X, LABELS, loss="cce", optimizer="adam", epochs=2, batch_size=8,
                  callbacks=[gn.callbacks.ModelCheckpoint(str(tmp_path / "nope" / "m.safetensors"))])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())) and model.optimizer is None
    model.fit(X, LABELS, loss="cce", optimizer="adam", epochs=3, batch_size=8,
              callbacks=[gn.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.safetensors"))])
    assert sorted(p.name for p in tmp_path.glob("e*.safetensors")) == ["e1.safetensors", "e2.safetensors",
                                                                       "e3.safetensors"]
    np.testing.assert_array_equal(gn.load(tmp_path / "e3.safetensors").get_weights()[0], model.get_weights()[0])
    best = classifier(dtype="float64")
    history = best.fit(X, LABELS, loss="cce", optimizer=gn.optim.SGD(lr=0.5), epochs=6, batch_size=8,
                       validation_split=0.25, callbacks=[gn.callbacks.ModelCheckpoint(
                           str(tmp_path / "best.safetensors"), save_best_only=True)])
    kept = gn.load(tmp_path / "best.safetensors")
    winner = int(np.argmin(history.history["val_loss"]))
    assert kept.optimizer.steps == (winner + 1) * int(np.ceil(30 / 8))
