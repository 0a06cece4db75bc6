"""The NumPy specialisation of the ops (in place, ``out=``, reused scratch arrays) against the Array-API reference.

:class:`gpunet.ops.NumpyOps` runs every CPU model by default; here each of its steps is compared with the reference
:class:`gpunet.ops.Ops` on the same inputs, special values included, using the case tables and drivers of
tests/test_cuda_ops_host.py.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from gpunet import activations
from gpunet.ops import NumpyOps, ops_for

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
    """torch's threshold_backward: ``where(y <= 0, 0, dy)``, so inf/NaN upstream stays out of dead units (a product
    with the mask would give inf * 0 = NaN), and a NaN output passes ``dy`` on. Non-contiguous ``dy`` too."""
    y = np.array([[0.0, 0.0, 0.0, 2.0, np.nan, 0.5, -0.0, 1e-30]], dtype=dtype)
    dy = np.array([[np.inf, -np.inf, np.nan, 3.0, 4.0, -np.inf, 7.0, -2.0]], dtype=dtype)
    want = np.array([[0.0, 0.0, 0.0, 3.0, 4.0, -np.inf, 0.0, -2.0]], dtype=dtype)
    got = numpy_ops.act_grad(activations.ReLU(), dy, None, y)
    assert got is dy
    np.testing.assert_array_equal(got, want)
    strided = np.repeat(dy, 2, axis=0).T[::2]  # a transposed, strided view
    y2 = np.repeat(y, 2, axis=0).T[::2]
    np.testing.assert_array_equal(numpy_ops.act_grad(activations.ReLU(), strided, None, y2),
                                  np.where(y2 <= 0, 0, strided))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", sorted(LOSS_STEPS))
def test_loss(numpy_ops, step, dtype, rng):
    compare_loss(numpy_ops, REFERENCE, step, *loss_inputs(rng, step, (29, 7), dtype), TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_update(numpy_ops, case, dtype, rng):
    compare_sgd(numpy_ops, REFERENCE, *optimizer_inputs(rng, (13, 6), dtype), TOL, **SGD_CASES[case])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ADAM_CASES))
def test_adam_update(numpy_ops, case, dtype, rng):
    compare_adam(numpy_ops, REFERENCE, *optimizer_inputs(rng, (13, 6), dtype), TOL, **ADAM_CASES[case])
