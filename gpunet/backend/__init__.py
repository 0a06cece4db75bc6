"""The backend machinery: where arrays live, and the implementations of the steps that run on them.

    devices.py         Backend (an Array API namespace plus a device), get_backend, host <-> device moves, cuda_info
    reference.py       Ops: the readable Array-API reference of every specialisable step (the oracle in tests)
    numpy_ops.py       NumpyOps(Ops): in place, into workspaces, with NumPy's own BLAS (blas.py) for the updates
    cuda_ops.py        CupyOps(Ops): fused cupy.ElementwiseKernels over the CUDA sources in kernels/
    kernel_sources.py  finds kernels/ (checkout or wheel) and inlines its #includes for NVRTC
    workspaces.py      the arrays a training step reuses, per model and batch size
    flat.py            parameters, gradients and optimizer state as views of flat arrays (one update per model)

:func:`ops_for` picks the implementation for a namespace. Layers, losses and optimizers only ever call an ``Ops``.
"""

from __future__ import annotations

import os

import array_api_compat

from .devices import (DTYPES, Backend, array_library, cuda_available, cuda_info, get_backend, on_device_of,
                      to_numpy)
from .numpy_ops import NumpyOps
from .reference import Ops

__all__ = ["DTYPES", "Backend", "NumpyOps", "Ops", "array_library", "cuda_available", "cuda_info",
           "fused_default", "get_backend", "on_device_of", "ops_for", "to_numpy"]

_OPS_CACHE: dict = {}


def fused_default() -> bool:
    """Whether models use the specialised ops unless told otherwise: on, unless ``GPUNET_FUSED=0``."""
    return os.environ.get("GPUNET_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def ops_for(xp, fused: bool | None = None) -> Ops:
    """The ops object for namespace ``xp``, one per (namespace, fused) per process.

    ``fused=True``: NumPy gets :class:`NumpyOps`, CuPy the fused CUDA kernels of ``gpunet.backend.cuda_ops``, other
    namespaces the reference. ``fused=False``: the Array-API reference :class:`Ops` on any namespace, for
    comparison. ``None``: :func:`fused_default`.
    """
    fused = fused_default() if fused is None else fused
    key = (xp, fused)
    ops = _OPS_CACHE.get(key)
    if ops is None:
        if not fused:
            ops = Ops(xp)
        elif array_api_compat.is_numpy_namespace(xp):
            ops = NumpyOps(xp)
        elif array_api_compat.is_cupy_namespace(xp):
            from .cuda_ops import CupyOps

            ops = CupyOps(xp)
        else:
            ops = Ops(xp)
        _OPS_CACHE[key] = ops
    return ops
