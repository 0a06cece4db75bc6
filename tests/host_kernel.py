"""``HostElementwiseKernel``: a test stand-in for ``cupy.ElementwiseKernel`` that runs on the host.

It takes the very declaration gpunet hands to CuPy (``in_params``, ``out_params``, ``operation``, ``name``,
``preamble``), and when called does what CuPy would do with it, on NumPy arrays (which play the device arrays):

- binds the arguments to the declared parameters in order: ``kernel(*inputs)`` or ``kernel(*inputs, *outputs)``;
- resolves each type placeholder (``T``) from the arrays bound to it, which must share one dtype (float32 ->
  ``float``, float64 -> ``double``); Python scalars bound to ``T`` are cast to it, scalars of concrete parameters
  (``bool nesterov``) to that type;
- broadcasts the arrays NumPy-style, allocates the outputs not passed (broadcast shape, resolved dtype; filled with
  NaN, so an operation that reads an output nobody passed in shows up), and returns the output, or a tuple of them;
- generates C++ (typedefs, the preamble, then one loop that binds ``const T x = ...`` per input and ``T& y = ...``
  per output before the ``operation``), compiles it with ``g++`` once per process and source, and runs it through
  ``ctypes``. Outputs that were passed are copied in first and written back after: kernels update them in place and
  may read them (``p = p - lr * g``).

So a test running gpunet's ``CupyOps`` on it checks the declarations, argument order, dtypes, output allocation
and scalar arguments, and the CUDA C++ math of ``kernels/*.cuh`` (the ``GN_FN`` macro makes it host C++), without
a GPU. It does not model the GPU's floating point (FMA contraction, CUDA's math library): ``-ffp-contract=off``
keeps the host's results close to NumPy's instead. ``raw`` parameters (``raw T x``: the whole array, indexed by
its flat C-order index as CuPy's ``CArray::operator[](ptrdiff_t)`` does; no broadcasting) and ``size=`` (the loop
length when no argument is elementwise) are modelled; ``return_tuple``, loop prologues and reductions are not
(NotImplementedError). float16 maps to ``_Float16`` and bfloat16 (ml_dtypes) to a 16-bit class with CuPy's
``bfloat16`` interface (constructed from float with round-to-nearest-even, read as float).

>>> import numpy as np
>>> add = HostElementwiseKernel("T x, T y", "T z", "z = x + y", name="add")
>>> add(np.arange(3.0), 10)
array([10., 11., 12.])
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CXX = os.environ.get("CXX", "g++")
CXX_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17", "-ffp-contract=off")

_C_TYPES = {  # NumPy dtype -> C++ type of the generated code
    np.dtype(np.bool_): "bool", np.dtype(np.float32): "float", np.dtype(np.float64): "double",
    **{np.dtype(f"{s}int{b}"): f"{s}int{b}_t" for s in ("", "u") for b in (8, 16, 32, 64)},
}
try:  # bfloat16 arrays exist through ml_dtypes (as in CuPy 14); without it only float16 is a 16-bit float here
    import ml_dtypes

    _C_TYPES[np.dtype(ml_dtypes.bfloat16)] = "bfloat16"
except ImportError:  # pragma: no cover
    pass
_C_TYPES[np.dtype(np.float16)] = "float16"
_CONCRETE = {dt.name: dt for dt in _C_TYPES} | {"float": np.dtype(np.float32), "double": np.dtype(np.float64)}
# CuPy's float16 and bfloat16 device classes, as the host compiler can build them
_HALF_TYPES = r"""
typedef _Float16 float16;
struct bfloat16 {
    uint16_t bits;
    bfloat16() : bits(0) {}
    bfloat16(float v) {
        uint32_t u; std::memcpy(&u, &v, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) { bits = (uint16_t)((u >> 16) | 0x40u); return; }  // NaN stays NaN
        u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
        bits = (uint16_t)(u >> 16);
    }
    explicit bfloat16(double v) : bfloat16((float)v) {}
    operator float() const { uint32_t u = (uint32_t)bits << 16; float f; std::memcpy(&f, &u, 4); return f; }
};
"""


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared parameter: ``dtype`` is its concrete type, or None for a type placeholder such as ``T``."""

    type_name: str
    name: str
    dtype: np.dtype | None
    raw: bool = False


