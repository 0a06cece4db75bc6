"""The host twin of the CUDA kernels: ``kernels/*.cuh`` built with the host C++ compiler and run on NumPy arrays.

The test writes a C++ harness with one ``extern "C"`` loop per template function and dtype, generated from the
signatures it reads in the sources themselves (``T x`` -> an input array, ``T& x`` -> an array updated in place,
``bool x`` -> a bool array, a ``T`` result -> an output array; scalars such as ``a``, ``delta`` or ``lr`` are
broadcast to arrays on the Python side), compiles it once per module with ``g++ -O2`` (no ``-ffast-math``), and calls
it through ctypes. Every function is held to the Array-API reference: :class:`gpunet.backend.Ops` on
``array_api_compat.numpy`` and the :mod:`gpunet.activations` classes, in float32 and float64, on random values and
on edge cases (signed zeros, subnormals, +-1e4, the softplus threshold, |r| = delta, probabilities 0 and 1, NaN
and infinities).

NaN: wherever the reference yields NaN the kernel must too, and nowhere else; infinities must match with their sign.
No function needs an exception. Two cases look surprising but hold on both sides: ``clamped_log`` maps NaN to -100,
so a NaN probability gives a finite (100) binary cross-entropy loss with a NaN gradient; and for a NaN saved output
``y`` the ``relu`` and ``elu`` derivatives pass ``dy`` on (``y <= 0`` is false, as in torch's threshold_backward
and elu_backward) while ``leaky_relu``'s gives ``a dy`` (``y > 0`` is false, as torch tests ``z > 0``). The sign
of a zero result is not compared.

Mutations of the sources (a changed constant, a wrong branch condition, a dropped term, an ignored ``first`` flag or
activation parameter) make these tests fail; the few that do not are exact rewrites (``z / (1 + exp(-z))`` for
``z sigmoid(z)``, ``!(p >= 0)`` for ``!(p > 0)`` in ``gn_clamped_log``).
"""

from __future__ import annotations

import ctypes
import math
import re
import shutil
import subprocess
from dataclasses import dataclass

import array_api_compat.numpy as anp
import numpy as np
import pytest

from gpunet import activations, array_utils
from gpunet.backend import kernel_sources
from gpunet.backend import Ops
from gpunet.backend.reference import clamped_log

CXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="g++ is not on PATH: the host twin of kernels/ cannot be built")

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
REF = Ops(anp)


# -- signatures of the template functions, read from the sources ------------------------------------------------------
# `template <typename T> GN_FN <result> gn_<name>(<params>)`, as in kernels/README.md
_TEMPLATE_FN = re.compile(r"template\s*<\s*typename\s+T\s*>\s*(?:GN_FN\s+)?(\w+)\s+(gn_\w+)\s*\(([^)]*)\)")
_PARAM = re.compile(r"^(T|bool)\s*(&?)\s*\w+$")


@dataclass(frozen=True)
class Signature:
    name: str
    returns: bool  # True: returns a T; False: void (results through T& parameters)
    params: tuple  # per parameter: (type "T" or "bool", by reference)


def read_signatures() -> dict[str, Signature]:
    """Every ``template <typename T> GN_FN ... gn_*(...)`` in ``kernels/*.cuh``."""
    found = {}
    for file in kernel_sources.kernel_files():
        text = (kernel_sources.kernels_dir() / file).read_text(encoding="utf-8")
        for result, name, params in _TEMPLATE_FN.findall(text):
            assert result in ("T", "void"), f"{file}: {name} returns {result}; the harness knows T and void"
            parsed = []
            for param in params.split(","):
                match = _PARAM.match(" ".join(param.split()))
                assert match, f"{file}: {name}: the harness does not know the parameter {param.strip()!r}"
                parsed.append((match[1], match[2] == "&"))
            assert name not in found, f"{name} is defined twice"
            found[name] = Signature(name, result == "T", tuple(parsed))
    return found


SIGNATURES = read_signatures()


