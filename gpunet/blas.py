"""Vector BLAS (``axpy``, ``scal``) from the OpenBLAS inside NumPy's wheels, for the optimizer updates on the CPU.

NumPy's ufuncs make one pass per operation on one core, so ``buf = momentum buf + g; p -= lr buf`` costs four passes.
``scal`` and ``axpy`` make three passes, in the library (and the thread pool) of NumPy's own matrix products:
OpenBLAS runs ``axpy`` on all its threads (``axpby`` on one, so it is not used).
SciPy's BLAS would bring a second OpenBLAS, whose threads fight NumPy's for the cores between the two libraries'
calls: a training step got 6x slower on 2 cores.

NumPy's PyPI wheels bundle scipy-openblas64 (64-bit integers, symbols ``scipy_cblas_<s|d>axpy64_``);
:func:`vector_blas` finds it beside NumPy and returns None for other builds (conda's MKL, macOS Accelerate, a system
BLAS), where callers keep the ufuncs.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

# below this many elements a ufunc costs less than the foreign call
MIN_SIZE = 1 << 15


class VectorBlas:
    """``axpy``/``scal`` of one dtype on C-contiguous arrays of that dtype and equal size (unchecked: see
    :func:`vector_blas`), in place on ``y``."""

    def __init__(self, lib: ctypes.CDLL, dtype):
        letter, scalar = ("s", ctypes.c_float) if dtype == np.float32 else ("d", ctypes.c_double)
        n, ptr = ctypes.c_int64, ctypes.c_void_p
        self._axpy = getattr(lib, f"scipy_cblas_{letter}axpy64_")
        self._axpy.argtypes, self._axpy.restype = [n, scalar, ptr, n, ptr, n], None
        self._scal = getattr(lib, f"scipy_cblas_{letter}scal64_")
        self._scal.argtypes, self._scal.restype = [n, scalar, ptr, n], None

    def axpy(self, a: float, x, y) -> None:
        """``y += a x``."""
        self._axpy(y.size, a, x.ctypes.data, 1, y.ctypes.data, 1)

    def scal(self, a: float, x) -> None:
        """``x *= a``."""
        self._scal(x.size, a, x.ctypes.data, 1)


@functools.cache
def _library() -> ctypes.CDLL | None:
    """NumPy's bundled scipy-openblas64 (already loaded by NumPy: this is the same library), or None."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # an old or unusual NumPy build without the build report
        return None
    if blas.get("name") != "scipy-openblas" or "USE64BITINT" not in blas.get("openblas configuration", ""):
        return None
    numpy_dir = Path(np.__file__).parent
    for folder in (numpy_dir.parent / "numpy.libs", numpy_dir / ".dylibs"):  # Linux/Windows wheels, macOS wheels
        for path in sorted(folder.glob("libscipy_openblas64_*")):
            try:
                lib = ctypes.CDLL(str(path))
                lib.scipy_cblas_sscal64_, lib.scipy_cblas_daxpy64_  # noqa: B018 (the symbols must be there)
                return lib
            except (OSError, AttributeError):
                continue
    return None


@functools.cache
def _for_dtype(dtype) -> VectorBlas | None:
    lib = _library()
    return None if lib is None else VectorBlas(lib, dtype)


def vector_blas(*arrays) -> VectorBlas | None:
    """The vector BLAS for ``arrays`` (``None`` entries ignored): writeable, aligned, C-contiguous float32 or float64
    arrays of one dtype and one size of at least :data:`MIN_SIZE` elements; None when they do not qualify or no such
    library is found."""
    arrays = [a for a in arrays if a is not None]
    first = arrays[0]
    if first.size < MIN_SIZE or first.dtype not in (np.float32, np.float64):
        return None
    # BLAS writes through raw pointers: it must never see memory NumPy would refuse to write (read-only buffers,
    # read-only memory maps) or unaligned data
    if not all(type(a) is np.ndarray and a.dtype == first.dtype and a.size == first.size and a.flags.c_contiguous
               and a.flags.writeable and a.flags.aligned for a in arrays):
        return None
    return _for_dtype(first.dtype)