def parse_params(text: str) -> tuple[Param, ...]:
    """``"T b, T a"`` -> parameters; ``""`` -> none."""
    params = []
    for item in filter(str.strip, text.split(",")):
        tokens = item.split()
        raw = tokens[0] == "raw"
        tokens = tokens[1:] if raw else tokens
        if len(tokens) != 2 or not all(t.isidentifier() for t in tokens):
            raise ValueError(f"cannot parse parameter {item.strip()!r}: expected 'TYPE NAME'")
        if tokens[1] == "i" or tokens[1].startswith("_"):  # the generated code's own names
            raise ValueError(f"parameter name {tokens[1]!r} is reserved (the index i, or a leading underscore)")
        params.append(Param(tokens[0], tokens[1], _CONCRETE.get(tokens[0]), raw))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate parameter names in {text!r}")
    return tuple(params)


class HostElementwiseKernel:
    """``cupy.ElementwiseKernel``'s constructor and call, compiled and run on the host (see the module docs)."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel", preamble: str = "",
                 **kwargs):
        self.in_params, self.out_params = parse_params(in_params), parse_params(out_params)
        self.params = self.in_params + self.out_params
        if not self.out_params:
            raise ValueError(f"{name}: an elementwise kernel needs at least one output")
        if len({p.name for p in self.params}) != len(self.params):
            raise ValueError(f"{name}: an input and an output share a name")
        unsupported = set(kwargs) - {"options", "reduce_dims"}  # these two change how, not what, CuPy computes
        if unsupported:
            raise NotImplementedError(f"{name}: the host stand-in does not model {sorted(unsupported)}")
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.operation, self.name, self.preamble = operation, name, preamble

    def __repr__(self) -> str:
        return f"HostElementwiseKernel({self.name!r})"

    def __call__(self, *args, size=None, **kwargs):
        if kwargs:
            raise NotImplementedError(f"{self.name}: keyword arguments {sorted(kwargs)} are not supported")
        if len(args) not in (self.nin, self.nin + self.nout):
            raise TypeError(f"{self.name}: wrong number of arguments: {len(args)} given, expected {self.nin} inputs"
                            f" (+ {self.nout} outputs)")
        for k, (p, a) in enumerate(zip(self.params, args)):
            if not (isinstance(a, np.ndarray) or (_is_scalar(a) and k < self.nin)):
                kinds = "an array or a scalar" if k < self.nin else "an array"
                raise TypeError(f"{self.name}: argument {p.name!r} must be {kinds}; received {type(a).__name__}")
        placeholders = self._resolve_types(args)
        dtypes = [p.dtype or placeholders[p.type_name] for p in self.params]
        raws = [p.raw for p in self.params]
        arrays = [a for a, raw in zip(args, raws) if isinstance(a, np.ndarray) and not raw]
        if any(p.raw for p in self.out_params[len(args) - self.nin:]):
            raise ValueError(f"{self.name}: raw outputs must be passed (their shape is not known)")
        if size is not None and arrays:
            raise ValueError(f"{self.name}: size= is given but the kernel has elementwise array arguments")
        if size is None and not arrays:
            raise ValueError(f"{self.name}: loop size cannot be determined (no elementwise array argument, no size=)")
        try:
            shape = (int(size),) if size is not None else np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError:
            raise ValueError(f"{self.name}: the arguments' shapes {[a.shape for a in arrays]} cannot be broadcast "
                             f"together") from None
        outputs = list(args[self.nin:])
        for p, out, dtype in zip(self.out_params, outputs, dtypes[self.nin:]):
            if p.raw:
                if out.dtype != dtype:
                    raise ValueError(f"{self.name}: raw output {p.name!r} is {out.dtype}, the kernel writes {dtype}")
                continue
            if out.shape != shape or out.dtype != dtype:
                raise ValueError(f"{self.name}: output {p.name!r} is {out.dtype}{list(out.shape)} but the kernel "
                                 f"writes {dtype}{list(shape)}")
        # the kernel's arguments: contiguous (broadcast) copies of arrays, scalars by value, then the outputs
        values = [(np.ascontiguousarray(a, dtype) if raw else np.ascontiguousarray(np.broadcast_to(a, shape), dtype))
                  if isinstance(a, np.ndarray) else dtype.type(a) for a, dtype, raw in zip(args[:self.nin], dtypes, raws)]
        buffers = [np.array(out, order="C", copy=True) for out in outputs]
        buffers += [_new_output(shape, dtype) for dtype in dtypes[self.nin + len(outputs):]]
        is_array = tuple(isinstance(v, np.ndarray) for v in values)
        run = _compile(self.source(placeholders, is_array), self.name).run
        run.restype = None
        run.argtypes = [ctypes.c_size_t] + [ctypes.c_void_p if arr else np.ctypeslib.as_ctypes_type(dt)
                                            for arr, dt in zip(is_array, dtypes)] + [ctypes.c_void_p] * self.nout
        loop = int(np.prod(shape))
        if loop:
            run(loop, *[v.ctypes.data if arr else v.item() for v, arr in zip(values, is_array)],
                *[b.ctypes.data for b in buffers])
        for out, buf in zip(outputs, buffers):
            out[...] = buf
        results = outputs + buffers[len(outputs):]
        return results[0] if self.nout == 1 else tuple(results)

    def _resolve_types(self, args) -> dict[str, np.dtype]:
        """Each placeholder's dtype: that of the arrays bound to it (all equal), else NumPy's for its scalars."""
        types: dict[str, np.dtype] = {}
        for p, a in zip(self.params, args):
            if p.dtype is None and isinstance(a, np.ndarray):
                if types.setdefault(p.type_name, a.dtype) != a.dtype:
                    raise TypeError(f"{self.name}: type is mismatched: {p.name!r} is {a.dtype} but "
                                    f"{p.type_name} is {types[p.type_name]}")
        for p, a in zip(self.params, args):
            if p.dtype is None and p.type_name not in types:
                types[p.type_name] = np.result_type(a)
        missing = {p.type_name for p in self.params if p.dtype is None} - set(types)
        if missing:
            raise TypeError(f"{self.name}: cannot determine the type of {sorted(missing)} from the arguments")
        unsupported = {n: str(dt) for n, dt in types.items() if dt not in _C_TYPES}
        if unsupported:
            raise TypeError(f"{self.name}: the host stand-in has no C++ type for {unsupported}")
        return types

    def source(self, placeholders: dict[str, np.dtype], is_array: tuple[bool, ...]) -> str:
        """The C++ translation unit for these placeholder types and array/scalar inputs."""
        signature, binds = ["size_t _n"], []
        for p, arr in zip(self.in_params, is_array):
            if arr and p.raw:
                signature.append(f"const {p.type_name}* {p.name}")
            elif arr:
                signature.append(f"const {p.type_name}* _in_{p.name}")
                binds.append(f"const {p.type_name} {p.name} = _in_{p.name}[i];")
            else:
                signature.append(f"const {p.type_name} {p.name}")
        for p in self.out_params:
            if p.raw:
                signature.append(f"{p.type_name}* {p.name}")
                continue
            signature.append(f"{p.type_name}* _out_{p.name}")
            binds.append(f"{p.type_name}& {p.name} = _out_{p.name}[i];")
        concrete = {p.type_name: p.dtype for p in self.params if p.dtype is not None}
        typedefs = [f"typedef {_C_TYPES[dt]} {name};" for name, dt in (placeholders | concrete).items()
                    if _C_TYPES[dt] != name]
        body = "\n".join(f"        {line}" for line in [*binds, f"{self.operation};"])
        return "\n".join(["#include <cstddef>", "#include <cstdint>", "#include <cstring>", _HALF_TYPES, *typedefs, f"// {self.name}", self.preamble,
                          f'extern "C" void run({", ".join(signature)}) {{',
                          "    for (ptrdiff_t i = 0; i < (ptrdiff_t)_n; ++i) {", body, "    }", "}", ""])


def _is_scalar(a) -> bool:
    return isinstance(a, (bool, int, float, np.bool_, np.integer, np.floating))


def _new_output(shape, dtype: np.dtype) -> np.ndarray:
    return np.full(shape, np.nan, dtype) if dtype.kind == "f" else np.zeros(shape, dtype)


_LIBRARIES: dict[str, ctypes.CDLL] = {}  # source hash -> loaded library, for this process
_BUILD_DIR: Path | None = None


def _compile(source: str, name: str) -> ctypes.CDLL:
    """The shared library built from ``source`` (compiled on first request in this process)."""
    global _BUILD_DIR
    key = hashlib.sha256(source.encode()).hexdigest()[:20]
    library = _LIBRARIES.get(key)
    if library is None:
        if _BUILD_DIR is None:
            _BUILD_DIR = Path(tempfile.mkdtemp(prefix="gpunet-host-kernels-"))
            atexit.register(shutil.rmtree, _BUILD_DIR, ignore_errors=True)
        cpp, so = _BUILD_DIR / f"{key}.cpp", _BUILD_DIR / f"{key}.so"
        cpp.write_text(source)
        done = subprocess.run([CXX, *CXX_FLAGS, "-o", str(so), str(cpp)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{CXX} could not compile kernel {name!r} ({cpp}):\n{done.stderr}")
        library = _LIBRARIES[key] = ctypes.CDLL(str(so))
    return library


class HostRawKernel:
    """A test stand-in for ``cupy.RawKernel(source, name)``: the CUDA source compiled by the host compiler with the
    launch built around it (``__global__`` empty, ``blockIdx``/``threadIdx``/``blockDim``/``gridDim`` globals set by
    a loop over every block and thread of the launch), so the kernel's indexing runs on NumPy arrays. Threads run
    one after another: kernels whose threads race or synchronise are out of its reach. The signature is read from
    the ``extern "C" __global__ void <name>(...)`` line: pointers take arrays, other parameters NumPy scalars."""

    _C_SCALARS = {"float": ctypes.c_float, "double": ctypes.c_double, "long long": ctypes.c_longlong,
                  "int": ctypes.c_int, "bool": ctypes.c_bool}

    def __init__(self, source: str, name: str, **kwargs):
        import re

        match = re.search(r'extern\s+"C"\s+__global__\s+void\s+' + re.escape(name) + r"\s*\(([^)]*)\)", source)
        if match is None:
            raise ValueError(f"no extern \"C\" __global__ function {name!r} in the source")
        self.source, self.name = source, name
        self.params = [p.strip() for p in match.group(1).split(",") if p.strip()]
        self.names = [p.replace("*", " ").split()[-1] for p in self.params]

    def __call__(self, grid, block, args):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        driver = "\n".join([
            "#include <cstddef>", "#include <cstdint>", "struct gn_dim3 { long long x = 0, y = 0, z = 0; };",
            "static gn_dim3 blockIdx, threadIdx, blockDim, gridDim;", "#define __global__", self.source,
            f'extern "C" void gn_launch(long long _blocks, long long _threads, {", ".join(self.params)}) {{',
            "    blockDim.x = _threads; gridDim.x = _blocks;",
            "    for (long long _b = 0; _b < _blocks; ++_b) for (long long _t = 0; _t < _threads; ++_t) {",
            f"        blockIdx.x = _b; threadIdx.x = _t; {self.name}({', '.join(self.names)});", "    }", "}", ""])
        library = _compile(driver, self.name)
        run = library.gn_launch
        run.restype = None
        types, values = [ctypes.c_longlong, ctypes.c_longlong], []
        for param, a in zip(self.params, args):
            if "*" in param:
                if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
                    raise TypeError(f"{self.name}: {param} takes a C-contiguous array; received {type(a).__name__}")
                types.append(ctypes.c_void_p)
                values.append(a.ctypes.data)
            else:
                ctype = self._C_SCALARS[param.rsplit(" ", 1)[0].replace("const ", "").strip()]
                types.append(ctype)
                values.append(a.item() if hasattr(a, "item") else a)
        run.argtypes = types
        run(int(grid[0]), int(block[0]), *values)
