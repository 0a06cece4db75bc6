"""Memory on NumPy: a steady-state training step allocates no layer-sized array (its workspaces are made once and
reused), the workspaces stay bounded whatever the batch sizes, and everything a model allocated is given back when
the model is deleted (no process-global scratch)."""

import gc
import tracemalloc

import numpy as np
import pytest

import gpunet as gn


def wide_model(width=512, fused=True, seed=0):
    return gn.Sequential([gn.Dense(784, width, "relu"), gn.Dense(width, 256, "relu"), gn.Dense(256, 10, "softmax")],
                         seed=seed, fused=fused)


def prepared(model, rows=256, seed=0):
    rng = np.random.default_rng(seed)
    model.trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=0.01, momentum=0.9))
    return model.trainer.prepare(rng.standard_normal((rows, model.n_inputs)), rng.integers(0, 10, rows))[:2]


def traced(fn):
    """``(peak - start, end - start)`` bytes traced by tracemalloc while ``fn()`` runs."""
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        fn()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, end - start


def test_training_steps_allocate_no_new_buffers():
    model = wide_model()
    X, Y = prepared(model)
    for _ in range(3):  # warm-up: workspaces, scratch arrays and momentum buffers are created here
        model.trainer.step(X, Y)
    smallest_activation = 256 * 256 * 4  # bytes of the narrowest hidden layer's float32 output
    peak, kept = traced(lambda: [model.trainer.step(X, Y) for _ in range(20)])
    # only small temporaries (the softmax rows, boolean masks a quarter of a float array): nothing layer-sized
    assert peak < smallest_activation
    assert kept < 64 * 1024  # and nothing accumulates from step to step


def test_without_workspaces_a_step_does_allocate():
    """The same measurement on the reference ops (no reuse) sees layer-sized allocations: the test above can fail."""
    model = wide_model(fused=False)
    X, Y = prepared(model)
    model.trainer.step(X, Y)
    peak, _ = traced(lambda: model.trainer.step(X, Y))
    assert peak >= 256 * 256 * 4


def test_a_deleted_model_gives_its_memory_back():
    """Wide models trained a few steps (workspaces, scratch, optimizer state), then deleted: what they allocated is
    freed at once (no process-global scratch arrays, no reference cycle keeping the model alive)."""
    def train_and_drop():
        for width in (1024, 2048):
            model = wide_model(width)
            X, Y = prepared(model, rows=128)
            for _ in range(2):
                model.trainer.step(X, Y)
            model.fit(X, Y, epochs=1, batch_size=100)  # two batch sizes through fit as well
            del model, X, Y

    peak, kept = traced(train_and_drop)
    assert peak > 2048 * 784 * 4  # the premise: a 2048-wide model was really built and trained here
    assert kept < 256 * 1024


def test_many_batch_sizes_keep_the_workspaces_bounded():
    """200 distinct batch sizes through train_on_batch: the model keeps the workspaces of the last two sizes only
    (plus the parameter-shaped ones), not one set per size seen."""
    model = gn.Sequential([gn.Dense(32, 256, "tanh"), gn.Dense(256, 256, "relu"), gn.Dense(256, 4)], seed=0)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((300, 32)), rng.standard_normal((300, 4))
    opt = gn.optim.SGD(lr=1e-3, momentum=0.9)

    def held_bytes():
        return sum(ws.nbytes for ws in model.trainer.workspaces.workspaces())

    for rows in (299, 300):
        model.train_on_batch(X[:rows], Y[:rows], "mse", opt)
    two_sizes = held_bytes()
    for rows in range(100, 300):
        model.train_on_batch(X[:rows], Y[:rows], "mse", opt)
    assert len(model.trainer.workspaces.workspaces()) == 3  # shared + the last two batch sizes
    assert held_bytes() <= two_sizes
    _, kept = traced(lambda: [model.train_on_batch(X[:rows], Y[:rows], "mse", opt) for rows in range(1, 60)])
    # what stays allocated is the two new sizes' workspaces (tracemalloc saw them made) and nothing more
    assert kept < held_bytes() + 64 * 1024


@pytest.mark.parametrize("fused", [True, False], ids=["numpy_ops", "reference_ops"])
def test_public_gradients_are_not_overwritten_by_the_next_backward(fused):
    """What model.gradients() and model.backward() hand out stays valid: summing two backward passes' gradients
    gives g1 + g2 (it gave 2 g2 when the gradients were workspaces)."""
    model = gn.Sequential([gn.Dense(300, 200, "tanh"), gn.Dense(200, 3)], dtype="float64", seed=0, fused=fused)
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((70, 300)), rng.standard_normal((70, 300))
    dy1, dy2 = rng.standard_normal((70, 3)), rng.standard_normal((70, 3))
    dx1 = model.backward(model.forward(x1) * 0 + dy1)
    first = model.gradients()
    dx1_copy, first_copies = dx1.copy(), [g.copy() for g in first]
    model.backward(model.forward(x2) * 0 + dy2)
    second = model.gradients()
    for g1, g1_copy in zip(first, first_copies):
        np.testing.assert_array_equal(g1, g1_copy)
    np.testing.assert_array_equal(dx1, dx1_copy)
    # and a training step in between does not touch them either
    model.train_on_batch(x1, dy1, "mse", "sgd")
    for g1, g1_copy in zip(first, first_copies):
        np.testing.assert_array_equal(g1, g1_copy)
    for g1, g2 in zip(first, second):
        assert not np.shares_memory(g1, g2)


def test_fit_keeps_no_copy_of_the_data_after_it_returns():
    """The last batch's arrays (views of the epoch's shuffled copy of the data) are let go when fit returns."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20_000, 50)), rng.integers(0, 3, 20_000)
    model = gn.Sequential([gn.Dense(50, 8, "relu"), gn.Dense(8, 3, "softmax")], dtype="float64", seed=0)

    def fit():
        model.fit(X, y, loss="cce", optimizer="sgd", epochs=1, batch_size=1000)

    _, kept = traced(fit)
    assert kept < X.nbytes / 10  # the data is 8 MB; it kept 8.4 MB when the layers held the last batch
