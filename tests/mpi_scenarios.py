"""Training scenarios run once in one process and once under ``mpiexec -n P`` (tests/test_distributed.py).

``python tests/mpi_scenarios.py OUT_DIR`` runs every scenario in the MPI world it was launched in and writes, per
rank, ``OUT_DIR/<scenario>-<rank>.npz`` with the final weights and the history. In one process (``world=None``)
the same functions give the reference. Every scenario uses float64 and data that is the same on every rank, except
the sharded ones, which give each rank its own slice of the same table.
"""

import sys
from pathlib import Path

import numpy as np

import gpunet as gn


def data(n=47, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = np.argmax(X[:, :classes] + 0.3 * rng.normal(size=(n, classes)), axis=1)
    return X, y


def classifier(dropout=0.0, seed=0):
    return gn.Sequential([gn.Dense(4, 8, "tanh", dropout=dropout), gn.Dense(8, 6, "relu"), gn.Dense(6, 3, "softmax")],
                         dtype="float64", seed=seed)


def result(model, history=None, **extra):
    out = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    for key, values in ({} if history is None else history.history).items():
        out[f"h_{key}"] = np.asarray(values)
    if history is not None:
        out["epochs"] = np.asarray(history.epoch)
    return out | extra


def sgd(world):
    """SGD momentum + weight decay, dropout, shuffling, an uneven last batch (47 = 3 x 16 - 1; with 3 ranks its
    last part is empty), validation data with accuracy and f1."""
    X, y = data()
    model = classifier(dropout=0.25)
    history = model.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01), epochs=4,
                        batch_size=16, metrics=["accuracy", "f1"], validation_data=data(n=19, seed=1),
                        distributed=world)
    return result(model, history)


def adam(world):
    """Adam + global_clipnorm, sample weights, a regression with r2 and mae (r2 merged by Chan's formula), a batch
    of 5 rows over 3 ranks (parts of 2, 2, 1)."""
    X, _ = data(n=23)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0
    model = gn.Sequential([gn.Dense(4, 8, "gelu"), gn.Dense(8, 1)], dtype="float64", seed=1)
    weights = np.linspace(0.5, 2.0, 23)
    history = model.fit(X, y, loss="mse", optimizer=gn.optim.Adam(lr=0.05, global_clipnorm=0.5), epochs=3,
                        batch_size=5, metrics=["r2", "mae"], sample_weight=weights, validation_split=0.3,
                        distributed=world)
    return result(model, history)


def early_stopping(world):
    """EarlyStopping on val_loss stops every rank at the single-process epoch and restores the same weights."""
    X, y = data(n=40)
    model = classifier()
    stopper = gn.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    history = model.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.5, momentum=0.9), epochs=30, batch_size=8,
                        validation_data=(X[:10], (y[:10] + 1) % 3), callbacks=[stopper], distributed=world)
    return result(model, history, best=np.asarray(stopper.best_epoch))


def resumed(world, folder):
    """Two epochs, saved by rank 0, loaded on every rank, two more from initial_epoch=2 with the saved optimizer."""
    X, y = data()
    model = classifier(dropout=0.1)
    model.fit(X, y, loss="cce", optimizer=gn.optim.Adam(lr=0.01), epochs=2, batch_size=12, distributed=world)
    path = Path(folder) / "resumed.safetensors"
    model.save(path)  # rank 0 writes
    if world is not None and world.comm is not None:
        world.comm.Barrier()
    loaded = gn.load(path)
    history = loaded.fit(X, y, epochs=4, initial_epoch=2, batch_size=12, distributed=world)
    return result(loaded, history)


def diverged(world):
    """A learning rate that diverges after the first epoch: every rank raises the same error and keeps the same
    weights."""
    X, _ = data()
    model = gn.Sequential([gn.Dense(4, 8, "relu"), gn.Dense(8, 1)], dtype="float64", seed=2)
    try:
        model.fit(X, X @ np.array([3.0, -1.0, 2.0, 0.5]), loss="mse", optimizer=gn.optim.SGD(lr=0.3, momentum=0.9),
                  epochs=20, batch_size=8, distributed=world)
    except gn.NonFiniteLossError as exc:
        return result(model, exc.history, where=np.asarray([exc.epoch, exc.batch]))
    raise AssertionError("the scenario did not diverge")


