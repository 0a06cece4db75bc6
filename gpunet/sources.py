"""Where ``fit`` takes its batches from: a data source gives, per epoch, random access to that epoch's batches.

``source.sizes`` lists the rows of every batch of an epoch (the last one may be partial); ``source.epoch(trainer)``
returns ``batch(b) -> (x, y, w)``, device arrays of ``sizes[b]`` rows (``w`` None without row weights), for
``b`` in ``range(len(sizes))``, each of which may be asked for again (a diverged epoch replays its first steps).
The shuffled order comes from the trainer's generator, so every source shuffles reproducibly from the model's seed.
"""

from __future__ import annotations


class ArraySource:
    """Device arrays ``X`` ``(n, in)``, ``Y`` ``(n, out)`` and ``W`` ``(n, 1)`` or None, already checked: each epoch
    one shuffled copy (one host -> device upload of the order) cut into contiguous slices of ``batch`` rows."""

    def __init__(self, X, Y, W, batch: int, shuffle: bool):
        self.arrays, self.batch, self.shuffle = (X, Y, W), batch, shuffle
        self.n = X.shape[0]
        self.sizes = [min(batch, self.n - start) for start in range(0, self.n, batch)]

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