def harness_source(signatures) -> str:
    """C++: ``h_<function>_<float|double>(long n, x0, x1, ...[, out])`` calling the function on element i of every
    array; template arguments are deduced, as in the CuPy kernels' operations."""
    lines = [f'#include "{file}"' for file in kernel_sources.kernel_files()]
    for sig in signatures.values():
        for ctype in ("float", "double"):
            decl, call = ["long n"], []
            for k, (typ, ref) in enumerate(sig.params):
                decl.append(f"{'' if ref else 'const '}{ctype if typ == 'T' else 'bool'}* x{k}")
                call.append(f"x{k}[i]")
            body = f"{sig.name}({', '.join(call)});"
            if sig.returns:
                decl.append(f"{ctype}* out")
                body = "out[i] = " + body
            lines.append(f'extern "C" void h_{sig.name}_{ctype}({", ".join(decl)}) '
                         f"{{ for (long i = 0; i < n; ++i) {body} }}")
    return "\n".join(lines) + "\n"


class HostKernels:
    """``host(name, dtype, *args)``: run ``name`` over arrays on the host, arguments in the C++ order.

    Arrays for ``T&`` parameters must be contiguous arrays of ``dtype`` and are updated in place; other arguments
    may be scalars (broadcast). Returns the output array for functions that return a value, else None.
    """

    def __init__(self, lib, signatures):
        self.lib, self.signatures = lib, signatures

    def __call__(self, name, dtype, *args):
        dtype = np.dtype(dtype)
        sig = self.signatures[name]
        assert len(args) == len(sig.params), f"{name} takes {len(sig.params)} arguments, given {len(args)}"
        n = max(np.size(a) for a in args)
        arrays = []
        for arg, (typ, ref) in zip(args, sig.params):
            if ref:
                assert isinstance(arg, np.ndarray) and arg.dtype == dtype and arg.shape == (n,)
                assert arg.flags.c_contiguous and arg.flags.writeable
                arrays.append(arg)
            else:
                arrays.append(np.ascontiguousarray(np.broadcast_to(np.asarray(arg, dtype if typ == "T" else bool), n)))
        if sig.returns:
            arrays.append(np.full(n, np.nan, dtype))
        fn = getattr(self.lib, f"h_{name}_{C_TYPES[dtype]}")
        fn.restype = None
        fn.argtypes = [ctypes.c_long] + [np.ctypeslib.ndpointer(a.dtype, ndim=1, flags="C_CONTIGUOUS") for a in arrays]
        fn(n, *arrays)
        return arrays[-1] if sig.returns else None


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The harness built once for this module."""
    folder = tmp_path_factory.mktemp("kernels_host")
    source = folder / "harness.cpp"
    source.write_text(harness_source(SIGNATURES), encoding="utf-8")
    library = folder / "libgpunet_host_twin.so"
    command = [CXX, "-O2", "-shared", "-fPIC", "-std=c++17", "-Wall", "-I", str(kernel_sources.kernels_dir()),
               str(source), "-o", str(library)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, f"{' '.join(command)} failed:\n{built.stderr}"
    return HostKernels(ctypes.CDLL(str(library)), SIGNATURES)


def test_float_instantiations_compute_in_float():
    """No double arithmetic in the float instantiations (a bare ``0.5 * z`` would run in double on the GPU, slowly):
    the harness compiles with ``-Wdouble-promotion -Wfloat-conversion -Werror``."""
    command = [CXX, "-fsyntax-only", "-std=c++17", "-Wall", "-Wdouble-promotion", "-Wfloat-conversion", "-Werror",
               "-I", str(kernel_sources.kernels_dir()), "-x", "c++", "-"]
    checked = subprocess.run(command, input=harness_source(SIGNATURES), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# -- inputs and comparison --------------------------------------------------------------------------------------------
def edge_values(dtype) -> np.ndarray:
    fi = np.finfo(dtype)
    values = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e4, -1e4, 20.0, -20.0, 20 - 1e-3, 20 + 1e-3, -20 - 1e-3, -20 + 1e-3,
              1e-3, -1e-3, 1e-7, -1e-7, 1e-20, -1e-20, fi.eps, -fi.eps, fi.tiny, -fi.tiny,
              fi.smallest_subnormal, -fi.smallest_subnormal, fi.max, -fi.max, np.nan, np.inf, -np.inf]
    return np.array(values, dtype)


def values(dtype, seed=0, n=2000) -> np.ndarray:
    """The edge values followed by random ones: most within +-12, some to +-40 (past the softplus threshold)."""
    rng = np.random.default_rng(seed)
    random = np.concatenate([rng.normal(0.0, 4.0, n - 400), rng.uniform(-40.0, 40.0, 400)])
    return np.concatenate([edge_values(dtype), random.astype(dtype)])


def sprinkle(a, dtype, every=101) -> np.ndarray:
    """``a`` with edge values written at every ``every``-th element (so they meet many partners)."""
    a = np.array(a, dtype)
    edges = edge_values(dtype)
    idx = np.arange(0, a.size, every)
    a[idx] = edges[np.arange(idx.size) % edges.size]
    return a


# Relative tolerance: host libm and NumPy's (SIMD) math functions differ by an ulp or two (measured: <= 2 ulp).
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-13}
# Results that cancel to near zero (GELU's 1 + tanh(u) for large negative u, SiLU's derivative at its zero
# crossing, sigmoid(z) - t) carry the rounding of their terms: an absolute slack of ATOL_EPS eps times the terms' size.
ATOL_EPS = 16


def term_size(*factors) -> np.ndarray:
    """``terms`` for :func:`assert_close`: the product of the factors in float64, each capped at 1e4 (beyond that
    the results no longer cancel), 1 where not finite (selected branches, whose results are compared exactly)."""
    with np.errstate(all="ignore"):
        size = np.prod([np.minimum(np.abs(np.asarray(f, np.float64)), 1e4) for f in factors], axis=0)
    return np.where(np.isfinite(size), size, 1.0)


def assert_close(actual, expected, dtype, what, *, terms=0.0):
    """The kernel's ``actual`` equals the reference's ``expected``: NaN exactly where it is NaN, the same infinities,
    and finite values within ``RTOL |expected| + ATOL_EPS eps terms`` (plus 4 subnormal ulps, for subnormal results)."""
    dtype = np.dtype(dtype)
    expected = np.asarray(expected)
    assert expected.dtype == dtype, f"{what}: the reference returned {expected.dtype} for {dtype} inputs"
    assert actual.dtype == dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isinf(actual) * np.sign(actual), np.isinf(expected) * np.sign(expected),
                                  err_msg=f"{what}: infinities")
    finite = np.isfinite(expected)
    a, e = actual[finite].astype(np.float64), expected[finite].astype(np.float64)
    fi = np.finfo(dtype)
    terms = np.broadcast_to(terms, expected.shape)[finite]
    bound = RTOL[dtype] * np.abs(e) + ATOL_EPS * fi.eps * terms + 4 * fi.smallest_subnormal
    bad = ~(np.abs(a - e) <= bound)
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        raise AssertionError(f"{what}: {bad.sum()} of {a.size} elements differ beyond tolerance; inputs at "
                             f"{np.flatnonzero(finite)[i]}: kernel {a[i]}, reference {e[i]}, bound {bound[i]}")


# -- coverage: every function in the sources has a test here ----------------------------------------------------------
ELEMENTWISE = [name for name, cls in activations.ACTIVATIONS.items() if cls.elementwise]
HELPERS = ["gn_sign", "gn_sigmoid", "gn_clamped_log", "gn_gelu_clamp"]
LOSSES = ["gn_huber", "gn_bce_logits", "gn_bce_sigmoid", "gn_cce_softmax", "gn_mse", "gn_mae"]
OPTIMIZERS = ["gn_sgd", "gn_sgd_momentum", "gn_adam", "gn_adam_amsgrad"]


def test_every_kernel_function_is_tested():
    tested = set(HELPERS + LOSSES + OPTIMIZERS)
    tested |= {f"gn_{name}_{step}" for name in ELEMENTWISE for step in ("fwd", "bwd")}
    assert set(SIGNATURES) == tested, (f"untested kernel functions: {sorted(set(SIGNATURES) - tested)}; "
                                       f"tested but missing from kernels/: {sorted(tested - set(SIGNATURES))}")


def test_activation_signatures():
    """``gn_<name>_fwd(z, a)`` and ``gn_<name>_bwd(dy, saved, a)`` for every elementwise activation: the shapes
    gpunet/cuda_ops.py calls."""
    for name in ELEMENTWISE:
        assert SIGNATURES[f"gn_{name}_fwd"] == Signature(f"gn_{name}_fwd", True, (("T", False),) * 2)
        assert SIGNATURES[f"gn_{name}_bwd"] == Signature(f"gn_{name}_bwd", True, (("T", False),) * 3)


# -- helpers of gpunet_common.cuh -------------------------------------------------------------------------------------
HELPER_REFERENCE = {"gn_sign": anp.sign, "gn_sigmoid": array_utils.sigmoid, "gn_clamped_log": clamped_log,
                    "gn_gelu_clamp": lambda z: anp.clip(z, -100.0, 100.0)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", HELPERS)
def test_helper(host, name, dtype):
    z = values(dtype)
    if name == "gn_clamped_log":  # probabilities, and their complements
        z = np.concatenate([np.abs(z), np.abs(z) / 40, 1 - np.abs(z) / 40]).astype(dtype)
    with np.errstate(all="ignore"):
        expected = HELPER_REFERENCE[name](z)
    assert_close(host(name, dtype, z), expected, dtype, name)


# -- activations -----------------------------------------------------------------------------------------------------
# every activation with its defaults (leaky_relu: negative_slope 0.01, elu: alpha 1), and the parameterised ones with
# other values, so that a kernel ignoring its parameter `a` is noticed
SOFTMAX_SKIP = pytest.mark.skip(reason="softmax is not elementwise: it has no kernel (CupyOps falls back to the "
                                       "Array-API reference)")
ACTIVATION_CASES = [pytest.param(activations.get(name), id=name, marks=SOFTMAX_SKIP if name == "softmax" else ())
                    for name in activations.ACTIVATIONS]
ACTIVATION_CASES += [pytest.param(activations.LeakyReLU(0.2), id="leaky_relu(0.2)"),
                     pytest.param(activations.ELU(0.7), id="elu(0.7)")]
# (activation, step) whose results cancel to near zero: compared with the absolute slack of assert_close
CANCELLING = {("gelu", "fwd"), ("gelu", "bwd"), ("silu", "bwd")}


def kernel_param(act) -> float:
    """The kernels' ``a`` argument, as gpunet/cuda_ops.py passes it."""
    return getattr(act, "negative_slope", getattr(act, "alpha", 0.0))


