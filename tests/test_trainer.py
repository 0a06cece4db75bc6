"""The training seam: :class:`gpunet.trainer.Trainer` (``model.trainer``) -- its step, the gradient hooks between
backward and update, the device-side epoch sums, snapshots, and the properties a captured (CUDA graph) step needs:
fixed workspaces per batch shape and no host reads inside a step."""

import numpy as np
import pytest

import gpunet as gn


def model(seed=0, **kwargs):
    return gn.Sequential([gn.Dense(4, 6, "tanh"), gn.Dense(6, 3, "softmax")], dtype="float64", seed=seed, **kwargs)


def problem(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, n)


def test_steps_equal_fit():
    """fit is the trainer's steps over the shuffled batches: the same steps by hand give the same weights."""
    X, y = problem()
    by_fit = model()
    by_fit.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.1, momentum=0.9), epochs=1, batch_size=20)
    by_hand = model()
    trainer = by_hand.trainer
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=0.1, momentum=0.9))
    x, Y, _ = trainer.prepare(X, y)
    trainer.step(x, Y)  # one full batch: no shuffling
    for a, b in zip(by_fit.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_gradient_hook_runs_between_backward_and_update():
    """A hook doubling the gradients equals SGD at twice the rate; it sees them before clipping."""
    X, y = problem()
    seen = []

    def double(trainer, grads):
        seen.append((trainer.batch_rows, float(np.sqrt(sum(np.sum(g * g) for g in grads)))))
        for g in grads:
            g *= 2

    hooked, plain = model(), model()
    hooked.trainer.gradient_hooks.append(double)
    hooked.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.05), epochs=2, batch_size=8, shuffle=False)
    plain.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.1), epochs=2, batch_size=8, shuffle=False)
    for a, b in zip(hooked.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    assert [rows for rows, _ in seen] == [8, 8, 4] * 2

    clipped = model()
    clipped.trainer.gradient_hooks.append(lambda trainer, grads: seen.append(sum(float(np.sum(g * g)) for g in grads)))
    clipped.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.1, global_clipnorm=1e-3), epochs=1, batch_size=20)
    assert np.sqrt(seen[-1]) > 1e-2  # the hook saw the unclipped gradient


def test_step_checks_its_arrays():
    net = model()
    trainer = net.trainer
    with pytest.raises(RuntimeError, match="configure"):
        trainer.step(np.zeros((2, 4)), np.zeros((2, 3)))
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD())
    for x, y, match in [(np.zeros((2, 5)), np.zeros((2, 3)), "x must be"), (np.zeros((2, 4)), np.zeros(2), "y must"),
                        (np.zeros((2, 4)), np.zeros((3, 3)), "y must"), ([[0.0] * 4], [[0.0] * 3], "x must"),
                        (np.zeros((2, 4), np.float32), np.zeros((2, 3)), "x must")]:
        with pytest.raises(ValueError, match=match):
            trainer.step(x, y)


def test_epoch_sums_are_the_batches_losses_and_metrics():
    X, y = problem(n=24)
    net = model()
    trainer = net.trainer
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=0.1), [gn.metrics.get("accuracy")])
    x, Y, _ = trainer.prepare(X, y)
    sizes = [10, 10, 4]
    trainer.begin_epoch(sizes)
    expected_losses, correct = [], 0
    for start, size in zip((0, 10, 20), sizes):
        xb, yb = x[start:start + size], Y[start:start + size]
        before = net.predict(xb)
        expected_losses.append(float(gn.losses.get("cce")(before, yb)))
        correct += int(np.sum(before.argmax(1) == yb.argmax(1)))
        trainer.step(xb, yb)
        assert trainer.running_loss() == pytest.approx(np.dot(expected_losses, sizes[:len(expected_losses)])
                                                       / sum(sizes[:len(expected_losses)]), rel=1e-12)
    totals = trainer.end_epoch()
    np.testing.assert_allclose(totals.batch_losses, expected_losses, rtol=1e-12)
    assert totals.loss == pytest.approx(np.dot(expected_losses, sizes) / 24, rel=1e-12)
    assert totals.metrics == {"accuracy": correct / 24} and totals.finite and totals.first_nonfinite is None


