"""Activation functions, each with its derivative, matching ``torch.nn.functional``.

An activation is applied elementwise to the pre-activation ``z = x @ W + b`` (softmax: along the last axis).
``backward(dy, z, y)`` returns ``dz = dy * f'(z)``. Where the derivative can be written from the output ``y``
alone (sigmoid, tanh, ReLU, leaky ReLU, ELU, softmax, identity), ``uses_input`` is False and ``z`` may be ``None``:
layers then keep one array fewer for backward.

Non-finite values, one definition for every op and every path (this reference, the NumPy ops, the CUDA kernels): a
NaN among the values an output is computed from (``z`` forward; ``dy`` and the saved ``y``/``z`` backward, which the
identity's derivative does not read; softmax: anywhere in the row) makes that output NaN. Without NaN, the values are torch's, infinities included (relu's gradient is 0 wherever
``y <= 0``, even for an infinite ``dy``, because torch selects there rather than multiplies). torch itself is not
consistent at NaN (its ELU backward returns ``dy`` or NaN depending on the array's length and the CPU's vector
width), so gpunet does not follow it there.

Specialised ops (NumPy in place, fused CUDA kernels) run an activation's built-in math only when the activation
declares it: each built-in class names its ``kernel``, and :func:`builtin_kernel` returns it only while the class's
``forward``/``backward`` are the declaring class's own. A subclass that overrides them (a ReLU clipped at 6) or any
custom :class:`Activation` runs its own Python methods on every backend.

| name           | f(z)                                              | torch.nn.functional             |
|----------------|---------------------------------------------------|---------------------------------|
| "linear"/None  | z                                                 | (identity)                      |
| "sigmoid"      | 1 / (1 + exp(-z))                                 | sigmoid                         |
| "tanh"         | tanh(z)                                           | tanh                            |
| "relu"         | max(z, 0); derivative 0 at 0                      | relu                            |
| "leaky_relu"   | z if z > 0 else 0.01 z                            | leaky_relu(negative_slope=0.01) |
| "elu"          | z if z > 0 else exp(z) - 1                        | elu(alpha=1)                    |
| "softplus"     | log(1 + exp(z)); z above 20                       | softplus(beta=1, threshold=20)  |
| "silu"         | z sigmoid(z)                                      | silu                            |
| "gelu"         | 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))   | gelu(approximate="tanh")        |
| "softmax"      | exp(z) / sum(exp(z)) over the last axis           | softmax(dim=-1)                 |
"""

from __future__ import annotations

import functools
import math

from array_api_compat import array_namespace

from . import array_utils


class Activation:
    """Base class: ``forward(z) -> y`` and ``backward(dy, z, y) -> dz``."""

    name = "activation"
    uses_input = False  # True when backward needs the pre-activation z, not only the output y
    elementwise = True  # False for softmax (its Jacobian couples a row)
    relu_family = False  # He initialisation for these, Glorot for the others
    kernel = None  # the built-in math this class computes (gn_<kernel>_fwd/_bwd in kernels/): see builtin_kernel

    def kernel_arg(self) -> float:
        """The built-in kernel's one parameter (leaky ReLU's slope, ELU's alpha; 0 for the others)."""
        return 0.0

    def forward(self, z):
        raise NotImplementedError

    def backward(self, dy, z, y):
        raise NotImplementedError

    def __call__(self, z):
        return self.forward(z)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))


class Identity(Activation):
    name = kernel = "linear"

    def forward(self, z):
        return z

    def backward(self, dy, z, y):
        return dy


class Sigmoid(Activation):
    name = kernel = "sigmoid"

    def forward(self, z):
        return array_utils.sigmoid(z)

    def backward(self, dy, z, y):
        return dy * y * (1 - y)


class Tanh(Activation):
    name = kernel = "tanh"

    def forward(self, z):
        return array_namespace(z).tanh(z)

    def backward(self, dy, z, y):
        return dy * (1 - y * y)


class ReLU(Activation):
    name = kernel = "relu"
    relu_family = True

    def forward(self, z):
        return array_namespace(z).maximum(z, 0)

    def backward(self, dy, z, y):
        xp = array_namespace(dy)  # 0 where y <= 0 (even for an infinite dy), NaN where dy or y is NaN
        return xp.where(y > 0, dy, xp.where(y <= 0, _zero_unless_nan(dy), y))


