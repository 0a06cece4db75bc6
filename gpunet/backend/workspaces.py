"""Workspaces: the arrays a training step writes again at every step, owned by one model's trainer.

A step on a batch of ``n`` rows needs arrays of ``n`` rows (pre-activations, dropout masks, input gradients,
scratch) and arrays shaped like the parameters (weight gradients, optimizer scratch). Reusing them from step to step
makes a steady-state step allocate nothing, and gives every array a fixed address per batch shape, which a captured
(CUDA graph) step needs. The rows-shaped ones are kept for the last :attr:`Workspaces.capacity` batch sizes only (a
fit uses two: its full batches and its last, partial one), so a stream of distinct batch sizes does not pile up
memory; the parameter-shaped ones live in one :attr:`Workspaces.shared` workspace. Everything dies with the model.

Workspaces are internal: what gpunet hands out (``model.backward``'s gradients, ``predict``'s outputs) is never a
workspace array, so the next step cannot overwrite it.
"""

from __future__ import annotations

from collections import OrderedDict


class Workspace:
    """Arrays by ``(key, shape, dtype)``, made with ``xp.empty`` on first request and returned again after.

    ``shared`` is the workspace of the parameter-shaped arrays (this one itself for the shared workspace).
    """

    def __init__(self, xp, shared: "Workspace | None" = None):
        self.xp = xp
        self._shared = shared  # None for the shared workspace itself (no reference cycle: freed as soon as unused)
        self._arrays: dict = {}

    @property
    def shared(self) -> "Workspace":
        return self if self._shared is None else self._shared

    def array(self, key, shape: tuple, dtype, fill=None):
        """The array for ``key`` (any hashable: the layer and a name, ``("scratch", slot)``...) of ``shape`` (a
        tuple) and ``dtype``; its contents are whatever the previous step left, or ``fill`` everywhere when it is
        made now and ``fill`` is given (for constants such as a vector of ones)."""
        index = (key, shape, dtype)
        a = self._arrays.get(index)
        if a is None:
            a = self._arrays[index] = self.xp.empty(shape, dtype=dtype)
            if fill is not None:
                a[...] = fill
        return a

    def adopt(self, key, a) -> None:
        """Make ``a`` (a view of some larger buffer, say) the array :meth:`array` returns for ``key`` and its
        shape and dtype."""
        self._arrays[(key, tuple(a.shape), a.dtype)] = a

    def like(self, key, a, dtype=None):
        """:meth:`array` with the shape of ``a`` and its dtype (or ``dtype``)."""
        return self.array(key, a.shape, a.dtype if dtype is None else dtype)

    def __len__(self) -> int:
        return len(self._arrays)

    @property
    def nbytes(self) -> int:
        """Bytes held (NumPy and CuPy arrays)."""
        return sum(getattr(a, "nbytes", 0) for a in self._arrays.values())


class Workspaces:
    """One :class:`Workspace` per batch size, for the ``capacity`` sizes used last, plus :attr:`shared`."""

    def __init__(self, xp, capacity: int = 2):
        self.xp, self.capacity = xp, capacity
        self.shared = Workspace(xp)
        self._by_rows: OrderedDict[int, Workspace] = OrderedDict()
        self._last = None  # (rows, workspace) of the last request

    def for_rows(self, rows: int) -> Workspace:
        """The workspace of batches of ``rows`` rows (the least recently used size is dropped beyond capacity)."""
        if self._last is not None and self._last[0] == rows:  # the common case: the same size as the last step
            return self._last[1]
        ws = self._by_rows.pop(rows, None)
        if ws is None:
            ws = Workspace(self.xp, self.shared)
        self._by_rows[rows] = ws
        while len(self._by_rows) > self.capacity:
            self._by_rows.popitem(last=False)
        self._last = (rows, ws)
        return ws

    def workspaces(self) -> list[Workspace]:
        """Every workspace held now, the shared one first."""
        return [self.shared, *self._by_rows.values()]
