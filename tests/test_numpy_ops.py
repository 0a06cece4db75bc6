"""The NumPy specialisation of the ops (in place, ``out=``, reused scratch arrays) against the Array-API reference.

:class:`gpunet.backend.NumpyOps` runs every CPU model by default; here each of its steps is compared with the reference
:class:`gpunet.backend.Ops` on the same inputs, special values included, using the case tables and drivers of
tests/test_cuda_ops_host.py.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from gpunet import activations
from gpunet.backend import blas
from gpunet.backend import NumpyOps, ops_for
from gpunet.backend.numpy_ops import UPDATE_BLOCK_BYTES, _blocks

if str(Path(__file__).resolve().parent) not in sys.path:  # tests/ is no package: import the module beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cuda_ops_host import (  # noqa: E402
    ADAM_CASES, DTYPES, ELEMENTWISE, LOSS_STEPS, REFERENCE, SGD_CASES, TOL, activation_inputs, assert_close,
    compare_act_grad, compare_adam, compare_loss, compare_sgd, loss_inputs, optimizer_inputs)


@pytest.fixture(scope="module")
def numpy_ops():
    ops = ops_for(np, fused=True)
    assert type(ops) is NumpyOps
    return ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ELEMENTWISE + [activations.Softmax()], ids=repr)
def test_activation(numpy_ops, activation, dtype, rng):
    z, b, dy = activation_inputs(rng, (37, 11), dtype)
    got_z, got_y = numpy_ops.bias_act(z.copy(), b, activation)
    want_z, want_y = REFERENCE.bias_act(z.copy(), b, activation)
    assert_close(got_y, want_y, TOL)
    if activation.uses_input:
        assert_close(got_z, want_z, TOL)
    compare_act_grad(numpy_ops, REFERENCE, activation, dy, z, TOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gradient_is_zero_where_the_output_is_zero_even_for_infinite_upstream(numpy_ops, dtype):
    """torch's threshold_backward: ``where(y <= 0, 0, dy)``, so infinite upstream stays out of dead units (a product
    with the mask would give inf * 0 = NaN); a NaN in y or dy gives NaN (gpunet's definition). Non-contiguous ``dy``
    too."""
    y = np.array([[0.0, 0.0, 0.0, 2.0, np.nan, 0.5, -0.0, 1e-30]], dtype=dtype)
    dy = np.array([[np.inf, -np.inf, np.nan, 3.0, 4.0, -np.inf, 7.0, -2.0]], dtype=dtype)
    want = np.array([[0.0, 0.0, np.nan, 3.0, np.nan, -np.inf, 0.0, -2.0]], dtype=dtype)
    got = numpy_ops.act_grad(activations.ReLU(), dy, None, y)
    assert got is dy
    np.testing.assert_array_equal(got, want)
    strided = np.repeat(dy, 2, axis=0).T[::2]  # a transposed, strided view
    y2 = np.repeat(y, 2, axis=0).T[::2]
    np.testing.assert_array_equal(numpy_ops.act_grad(activations.ReLU(), strided, None, y2),
                                  activations.ReLU().backward(strided.copy(), None, y2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", sorted(LOSS_STEPS))
def test_loss(numpy_ops, step, dtype, rng):
    compare_loss(numpy_ops, REFERENCE, step, *loss_inputs(rng, step, (29, 7), dtype), TOL)


# small arrays are updated whole; large ones block by block (a ragged last block here, in both dtypes)
UPDATE_SHAPES = [(13, 6), (301, 300)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_updates_run_in_several_blocks(dtype):
    """(301, 300) is cut into aligned blocks of 128 KiB per array, the last one ragged; (13, 6) and strided arrays
    stay whole; None entries (no momentum buffer) stay None."""
    p, g = np.zeros((301, 300), dtype), np.ones((301, 300), dtype)
    blocks = _blocks(p, g, None)
    step = UPDATE_BLOCK_BYTES // np.dtype(dtype).itemsize
    assert len(blocks) == -(-p.size // step) > 2 and 0 < blocks[-1][0].size < step
    assert all(b[2] is None and np.shares_memory(b[0], p) for b in blocks)
    assert sum(b[1].sum() for b in blocks) == p.size  # every element exactly once
    assert len(_blocks(p[:13, :6].copy(), g[:13, :6].copy())) == 1 and len(_blocks(p[::2], g[::2])) == 1


@pytest.fixture(params=["vector_blas", "ufuncs"])
def update_path(request, monkeypatch):
    """Large SGD and Adam updates run on NumPy's bundled BLAS where it is found, else on ufuncs block by block:
    both."""
    if request.param == "ufuncs":
        monkeypatch.setattr(blas, "vector_blas", lambda *arrays: None)
    elif blas._library() is None:
        pytest.skip("this NumPy build bundles no scipy-openblas64")
    return request.param


@pytest.mark.parametrize("shape", UPDATE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_update(numpy_ops, case, dtype, shape, update_path, rng):
    compare_sgd(numpy_ops, REFERENCE, *optimizer_inputs(rng, shape, dtype), TOL, **SGD_CASES[case])


@pytest.mark.parametrize("shape", UPDATE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ADAM_CASES))
def test_adam_update(numpy_ops, case, dtype, shape, update_path, rng):
    compare_adam(numpy_ops, REFERENCE, *optimizer_inputs(rng, shape, dtype), TOL, **ADAM_CASES[case])


def test_non_contiguous_parameters_are_updated_in_place(numpy_ops, rng):
    """A strided parameter (a view) cannot be cut into flat blocks: it is updated whole, in place."""
    base, g, m = rng.standard_normal((600, 301)), rng.standard_normal((300, 301)), rng.standard_normal((300, 301))
    p = base[::2]
    want = p - 0.1 * (0.9 * m + g)
    assert numpy_ops.sgd_update(p, g, m, lr=0.1, momentum=0.9, dampening=0.0, nesterov=False,
                                weight_decay=0.0) is m
    np.testing.assert_allclose(base[::2], want, rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 63, 64, 1000])
def test_sum_rows(numpy_ops, rows, dtype, rng):
    """Column sums (the bias gradient): np.sum for few rows, a BLAS product with ones for many; into ``out``."""
    a = rng.standard_normal((rows, 9)).astype(dtype)
    out = np.empty(9, dtype)
    assert numpy_ops.sum_rows(a, out) is out
    assert_close(out, a.astype(np.float64).sum(axis=0).astype(dtype), TOL)
    assert_close(numpy_ops.sum_rows(a[::-1]), a.sum(axis=0), TOL)  # twice, strided: the cached ones stay ones


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_extreme_rows(numpy_ops, dtype):
    """The in-place softmax: rows of opposite huge values (their difference overflows), ties, -inf entries."""
    big = np.finfo(dtype).max
    z = np.array([[big, -big, 0.0], [1000.0, 1000.0, -1000.0], [-np.inf, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=dtype)
    _, got = numpy_ops.bias_act(z.copy(), np.zeros(3, dtype), activations.Softmax())
    want = REFERENCE.bias_act(z.copy(), np.zeros(3, dtype), activations.Softmax())[1]
    assert_close(got, want, TOL)
    np.testing.assert_allclose(got[:2], [[1, 0, 0], [0.5, 0.5, 0]], atol=1e-30)


@pytest.mark.skipif(blas._library() is None, reason="this NumPy build bundles no scipy-openblas64")
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_blas(dtype, rng):
    x, y = (rng.standard_normal(blas.MIN_SIZE + 5).astype(dtype) for _ in range(2))
    vector = blas.vector_blas(x, y, None)
    want = y - 0.25 * x
    vector.axpy(-0.25, x, y)
    assert_close(y, want, TOL)
    want = 0.9 * y
    vector.scal(0.9, y)
    assert_close(y, want, TOL)
    assert blas.vector_blas(x[:100], y[:100]) is None  # small: ufuncs
    assert blas.vector_blas(x[::2], y[::2]) is None  # strided
    assert blas.vector_blas(x, y.astype(np.float16)) is None and blas.vector_blas(x, y[1:]) is None
    assert blas.vector_blas(x.astype(np.int64)) is None


def test_dampening_one_keeps_nonfinite_gradients_as_torch():
    """dampening = 1 adds 0 * g to the buffer: NaN/inf in g still make the buffer NaN (the BLAS path is skipped)."""
    p, buf = np.zeros(1 << 16), np.zeros(1 << 16)
    g = np.ones(1 << 16)
    g[0] = np.inf
    with np.errstate(invalid="ignore"):  # inf * 0
        ops_for(np).sgd_update(p, g, buf, lr=0.1, momentum=0.9, dampening=1.0, nesterov=False, weight_decay=0.0)
    assert np.isnan(buf[0]) and np.isnan(p[0]) and buf[1] == 0 and p[1] == 0


def test_vector_blas_refuses_read_only_and_unaligned_memory():
    """BLAS writes through raw pointers: never into memory NumPy itself would refuse to write."""
    n = blas.MIN_SIZE
    frozen = np.frombuffer(bytes(8 * n), dtype=np.float64)
    assert not frozen.flags.writeable and blas.vector_blas(frozen, np.ones(n)) is None
    raw = np.zeros(8 * n + 1, np.uint8)[1:].view(np.float64)
    assert not raw.flags.aligned and blas.vector_blas(raw, np.ones(n)) is None
    p = np.frombuffer(bytes(8 * n), dtype=np.float64)
    with pytest.raises(ValueError, match="read-only"):  # as NumPy's own ufuncs would
        ops_for(np).sgd_update(p, np.ones(n), None, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                               weight_decay=0.0)


def test_numpy_ops_are_thread_safe():
    """One NumpyOps serves every model: its scratch arrays are per thread, so concurrent steps do not mix."""
    import threading

    numpy_ops = ops_for(np)
    rng = np.random.default_rng(0)
    cases = [(rng.standard_normal((256, 512)), np.maximum(rng.standard_normal((256, 512)), 0)) for _ in range(2)]
    wrong = []

    def work(dy, y):
        want = np.where(y <= 0, 0, dy)
        for _ in range(60):
            wrong.append(not np.array_equal(numpy_ops.act_grad(activations.ReLU(), dy.copy(), None, y), want))

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wrong) == 120 and not any(wrong)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [activations.ReLU(), activations.Tanh(), activations.GELU(),
                                        activations.Softmax(), activations.get(None)], ids=repr)
@pytest.mark.parametrize("shape", [(5, 7, 3), (33, 260, 130)], ids=["small", "large"])
@pytest.mark.parametrize("path", ["blas_gemm", "numpy"])
def test_dense_forward(numpy_ops, activation, dtype, shape, path, rng, monkeypatch):
    """``activation(x @ W + b)``: the bias added inside the BLAS product (z starts as the bias rows) for large W,
    matmul + bias_act otherwise; into ``out`` or a new array; a strided x takes the NumPy path."""
    gemm_calls = []
    if path == "numpy":
        monkeypatch.setattr(blas, "matrix_blas", lambda *arrays: None)
    elif blas._library() is None:
        pytest.skip("this NumPy build bundles no scipy-openblas64")
    else:
        original = blas.Blas.gemm
        monkeypatch.setattr(blas.Blas, "gemm", lambda self, *args: gemm_calls.append(1) or original(self, *args))
    n, k, m = shape
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in [(n, k), (k, m), (m,)])
    want_z, want_y = REFERENCE.bias_act(x @ W, b, activation)
    for args in [(x, None), (x, np.full((n, m), np.nan, dtype)), (np.asfortranarray(x), None)]:
        got_z, got_y = numpy_ops.dense(args[0], W, b, activation, args[1])
        assert_close(got_y, want_y, TOL)
        if activation.uses_input:
            assert_close(got_z, want_z, TOL)
        if args[1] is not None:
            assert np.shares_memory(got_z if activation.uses_input else got_y, args[1])
    assert len(gemm_calls) == (2 if path == "blas_gemm" and shape[1] * shape[2] >= blas.MIN_SIZE else 0)


def test_dense_forward_into_its_own_input(numpy_ops, rng):
    """``out`` may be ``x`` itself (a square layer applied twice reuses its own workspace): the result is still
    ``x @ W + b``, not a product of the bias rows."""
    x, W, b = rng.standard_normal((64, 300)), rng.standard_normal((300, 300)), rng.standard_normal(300)
    want = np.tanh(x @ W + b)
    buf = x.copy()
    _, got = numpy_ops.dense(buf, W, b, activations.Tanh(), out=buf)
    assert_close(got, want, TOL)


def test_matrix_blas_checks():
    a, b, c = np.ones((4, 300)), np.ones((300, 200)), np.zeros((4, 200))
    if blas._library() is not None:
        assert blas.matrix_blas(a, b, c) is not None
        blas.matrix_blas(a, b, c).gemm(a, b, c)
        np.testing.assert_array_equal(c, 300.0)
    assert blas.matrix_blas(a, b[:, :100], c) is None  # shapes do not match
    assert blas.matrix_blas(a, b[:, ::2], c[:, :100]) is None  # strided
    assert blas.matrix_blas(np.ones((4, 10)), np.ones((10, 200)), c) is None  # too small for BLAS to pay
    square = np.ones((300, 300))
    assert blas.matrix_blas(square, np.ones((300, 300)), square) is None  # c is a: filling c would change a
    assert blas.matrix_blas(a.astype(np.float32), b, c) is None  # mixed dtypes
    frozen = np.frombuffer(bytes(c.nbytes), dtype=np.float64).reshape(c.shape)
    assert blas.matrix_blas(a, b, frozen) is None
