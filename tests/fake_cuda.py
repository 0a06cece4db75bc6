"""``FakeCuda``: CUDA stream capture and graph replay on the host, for gpunet's CuPy ops without a GPU.

It plays the three things a captured training step touches, over NumPy arrays (which play device memory):

- kernels: :attr:`FakeCuda.kernel` wraps :class:`host_kernel.HostElementwiseKernel` (the real kernel declarations
  and ``kernels/*.cuh``, built with g++). Outside a capture a call runs at once. During a capture it runs nothing:
  it records the launch -- the array arguments by reference (device pointers) and the scalars by value, frozen as
  CUDA freezes kernel parameters -- and refuses a call that would allocate an output;
- cuBLAS: :attr:`FakeCuda.cublas` is a stand-in library with the five functions gpunet's binding calls
  (:class:`gpunet.backend.cublas.Gemm` runs unchanged on it, its layout logic included). ``cublasGemmEx`` computes
  the column-major product on the host pointers it is given; during a capture it records the call, with alpha and
  beta read at once (host pointer mode), and raises if the handle's stream is not the capturing stream or if no
  workspace was set after the stream (cuBLAS would then allocate inside the graph);
- the runtime: ``stream()``, ``capture(stream, pool, out)``, ``launch(graph, stream)`` as
  :class:`gpunet.backend.graphs.CupyRuntime` has them. ``launch`` replays the recorded launches in order.

During a capture, host reads and allocations raise :class:`CaptureError`: every function of the array namespace
gpunet computes with (``array_api_compat.numpy``, views excepted) and gpunet's ``to_numpy`` are replaced by ones
that raise, and NumPy allocations still alive when the capture ends (``tracemalloc``'s NumPy domain) are an error.
What this cannot see (NumPy operators on arrays that allocate nothing, ``float(a)``) leaves the recorded graph
without that work, which the tests catch as a difference from the eager run.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import sys
import tracemalloc
from pathlib import Path

import array_api_compat.numpy as anp
import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # tests/ is no package: import the helper beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_kernel import HostElementwiseKernel  # noqa: E402

VIEWS = {"reshape", "permute_dims", "asarray"}  # views (asarray of an array is the array itself here) are allowed
_C = {"float32": ctypes.c_float, "float64": ctypes.c_double}


class CaptureError(AssertionError):
    """Something a CUDA stream capture forbids happened during one."""


class FakeStream:
    _ids = itertools.count(1000)

    def __init__(self):
        self.ptr = next(self._ids)

    def __repr__(self):
        return f"FakeStream({self.ptr})"


class FakeGraph:
    def __init__(self, nodes):
        self.nodes = nodes

    def __len__(self):
        return len(self.nodes)


class FakeCuda:
    """See the module docstring. ``kernel`` and ``cublas`` are what :class:`gpunet.backend.cuda_ops.CupyOps` and
    :class:`gpunet.backend.cublas.Gemm` are built with; the object itself is the graphs' runtime."""

    def __init__(self):
        self.legacy = FakeStream()
        self.current = self.legacy
        self.capturing = None  # (stream, nodes) during a capture
        self.launched = 0
        runtime = self

        class Kernel(HostElementwiseKernel):
            def __call__(self, *args, size=None):
                if runtime.capturing is None:
                    return super().__call__(*args, size=size)
                if len(args) != self.nin + self.nout:
                    raise CaptureError(f"{self.name}: a kernel call during capture that allocates its outputs "
                                       f"({len(args) - self.nin} of {self.nout} given)")
                frozen = tuple(a if isinstance(a, np.ndarray) else type(a)(a) for a in args)
                runtime.capturing[1].append((self.name, lambda: HostElementwiseKernel.__call__(self, *frozen,
                                                                                                size=size)))
                outputs = args[self.nin:]
                return outputs[0] if self.nout == 1 else tuple(outputs)

        self.kernel = Kernel
        self.cublas = FakeCublas(self)

    def gemm(self):
        """A :class:`gpunet.backend.cublas.Gemm` over the fake library, on this runtime's current stream."""
        from gpunet.backend.cublas import Gemm

        def workspace(nbytes):
            keep = np.zeros(nbytes // 8, np.float64)
            return keep.ctypes.data, keep

        return Gemm(lib=self.cublas, current_stream=lambda: self.current.ptr, workspace=workspace,
                    device_id=lambda: 0)

    # -- the runtime of gpunet.backend.graphs ---------------------------------------------------------------------
    def stream(self):
        return FakeStream()

    def memory_pool(self):
        return object()

    @contextlib.contextmanager
    def on(self, stream):
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous

    @contextlib.contextmanager
    def capture(self, stream, pool, out: list):
        if stream is self.legacy:
            raise CaptureError("cannot capture on the legacy default stream")
        previous, self.current = self.current, stream
        self.capturing = (stream, [])
        guards = _forbid_host_work()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        try:
            yield
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
            guards.close()
            nodes = self.capturing[1]
            self.capturing, self.current = None, previous
        domain = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
        grown = [s for s in after.filter_traces(domain).compare_to(before.filter_traces(domain), "traceback")
                 if s.size_diff > 0]
        if grown:
            raise CaptureError(f"device memory allocated during capture: {grown[0].size_diff} bytes at\n"
                               + "\n".join(grown[0].traceback.format()))
        out.append(FakeGraph(nodes))

    def launch(self, graph, stream) -> None:
        for _, node in graph.nodes:
            node()
        self.launched += 1

    def synchronize(self, stream) -> None:
        pass

    def device_synchronize(self) -> None:
        pass


def _forbid_host_work():
    """Replace the array namespace's functions (but views) and gpunet's host reads by ones that raise; returns an
    ExitStack that puts them back."""
    from gpunet.backend.devices import to_numpy

    stack = contextlib.ExitStack()

    def refuse(name):
        def call(*args, **kwargs):
            raise CaptureError(f"{name}() during capture: host computation or a host read of device arrays")
        return call

    for name in dir(anp):
        value = getattr(anp, name)
        if callable(value) and not name.startswith("_") and name not in VIEWS and not isinstance(value, type):
            stack.enter_context(_patched(anp, name, refuse(f"xp.{name}")))
    for name, module in list(sys.modules.items()):  # every binding of gpunet's to_numpy
        if name.split(".")[0] == "gpunet" and getattr(module, "to_numpy", None) is to_numpy:
            stack.enter_context(_patched(module, "to_numpy", refuse("to_numpy")))
    return stack


@contextlib.contextmanager
def _patched(obj, name, value):
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


class FakeCublas:
    """The cuBLAS functions :class:`gpunet.backend.cublas.Gemm` calls, on host pointers (see the module docstring).
    ``calls`` lists every executed ``cublasGemmEx`` as a dict of its arguments."""

    _DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 14: "bfloat16"}

    def __init__(self, runtime: FakeCuda):
        self.runtime = runtime
        self.handles: dict = {}
        self.calls: list = []
        self._ids = itertools.count(1)

    def cublasCreate_v2(self, ref):
        handle = next(self._ids)
        ref._obj.value = handle
        self.handles[handle] = {"stream": 0, "workspace": None}
        return 0

    def cublasDestroy_v2(self, handle):
        self.handles.pop(handle, None)
        return 0

    def cublasSetMathMode(self, handle, mode):
        return 0

    def cublasSetStream_v2(self, handle, stream):
        self.handles[handle].update(stream=stream, workspace=None)  # cuBLAS resets the workspace here too
        return 0

    def cublasSetWorkspace_v2(self, handle, pointer, nbytes):
        self.handles[handle]["workspace"] = (pointer, nbytes)
        return 0

    def cublasGemmEx(self, handle, transa, transb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C, c_type,
                     ldc, compute, algo):
        state = self.handles[handle]
        scalar = ctypes.c_double if compute == 70 else ctypes.c_float
        args = dict(transa=transa, transb=transb, m=m, n=n, k=k, alpha=scalar.from_address(alpha).value, A=A,
                    a_type=a_type, lda=lda, B=B, b_type=b_type, ldb=ldb, beta=scalar.from_address(beta).value, C=C,
                    c_type=c_type, ldc=ldc, compute=compute)
        capturing = self.runtime.capturing
        if capturing is not None:
            if state["stream"] != capturing[0].ptr:
                raise CaptureError(f"cublasGemmEx on stream {state['stream']} while stream {capturing[0].ptr} is "
                                   f"capturing: the product would not be in the graph")
            if state["workspace"] is None:
                raise CaptureError("cublasGemmEx during capture without cublasSetWorkspace after the stream: cuBLAS "
                                   "would allocate its workspace inside the graph")
            capturing[1].append(("cublasGemmEx", lambda: self._gemm(**args)))
            return 0
        self._gemm(**args)
        return 0

    def _matrix(self, pointer, dtype_code, rows, cols, ld):
        """The column-major ``rows x cols`` matrix at ``pointer`` with leading dimension ``ld``, as float64."""
        dtype = self._DTYPES[dtype_code]
        if dtype == "bfloat16":
            import ml_dtypes

            dtype = ml_dtypes.bfloat16
        dtype = np.dtype(dtype)
        count = (cols - 1) * ld + rows if rows and cols else 0
        raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(pointer)
        flat = np.frombuffer(raw, dtype=dtype, count=count)
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (dtype.itemsize, ld * dtype.itemsize))

    def _gemm(self, *, transa, transb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C, c_type, ldc,
              compute):
        self.calls.append(dict(transa=transa, transb=transb, m=m, n=n, k=k, lda=lda, ldb=ldb, ldc=ldc,
                               compute=compute, a_type=a_type, c_type=c_type))
        op_a = self._matrix(A, a_type, *((m, k) if transa == 0 else (k, m)), lda)
        op_b = self._matrix(B, b_type, *((k, n) if transb == 0 else (n, k)), ldb)
        op_a, op_b = (op_a if transa == 0 else op_a.T), (op_b if transb == 0 else op_b.T)
        c = self._matrix(C, c_type, m, n, ldc)
        work = np.float64 if compute == 70 else np.float32  # float32 (or float64) products of the stored inputs
        product = np.matmul(op_a.astype(work), op_b.astype(work))
        if alpha != 1.0:
            product = product * work(alpha)
        if beta != 0.0:
            product = product + work(beta) * c.astype(work)
        writable = np.lib.stride_tricks.as_strided(
            np.frombuffer((ctypes.c_uint8 * (((n - 1) * ldc + m) * c.itemsize)).from_address(C), dtype=c.dtype),
            (m, n), (c.itemsize, ldc * c.itemsize))
        writable[...] = product.astype(c.dtype)