class LeakyReLU(Activation):
    name = kernel = "leaky_relu"
    relu_family = True

    def __init__(self, negative_slope: float = 0.01):
        if not (isinstance(negative_slope, (int, float)) and 0 <= negative_slope < 1):
            raise ValueError(f"negative_slope must be a number in [0, 1); received negative_slope={negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def forward(self, z):
        return array_namespace(z).where(z > 0, z, self.negative_slope * z)

    def backward(self, dy, z, y):
        # y > 0 exactly where z > 0, because the slope is non-negative; a NaN y falls through to y itself
        xp = array_namespace(dy)
        return xp.where(y > 0, dy, xp.where(y <= 0, self.negative_slope * dy, y))

    def kernel_arg(self) -> float:
        return self.negative_slope

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class ELU(Activation):
    name = kernel = "elu"
    relu_family = True

    def __init__(self, alpha: float = 1.0):
        if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a positive finite number; received alpha={alpha!r}")
        self.alpha = float(alpha)

    def forward(self, z):
        xp = array_namespace(z)
        return xp.where(z > 0, z, self.alpha * xp.expm1(xp.minimum(z, 0)))

    def backward(self, dy, z, y):
        # for z <= 0: d/dz alpha (exp(z) - 1) = alpha exp(z) = y + alpha; a NaN y falls through to y itself
        xp = array_namespace(dy)
        return xp.where(y > 0, dy, xp.where(y <= 0, dy * (y + self.alpha), y))

    def kernel_arg(self) -> float:
        return self.alpha

    def __repr__(self) -> str:
        return f"ELU(alpha={self.alpha})"


class Softplus(Activation):
    name = kernel = "softplus"
    uses_input = True  # torch's threshold makes the derivative exactly 1 above z = 20: decided from z

    def forward(self, z):
        return array_utils.softplus(z)

    def backward(self, dy, z, y):
        xp = array_namespace(dy)
        return xp.where(z > 20, dy, dy * array_utils.sigmoid(z))


class SiLU(Activation):
    name = kernel = "silu"
    uses_input = True

    def forward(self, z):
        return z * array_utils.sigmoid(z)

    def backward(self, dy, z, y):
        s = array_utils.sigmoid(z)
        return dy * s * (1 + z * (1 - s))


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715
# beyond |z| = 100 the tanh is exactly +-1 in float32 and float64; clamping z there inside the polynomial keeps z^3
# from overflowing (and 0 * inf from making NaN) without changing any result
_GELU_CLAMP = 100.0


class GELU(Activation):
    name = kernel = "gelu"
    uses_input = True

    def forward(self, z):
        xp = array_namespace(z)
        zc = xp.clip(z, -_GELU_CLAMP, _GELU_CLAMP)
        return 0.5 * z * (1 + xp.tanh(_GELU_C * (zc + _GELU_K * zc * zc * zc)))

    def backward(self, dy, z, y):
        xp = array_namespace(dy)
        z = xp.clip(z, -_GELU_CLAMP, _GELU_CLAMP)
        z2 = z * z
        t = xp.tanh(_GELU_C * (z + _GELU_K * z2 * z))
        return dy * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_K * z2))


class Softmax(Activation):
    name = kernel = "softmax"
    elementwise = False

    def forward(self, z):
        return array_utils.softmax(z, axis=-1)

    def backward(self, dy, z, y):
        xp = array_namespace(dy)
        return y * (dy - xp.sum(dy * y, axis=-1, keepdims=True))


def _zero_unless_nan(a):
    """0 where ``a`` is a number (infinities included), NaN where it is NaN."""
    return array_namespace(a).minimum(abs(a), 0)


@functools.cache
def _declared(cls) -> str | None:
    owner = next(c for c in cls.__mro__ if "kernel" in vars(c))
    if owner.kernel is None:
        return None
    same = all(getattr(cls, attr) is getattr(owner, attr) for attr in ("forward", "backward", "uses_input"))
    return owner.kernel if same else None


def builtin_kernel(activation) -> str | None:
    """The name of the built-in math ``activation`` computes (``"relu"``, ``"gelu"``, ...), or None.

    It is the ``kernel`` its class declares, provided ``forward``, ``backward`` and ``uses_input`` are still those of
    the class that declared it: a subclass overriding them, or a custom activation, gets None, so specialised ops run
    its own methods instead of the built-in math (as Thinc's ``CupyOps`` falls back to ``super()``).

    >>> builtin_kernel(ReLU()), builtin_kernel(type("ReLU6", (ReLU,), {"forward": lambda self, z: z})())
    ('relu', None)
    """
    return _declared(type(activation))


ACTIVATIONS = {
    cls.name: cls for cls in (Identity, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, Softplus, SiLU, GELU, Softmax)
}


def get(activation) -> Activation:
    """An :class:`Activation` from a name, ``None`` (identity) or an instance.

    >>> get("relu")
    ReLU()
    >>> get(None)
    Identity()
    """
    if activation is None:
        return Identity()
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, type) and issubclass(activation, Activation):
        return activation()
    if isinstance(activation, str):
        key = activation.strip().lower()
        key = {"identity": "linear", "none": "linear", "swish": "silu"}.get(key, key)
        if key in ACTIVATIONS:
            return ACTIVATIONS[key]()
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)} or None")
    raise TypeError(
        f"activation must be a name, None or a gpunet.activations.Activation; received {type(activation).__name__}"
    )
