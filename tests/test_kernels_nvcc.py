"""nvcc compiles every kernel source for the GPU: each ``kernels/*.cuh`` as included, and as the include-inlined text
that CuPy hands NVRTC (``gpunet.backend.kernel_sources.kernel_source``).

For each source the test writes a ``.cu`` file with one ``extern "C" __global__`` kernel per template function and
dtype (float and double) that calls the function on element i of its arrays, so that nvcc really generates device
code for every instantiation; ``nvcc -c`` builds it for sm_90 and sm_80 in one call, and ptxas' report
(``--resource-usage``) must list every kernel for both. Needs no GPU; skipped where nvcc is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from gpunet.backend import kernel_sources


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    default = "/usr/local/cuda/bin/nvcc"
    return default if os.access(default, os.X_OK) else None


NVCC = _find_nvcc()
pytestmark = [
    pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH nor at /usr/local/cuda/bin/nvcc: the CUDA toolkit "
                                            "is not installed, so the kernel sources cannot be compiled for the GPU"),
    pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                       reason="nvcc needs a host C++ compiler (g++ or c++) and none is on PATH"),
]

ARCHS = ("sm_90", "sm_80")
FILES = kernel_sources.kernel_files()

# `template <typename T> GN_FN <result> gn_<name>(<params>)`, as in kernels/README.md (GN_FN optional here, so that
# a function missing it, host-only under nvcc, fails to compile instead of going unnoticed)
_TEMPLATE_FN = re.compile(r"template\s*<\s*typename\s+T\s*>\s*(?:GN_FN\s+)?(\w+)\s+(gn_\w+)\s*\(([^)]*)\)")


def check_kernels(text: str) -> tuple[str, list[str]]:
    """CUDA C++ of one ``check_<function>_<float|double>`` kernel per template function defined in ``text``, and the
    kernels' names. Parameters ``T x`` and ``bool x`` become const arrays, ``T& x`` arrays written in place."""
    lines, names = [], []
    for result, name, params in _TEMPLATE_FN.findall(text):
        for ctype in ("float", "double"):
            decl, call = ["long n"], []
            for k, param in enumerate(params.split(",")):
                base = param.replace("&", " ").split()[0]
                typ = ctype if base == "T" else base
                decl.append(f"{typ}* x{k}" if "&" in param else f"const {typ}* x{k}")
                call.append(f"x{k}[i]")
            body = f"{name}({', '.join(call)});"
            if result != "void":
                decl.append(f"{ctype}* out")
                body = f"out[i] = {body}"
            kernel = f"check_{name}_{ctype}"
            names.append(kernel)
            lines.append(f'extern "C" __global__ void {kernel}({", ".join(decl)}) {{\n'
                         f"    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;\n"
                         f"    if (i < n) {body}\n}}")
    return "\n".join(lines) + "\n", names