def test_snapshot_and_restore_put_everything_back():
    X, y = problem()
    net = gn.Sequential([gn.Dense(4, 6, "tanh", dropout=0.3), gn.Dense(6, 3, "softmax")], dtype="float64", seed=0)
    net.fit(X, y, loss="cce", optimizer=gn.optim.Adam(lr=0.01), epochs=1, batch_size=5)
    trainer = net.trainer
    snap = trainer.snapshot()
    weights, steps = net.get_weights(), net.optimizer.steps
    moments = [s["exp_avg"].copy() for s in net.optimizer.state]
    order, masks = trainer.shuffle_rng.permutation(20), trainer.dropout_masks(5)
    net.fit(X, y, epochs=2, batch_size=5)
    trainer.restore(snap)
    trainer.restore(snap)  # a snapshot survives a restore
    for a, b in zip(net.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert net.optimizer.steps == steps
    for s, m in zip(net.optimizer.state, moments):
        np.testing.assert_array_equal(s["exp_avg"], m)
    np.testing.assert_array_equal(trainer.shuffle_rng.permutation(20), order)
    np.testing.assert_array_equal(trainer.dropout_masks(5)[0], masks[0])


def test_workspaces_are_fixed_per_batch_shape():
    """Every array a step writes lives at one address per batch size (what a replayed CUDA graph needs)."""
    net = gn.Sequential([gn.Dense(4, 6, "relu", dropout=0.2), gn.Dense(6, 3, "softmax")], seed=0)
    trainer = net.trainer
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=0.1, momentum=0.9))
    X, y = problem(n=32)
    x, Y, _ = trainer.prepare(X, y)

    def addresses(rows):
        pred, _ = trainer.step(x[:rows], Y[:rows])
        _, grads = trainer.backward(trainer.forward(x[:rows]), Y[:rows])
        arrays = [pred, *grads, *(layer._cache[i] for layer in net.layers for i in (1, 2, 3) if layer._cache[i]
                                  is not None)]
        return [a.__array_interface__["data"][0] for a in arrays]

    full, partial = addresses(16), addresses(8)
    assert addresses(16) == full and addresses(8) == partial and addresses(16) == full
    assert full[1:5] == partial[1:5]  # the gradients are shared by both batch sizes


def _forbid_host_reads(strict):
    """Make every host read of an array-api-strict array raise (what a captured step must never do)."""
    names = ("__bool__", "__float__", "__int__", "__index__", "__array__", "__dlpack__", "__complex__")
    array = type(strict.asarray(0.0))
    saved = {name: getattr(array, name) for name in names if hasattr(array, name)}

    def refuse(self, *args, **kwargs):
        raise AssertionError("a host read inside the training step")

    for name in saved:
        setattr(array, name, refuse)
    return array, saved


@pytest.mark.parametrize("optimizer", [gn.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, global_clipnorm=1.0),
                                       gn.optim.Adam(lr=0.01, amsgrad=True, clipnorm=0.5)], ids=repr)
def test_a_step_reads_nothing_back_from_the_device(optimizer):
    """On array-api-strict (any namespace gpunet may meet), a whole step -- dropout, forward, combined loss,
    backward, clipping, update, the epoch's sums -- runs with every host read forbidden."""
    strict = pytest.importorskip("array_api_strict")
    net = gn.Sequential([gn.Dense(4, 6, "relu", dropout=0.3), gn.Dense(6, 3, "softmax")], device=strict, seed=0)
    trainer = net.trainer
    trainer.configure(gn.losses.get("cce"), optimizer, [gn.metrics.get("accuracy"), gn.metrics.get("r2")])
    X, y = problem(n=12)
    x, Y, _ = trainer.prepare(X, y)
    trainer.step(x, Y)  # the optimizer state is made here
    trainer.begin_epoch([12, 12])
    array, saved = _forbid_host_reads(strict)
    try:
        trainer.step(x, Y)
        trainer.step(x, Y)
    finally:
        for name, method in saved.items():
            setattr(array, name, method)
    assert trainer.end_epoch().finite


def test_the_host_read_guard_can_fail():
    strict = pytest.importorskip("array_api_strict")
    array, saved = _forbid_host_reads(strict)
    try:
        with pytest.raises(AssertionError, match="host read"):
            float(strict.asarray(1.0))
    finally:
        for name, method in saved.items():
            setattr(array, name, method)
    assert float(strict.asarray(1.0)) == 1.0


@pytest.mark.parametrize("make", [lambda: gn.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
                                  lambda: gn.optim.Adam(lr=0.01, amsgrad=True, clipnorm=0.5),
                                  lambda: gn.optim.RMSprop(lr=0.01, centered=True, momentum=0.5),
                                  lambda: gn.optim.Adagrad(lr=0.1, global_clipnorm=1.0)], ids=["sgd", "adam", "rmsprop",
                                                                                                "adagrad"])