def sharded(world):
    """Each rank holds only its slice of the table (rank r: rows of index = r mod P; one rank may hold none)."""
    X, y = data(n=31)
    size, rank = (1, 0) if world is None else (world.size, world.rank)
    mine = np.arange(len(X)) % size == rank if size < 3 else np.arange(len(X)) % (size - 1) == rank
    model = classifier(dropout=0.2)
    kwargs = {} if world is None else {"distributed": world, "sharded": True}
    history = model.fit(X[mine], y[mine], loss="cce", optimizer=gn.optim.SGD(lr=0.1, momentum=0.5), epochs=3,
                        batch_size=10, **kwargs)
    return result(model, history)


def sharded_reference(size):
    """The one-process run a sharded run must equal: the union of the shards in the order the ranks train it.
    Rank r holds rows ``mine(r)``; every rank's permutation is drawn in rank order from the shared generator; batch
    b is rank 0's part b, then rank 1's part b, ... So this trains by hand, with the same trainer steps."""
    X, y = data(n=31)
    shards = [np.flatnonzero(np.arange(len(X)) % size == r) if size < 3 else
              np.flatnonzero(np.arange(len(X)) % (size - 1) == r) for r in range(size)]
    model = classifier(dropout=0.2)
    trainer = model.trainer
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=0.1, momentum=0.5))
    x_all, y_all, _ = trainer.prepare(X, y)
    steps = -(-len(X) // 10)
    while sum(-(-len(shard) // steps) for shard in shards) > 10:
        steps += 1
    losses = []
    for _ in range(3):
        orders = [shard[trainer.shuffle_rng.permutation(len(shard))] for shard in shards]
        parts = [np.array_split(order, steps) for order in orders]
        epoch = []
        for b in range(steps):
            rows = np.concatenate([parts[r][b] for r in range(size)])
            _, value = trainer._step(x_all[rows], y_all[rows])
            epoch.append((float(value), len(rows)))
        losses.append(sum(v * n for v, n in epoch) / len(X))
    return {f"w{i}": w for i, w in enumerate(model.get_weights())} | {"h_loss": np.asarray(losses), "epochs": np.arange(3)}


def reused_optimizer(world):
    """One Adam first trains another model alone (on every rank), then this one data-parallel: its state belongs to
    the other model, so this fit starts it afresh on every rank, as one process does."""
    X, y = data()
    optimizer = gn.optim.Adam(lr=0.02)
    other = classifier(seed=5)
    other.fit(X[::2], y[::2], loss="cce", optimizer=optimizer, epochs=2, batch_size=6)
    model = classifier()
    history = model.fit(X, y, loss="cce", optimizer=optimizer, epochs=2, batch_size=16, distributed=world)
    return result(model, history)


def penalised(world):
    """A penalty hook dividing by trainer.batch_rows (the whole batch's rows on every rank, as sklearn's alpha
    does): counted once, the same on every rank; 47 rows in batches of 8 give 3 ranks an empty share."""
    X, y = data()
    model = classifier()

    def l2(trainer, grads):
        xp, n = trainer.model.xp, trainer.batch_rows
        for layer, g in zip(trainer.model.layers, grads[0::2]):
            g += (0.1 / n) * layer.W
        return 0.05 * sum(xp.sum(layer.W * layer.W) for layer in trainer.model.layers) / n

    model.trainer.gradient_hooks.append(l2)
    history = model.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.2, momentum=0.9), epochs=2, batch_size=8,
                        distributed=world)
    return result(model, history)


def unseeded(world, folder):
    """seed=None: every rank starts from other weights and generators until rank 0's are broadcast, also for the
    rows validation_split holds out. Rank 0 saves its starting model; the test trains that file in one process."""
    X, y = data()
    model = classifier(seed=None)
    model.save(Path(folder) / f"unseeded-{'one' if world is None else world.size}.safetensors")
    history = model.fit(X, y, loss="cce", optimizer="sgd", epochs=2, batch_size=10, validation_split=0.3,
                        distributed=world)
    return result(model, history)


def unseeded_reference(path):
    X, y = data()
    model = gn.load(path)
    history = model.fit(X, y, loss="cce", optimizer="sgd", epochs=2, batch_size=10, validation_split=0.3)
    return result(model, history)


SCENARIOS = {"sgd": sgd, "adam": adam, "early_stopping": early_stopping, "diverged": diverged, "sharded": sharded,
             "reused_optimizer": reused_optimizer, "penalised": penalised}


def main(folder: str) -> None:
    world = gn.distributed.init()
    outputs = {name: fn(world) for name, fn in SCENARIOS.items()}
    outputs["resumed"] = resumed(world, folder)
    outputs["unseeded"] = unseeded(world, folder)
    for name, arrays in outputs.items():
        np.savez(Path(folder) / f"{name}-{world.rank}.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
