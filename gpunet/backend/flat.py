"""One contiguous buffer behind many arrays: a model's parameters, their gradients and the optimizer's state are
views of flat arrays on NumPy and CuPy, so one update (and, for data-parallel training, one all-reduce) covers the
whole model instead of one call per parameter. Other namespaces do not promise that a reshaped slice is a view;
they keep one array per parameter."""

from __future__ import annotations

import math


def supports_views(backend) -> bool:
    """Whether ``backend``'s reshaped slices are views of their base (NumPy, CuPy)."""
    return backend.name in ("numpy", "cupy")


def views(flat, shapes) -> list:
    """``flat`` (1-D) cut into consecutive views of ``shapes``."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out


def empty(xp, shapes, dtype):
    """A new flat array for arrays of ``shapes`` one after another (uninitialised), and its views in those shapes."""
    flat = xp.empty(sum(math.prod(shape) for shape in shapes), dtype=dtype)
    return flat, views(flat, shapes)


def gather(xp, arrays, dtype):
    """A new flat array holding ``arrays`` one after another, and its views in their shapes."""
    flat, parts = empty(xp, [tuple(a.shape) for a in arrays], dtype)
    for part, a in zip(parts, arrays):
        part[...] = a
    return flat, parts