def test_kernel_param_defaults():
    assert {name: kernel_param(activations.get(name)) for name in ("leaky_relu", "elu", "relu", "gelu")} == {
        "leaky_relu": 0.01, "elu": 1.0, "relu": 0.0, "gelu": 0.0}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATION_CASES)
def test_activation_forward(host, act, dtype):
    z = values(dtype)
    with np.errstate(all="ignore"):
        expected = act.forward(z)
    terms = term_size(1 + np.minimum(np.abs(z), 20)) if (act.name, "fwd") in CANCELLING else 0.0
    assert_close(host(f"gn_{act.name}_fwd", dtype, z, kernel_param(act)), expected, dtype, f"{act!r} forward",
                 terms=terms)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATION_CASES)
def test_activation_backward(host, act, dtype):
    """``gn_<name>_bwd(dy, saved, a)``: saved is z where the activation ``uses_input``, else y (the reference's y)."""
    z = values(dtype)
    dy = sprinkle(np.random.default_rng(1).normal(0.0, 2.0, z.size), dtype, every=37)
    with np.errstate(all="ignore"):
        y = act.forward(z)
        expected = act.backward(dy, z if act.uses_input else None, y)
    saved = z if act.uses_input else y
    terms = term_size(dy, 1 + np.minimum(np.abs(z), 10) ** 2) if (act.name, "bwd") in CANCELLING else 0.0
    assert_close(host(f"gn_{act.name}_bwd", dtype, dy, saved, kernel_param(act)), expected, dtype,
                 f"{act!r} backward", terms=terms)


