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
    assert kernels or "template <typename F" in text, f"{name} defines no template function"
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