def test_one_flat_update_equals_one_update_per_parameter(make):
    """On NumPy the parameters, gradients and optimizer state are views of flat arrays and one update covers them
    all; a hook that hands the optimizer other arrays forces the update per parameter: both end at the same
    weights, and the state stays views of its flat arrays (also after a restore)."""
    X, y = problem(n=40)
    flat_model, per_parameter = model(), model()
    per_parameter.trainer.gradient_hooks.append(lambda trainer, grads: grads.__setitem__(slice(None),
                                                                                         [g.copy() for g in grads]))
    for net in (flat_model, per_parameter):
        net.fit(X, y, loss="cce", optimizer=make(), epochs=3, batch_size=16)
    for a, b in zip(flat_model.get_weights(), per_parameter.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    params = flat_model.parameters()
    assert all(np.shares_memory(p, flat_model._flat_params) for p in params)
    state = flat_model.optimizer.state
    name = next(k for k, v in state[0].items() if v is not None)
    assert all(np.shares_memory(s[name], state[0][name].base if state[0][name].base is not None else s[name])
               for s in state)
    snap = flat_model.trainer.snapshot()
    flat_model.trainer.restore(snap)  # per-parameter copies: the next step gathers them again
    flat_model.fit(X, y, epochs=1, batch_size=16)
    state = flat_model.optimizer.state
    assert all(np.shares_memory(s[name], state[0][name].base) for s in state)


def test_a_hook_value_is_added_to_the_batch_loss():
    """A penalty hook's returned value joins the recorded loss (weights unaffected when it changes no gradient)."""
    X, y = problem()
    plain, penalised = model(), model()
    penalised.trainer.gradient_hooks.append(lambda trainer, grads: trainer.model.xp.asarray(0.25))
    a = plain.fit(X, y, loss="cce", optimizer="sgd", epochs=2, batch_size=8)
    b = penalised.fit(X, y, loss="cce", optimizer="sgd", epochs=2, batch_size=8)
    np.testing.assert_allclose(b["loss"], np.asarray(a["loss"]) + 0.25, rtol=1e-14)
    for u, v in zip(plain.get_weights(), penalised.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_a_packed_ensemble_refuses_training(tmp_path):
    """recipe.pack lays an ensemble's networks side by side with zero blocks between them: training the packed
    model would fill those blocks and couple the networks, so it is refused, also after a save and load."""
    from gpunet.recipe import pack

    X, y = problem()
    members = [model(seed=s) for s in range(3)]
    for m in members:
        m.fit(X, y, loss="cce", optimizer="adam", epochs=1)
    packed = pack(members)
    np.testing.assert_allclose(packed.predict(X).shape, (20, 3))
    for net in (packed, None):
        if net is None:
            packed.save(tmp_path / "ensemble.safetensors")
            net = gn.load(tmp_path / "ensemble.safetensors")
        before = net.get_weights()
        with pytest.raises(ValueError, match="ensemble of 3 networks"):
            net.fit(X, y, epochs=1)
        with pytest.raises(ValueError, match="ensemble of 3 networks"):
            net.train_on_batch(X, y, "cce", "sgd")
        for a, b in zip(before, net.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_roll_back_keeps_whom_the_optimizer_state_belongs_to():
    """An optimizer whose state belongs to another model restarts on this one; after a divergence the replay must
    restart it too (not replay with the other model's momentum): the kept weights equal a fresh optimizer's."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    y = 50 * (X @ np.array([1.0, -2.0, 0.5]))

    def build(seed):
        return gn.Sequential([gn.Dense(3, 8, "relu"), gn.Dense(8, 1)], dtype="float64", seed=seed)

    def diverge(model, optimizer):
        with pytest.raises(gn.NonFiniteLossError) as caught:
            model.fit(X, y, loss="mse", optimizer=optimizer, epochs=1, batch_size=8, shuffle=False)
        return caught.value

    fresh = build(0)
    expected = diverge(fresh, gn.optim.SGD(lr=0.2, momentum=0.9))
    shared = gn.optim.SGD(lr=1e-4, momentum=0.9)
    build(1).fit(X, y, loss="mse", optimizer=shared, epochs=1, batch_size=8, shuffle=False)
    shared.lr = 0.2
    model = build(0)
    error = diverge(model, shared)
    assert (error.epoch, error.batch) == (expected.epoch, expected.batch)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert shared.steps == expected.batch - 1


def test_a_failed_fit_leaves_no_epoch_open():
    """An exception inside the batch loop (a user callback) closes the trainer's epoch: the next step works."""
    class Fails(gn.callbacks.Callback):
        def on_batch_end(self, batch, running_logs):
            raise RuntimeError("user callback failed")

    X, y = problem()
    net = model()
    with pytest.raises(RuntimeError, match="user callback failed"):
        net.fit(X, y, loss="cce", optimizer="sgd", epochs=1, batch_size=5, callbacks=[Fails()])
    assert net.trainer._epoch is None and all(layer._cache is None for layer in net.layers)
    assert np.isfinite(net.train_on_batch(X, y, "cce", "sgd"))


def test_prepare_and_step_refuse_what_they_cannot_do():
    net = model()
    trainer = net.trainer
    with pytest.raises(RuntimeError, match="configure"):
        trainer.prepare(*problem())
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD())
    before = net.get_weights()
    with pytest.raises(ValueError, match="n > 0"):  # an empty batch outside data-parallel training
        trainer.step(np.zeros((0, 4)), np.zeros((0, 3)))
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_moving_between_host_namespaces_keeps_the_dropout_stream():
    """model.to(...) between backends whose masks NumPy draws goes on with the same dropout generator, as a save and
    load does (a move to or from CuPy restarts it on the GPU)."""
    X, y = problem()

    def build():
        return gn.Sequential([gn.Dense(4, 6, "tanh", dropout=0.4), gn.Dense(6, 3, "softmax")], dtype="float64",
                             seed=0)

    moved, control = build(), build()
    for net in (moved, control):
        net.fit(X, y, loss="cce", optimizer="sgd", epochs=1, batch_size=5)
    moved.to("cpu")
    for net in (moved, control):
        net.fit(X, y, epochs=2, batch_size=5)
    for a, b in zip(moved.get_weights(), control.get_weights()):
        np.testing.assert_array_equal(a, b)
