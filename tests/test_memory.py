"""Steady-state training on NumPy reuses its buffers: a step allocates no array the size of a layer's activations
(workspaces for matmul outputs, gradients and optimizer scratch are made once and reused)."""

import tracemalloc

import numpy as np

import gpunet as gn


def test_training_steps_allocate_no_new_buffers():
    rng = np.random.default_rng(0)
    model = gn.Sequential([gn.Dense(784, 512, "relu"), gn.Dense(512, 256, "relu"), gn.Dense(256, 10, "softmax")],
                          seed=0)
    loss, opt = gn.losses.get("cce"), gn.optim.SGD(lr=0.01, momentum=0.9)
    X, Y = model._data("X", rng.standard_normal((256, 784)), "y", rng.integers(0, 10, 256), loss)
    for _ in range(3):  # warm-up: workspaces, scratch arrays and momentum buffers are created here
        model._train_step(X, Y, loss, opt, True)
    smallest_activation = 256 * 256 * 4  # bytes of the narrowest hidden layer's float32 output
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(20):
            model._train_step(X, Y, loss, opt, True)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # only small temporaries (the softmax rows, boolean masks a quarter of a float array): nothing layer-sized
    assert peak - start < smallest_activation
    assert end - start < 64 * 1024  # and nothing accumulates from step to step


def test_without_workspaces_a_step_does_allocate():
    """The same measurement on the reference ops (no reuse) sees layer-sized allocations: the test above can fail."""
    rng = np.random.default_rng(0)
    model = gn.Sequential([gn.Dense(784, 512, "relu"), gn.Dense(512, 256, "relu"), gn.Dense(256, 10, "softmax")],
                          seed=0, fused=False)
    loss, opt = gn.losses.get("cce"), gn.optim.SGD(lr=0.01, momentum=0.9)
    X, Y = model._data("X", rng.standard_normal((256, 784)), "y", rng.integers(0, 10, 256), loss)
    model._train_step(X, Y, loss, opt, True)
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        model._train_step(X, Y, loss, opt, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start >= 256 * 256 * 4
