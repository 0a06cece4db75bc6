"""BLAS calls NumPy does not expose (``axpy``, ``scal``, ``gemm`` with ``beta``), from the OpenBLAS inside NumPy's
wheels, for the NumPy training step.

NumPy's ufuncs make one pass per operation on one core, so ``buf = momentum buf + g; p -= lr buf`` costs four passes.
``scal`` and ``axpy`` make three passes, in the library (and the thread pool) of NumPy's own matrix products:
OpenBLAS runs ``axpy`` on all its threads (``axpby`` on one, so it is not used). ``gemm`` with ``beta = 1`` adds
the bias inside the matrix product of a layer (``z`` starts as the bias rows) instead of in a pass of its own.
SciPy's BLAS would bring a second OpenBLAS, whose threads fight NumPy's for the cores between the two libraries'
calls: a training step got 6x slower on 2 cores.

NumPy's PyPI wheels bundle scipy-openblas64 (64-bit integers, symbols ``scipy_cblas_<s|d><name>64_``);
:func:`vector_blas` and :func:`matrix_blas` find it beside NumPy and return None for other builds (conda's MKL, macOS
Accelerate, a system BLAS), where callers keep NumPy's own operations.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

# below this many elements a ufunc costs less than the foreign call
MIN_SIZE = 1 << 15


_ROW_MAJOR, _NO_TRANS = 101, 111  # CBLAS enums


class Blas:
    """``axpy``/``scal``/``gemm`` of one dtype on C-contiguous arrays of that dtype (unchecked: see
    :func:`vector_blas` and :func:`matrix_blas`), in place on the last array."""

    def __init__(self, lib: ctypes.CDLL, dtype):
        letter, scalar = ("s", ctypes.c_float) if dtype == np.float32 else ("d", ctypes.c_double)
        n, ptr, enum = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        self._axpy = getattr(lib, f"scipy_cblas_{letter}axpy64_")
        self._axpy.argtypes, self._axpy.restype = [n, scalar, ptr, n, ptr, n], None
        self._scal = getattr(lib, f"scipy_cblas_{letter}scal64_")
        self._scal.argtypes, self._scal.restype = [n, scalar, ptr, n], None
        self._gemm = getattr(lib, f"scipy_cblas_{letter}gemm64_")
        self._gemm.argtypes = [enum, enum, enum, n, n, n, scalar, ptr, n, ptr, n, scalar, ptr, n]
        self._gemm.restype = None

    def axpy(self, a: float, x, y) -> None:
        """``y += a x``."""
        self._axpy(y.size, a, x.ctypes.data, 1, y.ctypes.data, 1)

    def scal(self, a: float, x) -> None:
        """``x *= a``."""
        self._scal(x.size, a, x.ctypes.data, 1)

    def gemm(self, a, b, c, beta: float = 1.0) -> None:
        """``c = a @ b + beta c`` for ``a`` ``(m, k)``, ``b`` ``(k, n)``, ``c`` ``(m, n)``."""
        (m, k), n = a.shape, b.shape[1]
        self._gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, n, beta,
                   c.ctypes.data, n)


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
                lib.scipy_cblas_sscal64_, lib.scipy_cblas_daxpy64_, lib.scipy_cblas_dgemm64_  # noqa: B018 (they exist)
                return lib
            except (OSError, AttributeError):
                continue
    return None


@functools.cache
def _for_dtype(dtype) -> Blas | None:
    lib = _library()
    return None if lib is None else Blas(lib, dtype)


def _safe(a, dtype) -> bool:
    """A NumPy array of ``dtype`` that BLAS may read and write through a raw pointer: C-contiguous and aligned, and
    writeable (BLAS must never write memory NumPy would refuse to: read-only buffers, read-only memory maps)."""
    return (type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned
            and a.flags.writeable)


def vector_blas(*arrays) -> Blas | None:
    """The vector BLAS for ``arrays`` (``None`` entries ignored): writeable, aligned, C-contiguous float32 or float64
    arrays of one dtype and one size of at least :data:`MIN_SIZE` elements; None when they do not qualify or no such
    library is found."""
    arrays = [a for a in arrays if a is not None]
    first = arrays[0]
    if first.size < MIN_SIZE or first.dtype not in (np.float32, np.float64):
        return None
    if not all(_safe(a, first.dtype) and a.size == first.size for a in arrays):
        return None
    return _for_dtype(first.dtype)


def matrix_blas(a, b, c) -> Blas | None:
    """The BLAS for ``c = a @ b + c`` (:meth:`Blas.gemm`): 2-D arrays passing the checks of :func:`vector_blas`
    with matching shapes, ``c`` sharing no memory with ``a`` or ``b``, and at least :data:`MIN_SIZE` multiply-adds
    per row (``k n >= MIN_SIZE``); None otherwise."""
    if not (a.ndim == b.ndim == c.ndim == 2 and a.dtype in (np.float32, np.float64)):
        return None
    if a.shape[1] != b.shape[0] or c.shape != (a.shape[0], b.shape[1]) or b.size < MIN_SIZE:
        return None
    if not (_safe(a, a.dtype) and _safe(b, a.dtype) and _safe(c, a.dtype)):
        return None
    if np.may_share_memory(c, a) or np.may_share_memory(c, b):  # callers fill c before gemm reads a and b
        return None
    return _for_dtype(a.dtype)