# -- losses ----------------------------------------------------------------------------------------------------------
def targets(dtype, n, seed) -> np.ndarray:
    """Targets in [0, 1]: exactly 0 and 1, fractions, a NaN."""
    rng = np.random.default_rng(seed)
    t = np.where(rng.random(n) < 0.5, rng.integers(0, 2, n), rng.random(n)).astype(dtype)
    t[7] = np.nan
    return t


def probabilities(dtype, seed) -> np.ndarray:
    """Probabilities: exactly 0 and 1, next to them, subnormal, random; plus NaN, out of range and infinite."""
    fi = np.finfo(dtype)
    edges = [0.0, 1.0, fi.smallest_subnormal, fi.tiny, fi.eps, 1 - fi.epsneg, 1 - fi.eps, 0.5, np.exp(-100.0),
             np.exp(-101.0), 1 - np.exp(-50.0), np.nan, -0.5, 1.5, -0.0, np.inf, -np.inf]
    rng = np.random.default_rng(seed)
    random = np.concatenate([rng.random(1500), rng.random(300) ** 20, 1 - rng.random(300) ** 20])
    return np.concatenate([np.array(edges, dtype), random.astype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("delta", [1.0, 0.5, 2.75])
def test_huber(host, delta, dtype):
    r = values(dtype)
    t = np.random.default_rng(2).normal(0.0, 3.0, r.size).astype(dtype)
    p = (t + r).astype(dtype)
    # |r| exactly delta (t = 0 or a small integer, so t +- delta is exact), and just inside/outside
    t_edge = np.array([0, 0, 1, 1, -3, -3, 0, 0], dtype)
    step = np.finfo(dtype).eps * 4
    r_edge = np.array([delta, -delta, delta, -delta, delta, -delta, delta * (1 - step), delta * (1 + step)], dtype)
    p = np.concatenate([p, t_edge + r_edge]).astype(dtype)
    t = np.concatenate([t, t_edge])
    assert np.all(np.abs(p[-8:-2] - t[-8:-2]) == dtype(delta))
    scale = 1.0 / p.size
    with np.errstate(all="ignore"):
        loss_ref, grad_ref = REF.huber(p, t, delta, scale)
    loss, grad = np.full_like(p, np.nan), np.full_like(p, np.nan)
    host("gn_huber", dtype, p, t, delta, scale, loss, grad)
    assert_close(loss, loss_ref, dtype, "huber loss")
    assert_close(grad, grad_ref, dtype, "huber grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["mse", "mae"])
def test_mse_mae(host, name, dtype):
    """The kernels of the losses a captured step computes on the device: the elementwise value of
    ``gpunet.losses.MSE``/``MAE`` and the gradient of their mean."""
    from gpunet import losses

    r = values(dtype)
    t = np.random.default_rng(6).normal(0.0, 3.0, r.size).astype(dtype)
    p = (t + r).astype(dtype)
    p[:3] = t[:3]  # r = 0 exactly: MAE's gradient 0
    loss_cls = losses.MSE() if name == "mse" else losses.MAE()
    scale = 1.0 / p.size
    with np.errstate(all="ignore"):
        loss_ref = loss_cls.elementwise(p, t)
        grad_ref = loss_cls.gradient(p, t)
    loss, grad = np.full_like(p, np.nan), np.full_like(p, np.nan)
    host(f"gn_{name}", dtype, p, t, scale, loss, grad)
    assert_close(loss, loss_ref, dtype, f"{name} loss")
    assert_close(grad, grad_ref, dtype, f"{name} grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_logits(host, dtype):
    z = values(dtype)
    t = targets(dtype, z.size, seed=3)
    scale = 1.0 / z.size
    with np.errstate(all="ignore"):
        loss_ref, grad_ref = REF.bce_logits(z, t, scale)
    loss, grad = np.full_like(z, np.nan), np.full_like(z, np.nan)
    host("gn_bce_logits", dtype, z, t, scale, loss, grad)
    assert_close(loss, loss_ref, dtype, "bce_logits loss")
    assert_close(grad, grad_ref, dtype, "bce_logits grad", terms=scale)  # sigmoid(z) - t cancels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, binary", [("gn_bce_sigmoid", True), ("gn_cce_softmax", False)])
def test_cross_entropy(host, name, binary, dtype):
    p = probabilities(dtype, seed=4)
    t = targets(dtype, p.size, seed=5)
    # every edge probability against targets 0, 1 and 0.25
    n_edge = 17
    p = np.concatenate([p, np.tile(p[:n_edge], 3)])
    t = np.concatenate([t, np.repeat(np.array([0.0, 1.0, 0.25], dtype), n_edge)])
    scale = 1.0 / 64
    with np.errstate(all="ignore"):
        loss_ref, grad_ref = REF.xent_combined(p, t, scale, binary=binary)
    loss, grad = np.full_like(p, np.nan), np.full_like(p, np.nan)
    host(name, dtype, p, t, scale, loss, grad)
    assert_close(loss, loss_ref, dtype, f"{name} loss")
    assert_close(grad, grad_ref, dtype, f"{name} grad")
    in_range = (p >= 0) & (p <= 1) & np.isfinite(t)
    assert np.all(np.isfinite(loss[in_range])), "the clamped logs keep the loss finite for probabilities in [0, 1]"


# -- optimizers ------------------------------------------------------------------------------------------------------
STEPS = 4


def parameters(dtype, n=1500, seed=6):
    rng = np.random.default_rng(seed)
    return sprinkle(rng.normal(0.0, 1.0, n), dtype, every=53)


def gradients(dtype, n=1500, seed=7):
    """One gradient per step, with edge values (NaN, +-inf, subnormals, +-1e4) in a few places."""
    rng = np.random.default_rng(seed)
    grads = [rng.normal(0.0, 1.0, n).astype(dtype) for _ in range(STEPS)]
    grads[0] = sprinkle(grads[0], dtype, every=211)
    grads[2][[5, 6, 7]] = [np.finfo(dtype).smallest_subnormal, 1e4, -0.0]
    return grads


SGD_CONFIGS = {
    "plain": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    "plain_wd": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=1e-2),
    "momentum": dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0),
    "momentum_dampening_wd": dict(momentum=0.8, dampening=0.3, nesterov=False, weight_decay=1e-2),
    "nesterov": dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.0),
    "nesterov_wd": dict(momentum=0.7, dampening=0.0, nesterov=True, weight_decay=5e-3),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_sgd(host, config, dtype):
    """gn_sgd (no momentum) / gn_sgd_momentum vs Ops.sgd_update over several steps, the first included."""
    hp = dict(SGD_CONFIGS[config], lr=0.05)
    p_ref = parameters(dtype)
    p, buf_ref = p_ref.copy(), None
    buf = np.full_like(p, np.nan)  # CupyOps passes an uninitialised buffer on the first step
    for step, g in enumerate(gradients(dtype), start=1):
        with np.errstate(all="ignore"):
            buf_ref = REF.sgd_update(p_ref, g.copy(), buf_ref, **hp)
        if hp["momentum"]:
            host("gn_sgd_momentum", dtype, p, g, buf, hp["lr"], hp["momentum"], 1.0 - hp["dampening"],
                 hp["weight_decay"], hp["nesterov"], step == 1)
            assert_close(buf, buf_ref, dtype, f"sgd {config} momentum buffer, step {step}")
        else:
            host("gn_sgd", dtype, p, g, hp["lr"], hp["weight_decay"])
            assert buf_ref is None
        assert_close(p, p_ref, dtype, f"sgd {config} parameters, step {step}")


ADAM_CONFIGS = {
    "adam": dict(weight_decay=0.0, decoupled=False),
    "adam_l2": dict(weight_decay=1e-2, decoupled=False),
    "adamw": dict(weight_decay=1e-2, decoupled=True),
}


def adam_scalars(*, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """The host scalars of gn_adam, derived from Ops.adam_update's arguments as gpunet/cuda_ops.py derives them:
    decay, wd, 1 - beta1, beta2, 1 - beta2, step_size, bc2_sqrt, eps."""
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    l2 = 0.0 if decoupled else weight_decay
    return (decay, l2, 1.0 - beta1, beta2, 1.0 - beta2, lr / (1 - beta1**step), math.sqrt(1 - beta2**step), eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["plain", "amsgrad"])
@pytest.mark.parametrize("config", ADAM_CONFIGS)
def test_adam(host, config, amsgrad, dtype):
    """gn_adam / gn_adam_amsgrad vs Ops.adam_update (Adam and AdamW) over several steps."""
    hp = dict(ADAM_CONFIGS[config], lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    p_ref = parameters(dtype)
    m_ref, v_ref = np.zeros_like(p_ref), np.zeros_like(p_ref)
    vmax_ref = np.zeros_like(p_ref) if amsgrad else None
    p, m, v = p_ref.copy(), m_ref.copy(), v_ref.copy()
    vmax = np.zeros_like(p) if amsgrad else None
    for step, g in enumerate(gradients(dtype), start=1):
        with np.errstate(all="ignore"):
            REF.adam_update(p_ref, g.copy(), m_ref, v_ref, vmax_ref, step=step, **hp)
        scalars = adam_scalars(step=step, **hp)
        if amsgrad:
            host("gn_adam_amsgrad", dtype, p, g, m, v, vmax, *scalars)
            assert_close(vmax, vmax_ref, dtype, f"{config} amsgrad max, step {step}")
        else:
            host("gn_adam", dtype, p, g, m, v, *scalars)
        assert_close(m, m_ref, dtype, f"{config} first moment, step {step}")
        assert_close(v, v_ref, dtype, f"{config} second moment, step {step}")
        assert_close(p, p_ref, dtype, f"{config} parameters, step {step}")