def nvcc_compile(tmp_path, source: str, kernels: list[str], include_dir=None):
    """Compile ``source`` for every arch in ARCHS in one nvcc call; ptxas must report each kernel for each arch."""
    cu = tmp_path / "check.cu"
    cu.write_text(source, encoding="utf-8")
    command = [NVCC, "-c", "-std=c++17", "--resource-usage", str(cu), "-o", str(tmp_path / "check.o")]
    for arch in ARCHS:
        command += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    if include_dir is not None:
        command += ["-I", str(include_dir)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    report = built.stdout + built.stderr
    assert built.returncode == 0, f"{' '.join(command)} failed:\n{report}"
    assert "warning" not in report.lower(), report
    missing = [(kernel, arch) for kernel in kernels for arch in ARCHS
               if f"Compiling entry function '{kernel}' for '{arch}'" not in report]
    assert not missing, f"no device code generated for {missing}:\n{report}"


@pytest.mark.parametrize("name", FILES)
def test_nvcc_compiles_included_source(tmp_path, name):
    """``#include "<name>"`` with ``-I kernels``: every template function of the file, for float and double."""
    kernels_dir = kernel_sources.kernels_dir()
    text = (kernels_dir / name).read_text(encoding="utf-8")
    code, kernels = check_kernels(text)
    # (functions over raw pointers, `template <typename F, ...>`, are compiled in the declarations test below)
    assert kernels or re.search(r"template <typename (F|Act)", text), f"{name} defines no template function"
    if not kernels:
        code, kernels = 'extern "C" __global__ void check_empty() {}\n', ["check_empty"]
    nvcc_compile(tmp_path, f'#include "{name}"\n' + code, kernels, include_dir=kernels_dir)


@pytest.mark.parametrize("name", FILES)
def test_nvcc_compiles_inlined_source(tmp_path, name):
    """``kernel_source(name)``, the preamble CuPy gets (NVRTC has no include path): self-contained, preprocessing
    with no include path under ``__CUDACC_RTC__``, and compiling with no ``-I``, every template function in it (the
    file's and the included helpers') instantiated."""
    text = kernel_sources.kernel_source(name)
    assert not re.search(r'#\s*include\s*"', text), "a local #include survived the inlining"
    assert not re.search(r"#\s*pragma\s+once", text)
    # NVRTC defines __CUDACC_RTC__ and has no host headers: under it the text must need no include at all
    cxx = shutil.which("g++") or shutil.which("c++")
    rtc = subprocess.run([cxx, "-E", "-P", "-nostdinc", "-D__CUDACC_RTC__", "-x", "c++", "-"], input=text,
                         capture_output=True, text=True)
    assert rtc.returncode == 0, f"the NVRTC branch of {name} includes a header:\n{rtc.stderr}"
    code, kernels = check_kernels(text)
    nvcc_compile(tmp_path, text + "\n" + code, kernels)


# -- every kernel CupyOps declares, as CuPy generates it ----------------------------------------------------------------
# CuPy's float16 / bfloat16 device classes (cupy/_core/include/cupy/float16.cuh, bfloat16.cuh) reduced to what the
# kernels use: made from float (round to nearest even), read as float
_CUPY_PRELUDE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
struct float16 {
    __half d;
    __device__ float16() {}
    __device__ float16(float v) : d(__float2half(v)) {}
    explicit __device__ float16(double v) : d(__double2half(v)) {}
    __device__ operator float() const { return __half2float(d); }
};
struct bfloat16 {
    __nv_bfloat16 d;
    __device__ bfloat16() {}
    __device__ bfloat16(float v) : d(__float2bfloat16(v)) {}
    explicit __device__ bfloat16(double v) : d(__double2bfloat16(v)) {}
    __device__ operator float() const { return __bfloat162float(d); }
};
// CuPy's CArray<T, ndim>, as a raw parameter is indexed: a flat C-order index into a contiguous array; a 0-d
// array's element, const, by value (as carray.cuh's ndim = 0 specialisation)
template <typename T, int ndim> struct CArray {
    T* data_;
    __device__ T& operator[](ptrdiff_t i) { return data_[i]; }
    __device__ const T& operator[](ptrdiff_t i) const { return data_[i]; }
};
template <typename T> struct CArray<T, 0> {
    T* data_;
    __device__ T& operator[](ptrdiff_t) { return *data_; }
    __device__ T operator[](ptrdiff_t) const { return *data_; }
};
"""
_CUDA_TYPES = {"float32": "float", "float64": "double", "float16": "float16", "bfloat16": "bfloat16", "bool": "bool",
               "int32": "int", "int64": "long long"}


def cupy_like_kernel(declaration, types) -> str:
    """CUDA C++ of one ElementwiseKernel declaration for one assignment of its type placeholders, shaped as CuPy's
    generated code: typedefs, the preamble, one ``extern "C" __global__`` function whose raw parameters are
    ``CArray``s (``const`` for inputs) and whose other arrays are bound per element before the operation."""
    from host_kernel import parse_params

    in_params, out_params = parse_params(declaration["in_params"]), parse_params(declaration["out_params"])
    typedefs = [f"typedef {_CUDA_TYPES[dtype]} {name};" for name, dtype in sorted(types.items())
                if _CUDA_TYPES[dtype] != name]
    signature, binds = [], []
    for p, is_input in [(p, True) for p in in_params] + [(p, False) for p in out_params]:
        const = "const " if is_input else ""
        ctype = p.type_name if p.dtype is None else _CUDA_TYPES[p.dtype.name]  # CuPy: float64 -> double, ...
        if p.raw:
            signature.append(f"{const}CArray<{ctype}, {declaration['ndims'][p.name]}> {p.name}")
        elif is_input and p.name in declaration["scalars"]:
            signature.append(f"const {ctype} {p.name}")
        else:
            signature.append(f"{const}{ctype}* _raw_{p.name}")
            binds.append(f"{const}{ctype}& {p.name} = _raw_{p.name}[i];")
    body = "\n        ".join([*binds, declaration["operation"] + ";"])
    return "\n".join([*typedefs, declaration["preamble"],
                      f'extern "C" __global__ void {declaration["name"]}({", ".join(signature + ["long long _n"])}) {{',
                      "    for (ptrdiff_t i = blockIdx.x * (ptrdiff_t)blockDim.x + threadIdx.x; i < _n;",
                      "         i += (ptrdiff_t)blockDim.x * gridDim.x) {", f"        {body}", "    }", "}", ""])


def declared_kernels():
    """Every (declaration, placeholder types) the CuPy ops make over a set of fits that exercises them all: the
    activations (kept pre-activation or not), softmax forward and backward rows, every loss with a kernel, SGD and
    Adam/AdamW (AMSGrad) with device scalars, tf32/bf16/fp16 (casts, low-copy updates, the loss scaler), captured
    steps (gather, record, accuracy)."""
    import sys
    from pathlib import Path

    import array_api_compat.numpy as anp
    import numpy as np

    import gpunet as gn
    from gpunet.backend import graphs
    from gpunet.backend.cuda_ops import CupyOps

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_cuda import FakeCuda

    cuda = FakeCuda()
    seen: dict = {}

    class Recording(cuda.kernel):
        def __call__(self, *args, size=None):
            types = {k: str(v) for k, v in self._resolve_types(args).items()}
            scalars = {p.name for p, a in zip(self.in_params, args) if not isinstance(a, np.ndarray)}
            ndims = {p.name: a.ndim for p, a in zip(self.params, args) if p.raw}
            key = (self.name, tuple(sorted(types.items())), tuple(sorted(scalars)), tuple(sorted(ndims.items())))
            seen.setdefault(key, (dict(in_params=self.in_decl, out_params=self.out_decl, operation=self.operation,
                                       name=self.name, preamble=self.preamble, scalars=scalars, ndims=ndims),
                                  types))
            return super().__call__(*args, size=size)

        def __init__(self, in_params, out_params, operation, name="kernel", preamble="", **kwargs):
            super().__init__(in_params, out_params, operation, name=name, preamble=preamble, **kwargs)
            self.in_decl, self.out_decl = in_params, out_params

    ops = CupyOps(anp, elementwise_kernel=Recording, gemm=cuda.gemm())
    saved = graphs.runtime_for
    graphs.runtime_for = lambda model: cuda
    try:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((40, 5)).astype(np.float32)
        labels = np.argmax(X[:, :3], axis=1)
        acts = [a for a in gn.activations.ACTIVATIONS if a != "softmax"]
        fits = [(("relu", "softmax"), "cce", labels, ["accuracy"], gn.optim.SGD(lr=0.1, momentum=0.9), "float32"),
                (("tanh", "sigmoid"), "bce", (labels == 0).astype(np.float32), ["accuracy"], gn.optim.SGD(lr=0.1),
                 "bf16"),
                (("gelu", "softmax"), "mse", np.eye(3)[labels], None, gn.optim.Adam(lr=0.01), "fp16"),
                (("silu", None), "mae", X[:, :3], None, gn.optim.AdamW(lr=0.01, amsgrad=True), "tf32"),
                (("elu", None), "huber", X[:, :3], None, gn.optim.Adam(lr=0.01, amsgrad=True), "bf16"),
                (("softplus", None), gn.losses.BinaryCrossEntropy(from_logits=True), (X[:, :3] > 0) * 1.0, None,
                 gn.optim.SGD(lr=0.1, momentum=0.9, nesterov=True), "fp16")]
        fits += [((act, "softmax"), "cce", labels, None, gn.optim.SGD(lr=0.1), "float32") for act in acts]
        for (hidden, output), loss, y, metrics, optimizer, precision in fits:
            for dtype in ("float32",) if precision != "float32" else ("float32", "float64"):
                model = gn.Sequential([gn.Dense(5, 8, hidden), gn.Dense(8, y.shape[1] if y.ndim == 2 else 3
                                                                        if loss == "cce" else 1, output)],
                                      dtype=dtype, seed=0)
                for layer in model.layers:
                    layer.ops = ops
                graph = dtype == "float32" and precision == "float32" or precision == "bf16"
                model.fit(X, y, loss=loss, optimizer=type(optimizer)(**optimizer.hyperparameters()), epochs=1,
                          batch_size=16, metrics=metrics, precision=precision, graph="auto" if graph else False)
    finally:
        graphs.runtime_for = saved
    return list(seen.values())


def test_nvcc_compiles_every_declared_kernel_as_cupy_generates_it(tmp_path):
    """What NVRTC will get from CuPy for each kernel the CuPy ops declare (operation, preamble, parameter kinds,
    the resolved types, raw CArrays, float16/bfloat16 outputs), compiled by nvcc for sm_90 and sm_80."""
    declarations = declared_kernels()
    names = {d["name"] for d, _ in declarations}
    assert {"gpunet_gather", "gpunet_record", "gpunet_bias_softmax_rows", "gpunet_softmax_bwd_rows",
            "gpunet_accuracy_rows", "gpunet_accuracy_columns", "gpunet_step_prepare", "gpunet_unscale_check",
            "gpunet_scaler_update", "gpunet_loss_scale", "gpunet_cast", "gpunet_sgd_momentum_dev_low",
            "gpunet_sgd_momentum_dev", "gpunet_adam_dev_low", "gpunet_adam_amsgrad_dev_w", "gpunet_mse", "gpunet_mae"} <= names, sorted(names)
    units, kernels = [], []
    for k, (declaration, types) in enumerate(declarations):
        unique = dict(declaration, name=f"{declaration['name']}_{k}")
        units.append(f"namespace k{k} {{\n{cupy_like_kernel(unique, types)}}}")
        kernels.append(unique["name"])
    # one translation unit: each kernel's typedefs and preamble in a namespace of their own (CuPy compiles each
    # kernel alone; the namespaces keep the units apart here)
    nvcc_compile(tmp_path, _CUPY_PRELUDE + "\n".join(units), kernels)


def test_nvcc_compiles_the_vectorised_raw_kernels(tmp_path):
    """The cupy.RawKernel sources CupyOps.bias_act_vec4 builds, one per activation, as NVRTC gets them."""
    import array_api_compat.numpy as anp
    import numpy as np

    from gpunet.backend.cuda_ops import CupyOps

    sources = []

    def raw_kernel(source, name):
        sources.append((source, name))
        return lambda grid, block, args: None

    ops = CupyOps(anp, elementwise_kernel=lambda *a, **k: None, raw_kernel=raw_kernel)
    for name in CupyOps.VECTOR_ACTIVATIONS:
        ops.bias_act_vec4(np.zeros((4, 8), np.float32), np.zeros(8, np.float32), name, 0.01)
    assert len(sources) == len(CupyOps.VECTOR_ACTIVATIONS)
    for k, (source, name) in enumerate(sources):
        directory = tmp_path / str(k)
        directory.mkdir()
        nvcc_compile(directory, source, [name])
