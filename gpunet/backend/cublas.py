"""A capturable matrix product for CuPy arrays: gpunet's own ctypes binding of cuBLAS's ``cublasGemmEx``.

Why a binding of its own: CuPy refuses every cuBLAS call on a capturing stream (``cupy_backends/cuda/libs/
cublas.pyx``'s ``setStream`` raises ``NotImplementedError`` when ``streamIsCapturing``; cupy/cupy issue 6290), so
``cupy.matmul`` cannot be part of a CUDA graph. cuBLAS itself supports stream capture ("CUDA Graphs Support" in the
cuBLAS documentation): coefficients in host pointer mode are captured by value, and with a user-owned workspace set
by ``cublasSetWorkspace`` no memory is allocated inside the graph. PyTorch does exactly this for its graphs (one
handle per thread and device, a fixed workspace per handle and stream). The other routes were weighed: cuTENSOR
contractions are capturable but are a second library to install and tune for a plain GEMM; nvmath-python is a
large dependency whose capture support sits on the same cuBLASLt; cuBLASLt would add epilogues (bias, ReLU) but
needs descriptors and heuristics per shape. ``cublasGemmEx`` needs four functions and covers every precision gpunet
uses, each with float32 accumulation:

| precision | A, B | C | compute type |
|---|---|---|---|
| float64 | CUDA_R_64F | CUDA_R_64F | CUBLAS_COMPUTE_64F |
| float32 | CUDA_R_32F | CUDA_R_32F | CUBLAS_COMPUTE_32F (no TF32) |
| tf32 | CUDA_R_32F | CUDA_R_32F | CUBLAS_COMPUTE_32F_FAST_TF32 |
| bf16 | CUDA_R_16BF | CUDA_R_32F | CUBLAS_COMPUTE_32F |
| fp16 | CUDA_R_16F | CUDA_R_32F | CUBLAS_COMPUTE_32F |

Layout: cuBLAS is column-major; a row-major ``C = A @ B`` is the column-major ``C^T = B^T A^T``, so the call passes
``B`` first and ``A`` second with the row strides as leading dimensions, and a transposed view (``x.T``, as the
backward pass makes) becomes ``CUBLAS_OP_T`` on its untransposed storage: no copy. The output must be row-major
(C-contiguous rows).

The library object is injectable (``Gemm(lib=...)``): tests pass a fake with the same five functions that runs the
product on host pointers and records what it was asked, so the layout logic, the stream setting and the workspace
rule are checked without a GPU (``tests/fake_cuda.py``).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_64F, CUDA_R_16F, CUDA_R_16BF = 0, 1, 2, 14
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_64F, CUBLAS_COMPUTE_32F_FAST_TF32 = 68, 70, 77
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_DEFAULT_MATH = 0
# cuBLAS's recommendation for Hopper (and what PyTorch sets there): 32 MiB; smaller GPUs need less, none more
WORKSPACE_BYTES = 32 * 1024 * 1024

_DATA_TYPES = {"float64": CUDA_R_64F, "float32": CUDA_R_32F, "float16": CUDA_R_16F, "bfloat16": CUDA_R_16BF}


def compute_type(a_dtype: str, c_dtype: str, tf32: bool = False) -> int:
    """The cuBLAS compute type for inputs of ``a_dtype`` into ``c_dtype`` (float32 accumulation for every float32
    or narrower case)."""
    if a_dtype == "float64":
        if c_dtype != "float64":
            raise TypeError(f"a float64 product writes float64; received an output of {c_dtype}")
        return CUBLAS_COMPUTE_64F
    if c_dtype != "float32":
        raise TypeError(f"products of {a_dtype} inputs accumulate and write float32; received an output of {c_dtype}")
    return CUBLAS_COMPUTE_32F_FAST_TF32 if tf32 and a_dtype == "float32" else CUBLAS_COMPUTE_32F


def operand(shape, strides, itemsize: int):
    """``(op, ld)`` with which cuBLAS reads the transpose of a row-major matrix of ``shape`` and byte ``strides``
    (the column-major call computes ``C^T = B^T A^T``), or None when neither its rows nor its columns are contiguous.

    Rows contiguous (C order, row stride ``ld``): its storage read column-major is already the transpose: op N.
    Columns contiguous (a transposed view, F order): its storage read column-major is the matrix itself: op T.
    """
    rows, cols = shape
    s_row, s_col = strides
    if rows == 0 or cols == 0:
        return CUBLAS_OP_N, max(1, cols)
    if (s_col == itemsize or cols == 1) and s_row % itemsize == 0 and (rows == 1 or s_row // itemsize >= cols):
        return CUBLAS_OP_N, max(1, cols if rows == 1 else s_row // itemsize)
    if (s_row == itemsize or rows == 1) and s_col % itemsize == 0 and (cols == 1 or s_col // itemsize >= rows):
        return CUBLAS_OP_T, max(1, rows if cols == 1 else s_col // itemsize)
    return None


def plan(a_shape, a_strides, b_shape, b_strides, c_shape, c_strides, itemsize_ab: int, itemsize_c: int):
    """The ``cublasGemmEx`` arguments ``(transa, transb, m, n, k, first, lda, second, ldb, ldc)`` for the row-major
    ``C = A @ B``; ``first``/``second`` say which of ``"a"``/``"b"`` goes where (``"b"`` first). None when an operand's
    layout needs a copy."""
    (m, k), (k2, n) = a_shape, b_shape
    if k2 != k or tuple(c_shape) != (m, n):
        raise ValueError(f"shapes {tuple(a_shape)} @ {tuple(b_shape)} -> {tuple(c_shape)} do not match")
    op_b, op_a = operand(b_shape, b_strides, itemsize_ab), operand(a_shape, a_strides, itemsize_ab)
    out = operand(c_shape, c_strides, itemsize_c)
    if op_a is None or op_b is None or out is None or out[0] != CUBLAS_OP_N:
        return None
    return op_b[0], op_a[0], n, m, k, "b", op_b[1], "a", op_a[1], out[1]


def _find_library():
    """The libcublas CuPy itself loaded (its path from /proc/self/maps), else the soname of CUDA's major version."""
    import cupy
    from cupy_backends.cuda.libs import cublas  # noqa: F401  (loads libcublas into the process)

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1] if "/" in line else ""
                if "libcublas.so" in path and "libcublasLt" not in path:
                    return ctypes.CDLL(path)
    except OSError:
        pass
    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    return ctypes.CDLL(f"libcublas.so.{major}")


def _declare(lib) -> None:
    """ctypes signatures of the five functions used (a real CDLL only; fakes take the same Python values)."""
    vp, i = ctypes.c_void_p, ctypes.c_int
    for name, args in (("cublasCreate_v2", [ctypes.POINTER(vp)]), ("cublasDestroy_v2", [vp]),
                       ("cublasSetStream_v2", [vp, vp]), ("cublasSetWorkspace_v2", [vp, vp, ctypes.c_size_t]),
                       ("cublasSetMathMode", [vp, i]),
                       ("cublasGemmEx", [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i])):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int


class CublasError(RuntimeError):
    pass


class Gemm:
    """Capturable ``out = a @ b`` on CuPy arrays through ``cublasGemmEx`` (see the module docstring).

    Args:
        lib: the cuBLAS library (default: the one CuPy loaded) or a stand-in with the same functions.
        current_stream: ``() -> int``, the pointer of the stream to launch on (default: CuPy's current stream).
        workspace: ``(nbytes) -> (pointer, keep_alive)``, the fixed cuBLAS workspace of a handle (default: a CuPy
            ``uint8`` array, allocated before any capture and held with the handle).
        device_id: ``() -> int``, the current device (default: CuPy's).

    One handle per (thread, device), each with its own workspace; the stream and the workspace are set again
    whenever the stream changes (``cublasSetStream`` resets the workspace to cuBLAS's own pool, which would allocate
    inside a graph).
    """

    def __init__(self, lib=None, current_stream=None, workspace=None, device_id=None):
        if lib is None:
            lib = _find_library()
            _declare(lib)
        self.lib = lib
        self._current_stream = current_stream or _cupy_current_stream
        self._workspace = workspace or _cupy_workspace
        self._device_id = device_id or _cupy_device_id
        self._local = threading.local()

    def _handle(self):
        """``(handle, state)`` of this thread and device; the stream/workspace set on it when the stream changed."""
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        device = self._device_id()
        state = handles.get(device)
        if state is None:
            handle = ctypes.c_void_p()
            _check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
            _check(self.lib.cublasSetMathMode(handle.value, CUBLAS_DEFAULT_MATH), "cublasSetMathMode")
            pointer, keep = self._workspace(WORKSPACE_BYTES)
            state = handles[device] = {"handle": handle.value, "stream": None, "workspace": (pointer, keep)}
        stream = self._current_stream()
        if state["stream"] != stream:
            _check(self.lib.cublasSetStream_v2(state["handle"], stream), "cublasSetStream")
            _check(self.lib.cublasSetWorkspace_v2(state["handle"], state["workspace"][0], WORKSPACE_BYTES),
                   "cublasSetWorkspace")
            state["stream"] = stream
        return state["handle"]

    def __call__(self, a, b, out, *, tf32: bool = False, alpha: float = 1.0, beta: float = 0.0):
        """``out = alpha a @ b + beta out`` for 2-D CuPy arrays (``a``, ``b`` of one dtype: float64, float32,
        float16 or bfloat16; ``out`` float64 for float64 inputs, else float32). Returns ``out``, or None when an
        operand's layout is not one cuBLAS reads in place (the caller then takes another route)."""
        a_dtype, c_dtype = _dtype_name(a), _dtype_name(out)
        if _dtype_name(b) != a_dtype:
            raise TypeError(f"a and b must share a dtype; received {a_dtype} and {_dtype_name(b)}")
        compute = compute_type(a_dtype, c_dtype, tf32)
        args = plan(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, a.itemsize, out.itemsize)
        if args is None:
            return None
        transa, transb, m, n, k, _, lda, _, ldb, ldc = args
        if m == 0 or n == 0:
            return out
        scalar = ctypes.c_double if compute == CUBLAS_COMPUTE_64F else ctypes.c_float
        alpha_c, beta_c = scalar(alpha), scalar(beta)
        dtype = _DATA_TYPES[a_dtype]
        status = self.lib.cublasGemmEx(self._handle(), transa, transb, m, n, k, ctypes.addressof(alpha_c),
                                       _pointer(b), dtype, lda, _pointer(a), dtype, ldb, ctypes.addressof(beta_c),
                                       _pointer(out), _DATA_TYPES[c_dtype], ldc, compute, CUBLAS_GEMM_DEFAULT)
        _check(status, "cublasGemmEx")
        return out


def _check(status, what: str) -> None:
    if status != 0:
        raise CublasError(f"{what} failed with cuBLAS status {status}")


def _dtype_name(a) -> str:
    name = np.dtype(a.dtype).name
    if name not in _DATA_TYPES:
        raise TypeError(f"cuBLAS products take float64, float32, float16 or bfloat16 arrays; received {name}")
    return name


def _pointer(a) -> int:
    """The device address of ``a``'s first element (CuPy: ``a.data.ptr``; NumPy arrays in tests: their data)."""
    if isinstance(a, np.ndarray):
        return a.ctypes.data
    return a.data.ptr


def _cupy_current_stream() -> int:
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _cupy_device_id() -> int:
    import cupy

    return cupy.cuda.runtime.getDevice()


def _cupy_workspace(nbytes: int):
    import cupy

    keep = cupy.empty(nbytes, dtype=cupy.uint8)
    return keep.data.ptr, keep
