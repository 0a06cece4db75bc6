// Activation forward and backward, per element. Non-finite values follow gpunet/activations.py: a NaN input gives a
// NaN output; otherwise torch's values (where torch selects a branch, an infinite dy on the zero branch gives 0).
// `a` is the activation's parameter (leaky ReLU's negative slope,
// ELU's alpha; ignored by the others). Backward takes the saved value each derivative needs: the output y
// (sigmoid, tanh, relu, leaky_relu, elu, linear) or the pre-activation z (softplus, silu, gelu), matching
// Activation.uses_input in gpunet/activations.py. Kernel names: gpunet_<activation>_fwd / _bwd.
#pragma once
#include "gpunet_common.cuh"

template <typename T> GN_FN T gn_linear_fwd(T z, T a) { return z; }
template <typename T> GN_FN T gn_linear_bwd(T dy, T y, T a) { return dy; }

template <typename T> GN_FN T gn_sigmoid_fwd(T z, T a) { return gn_sigmoid(z); }
template <typename T> GN_FN T gn_sigmoid_bwd(T dy, T y, T a) { return dy * y * (T(1) - y); }

template <typename T> GN_FN T gn_tanh_fwd(T z, T a) { return tanh(z); }
template <typename T> GN_FN T gn_tanh_bwd(T dy, T y, T a) { return dy * (T(1) - y * y); }

// Written as `z <= 0 ? 0 : z` so that NaN passes through, as in numpy.maximum and torch.relu.
template <typename T> GN_FN T gn_relu_fwd(T z, T a) { return z <= T(0) ? T(0) : z; }
// The backward passes branch on y > 0, y <= 0 and neither (y is NaN: the result is y itself, NaN).
// relu: 0 on the zero branch, even for an infinite dy, but a NaN dy stays NaN (dy == dy is false only for NaN).
template <typename T> GN_FN T gn_relu_bwd(T dy, T y, T a) { return y > T(0) ? dy : (y <= T(0) ? (dy == dy ? T(0) : dy) : y); }

template <typename T> GN_FN T gn_leaky_relu_fwd(T z, T a) { return z > T(0) ? z : a * z; }
template <typename T> GN_FN T gn_leaky_relu_bwd(T dy, T y, T a) { return y > T(0) ? dy : (y <= T(0) ? a * dy : y); }

template <typename T> GN_FN T gn_elu_fwd(T z, T a) { return z > T(0) ? z : a * expm1(z); }
// for z <= 0: d/dz a (exp(z) - 1) = a exp(z) = y + a
template <typename T> GN_FN T gn_elu_bwd(T dy, T y, T a) { return y > T(0) ? dy : (y <= T(0) ? dy * (y + a) : y); }

// torch's softplus: z itself above the threshold 20, where the derivative is exactly 1.
template <typename T> GN_FN T gn_softplus_fwd(T z, T a) {
    return z > T(20) ? z : (z > T(0) ? z : T(0)) + log1p(exp(-fabs(z)));
}
template <typename T> GN_FN T gn_softplus_bwd(T dy, T z, T a) { return z > T(20) ? dy : dy * gn_sigmoid(z); }

template <typename T> GN_FN T gn_silu_fwd(T z, T a) { return z * gn_sigmoid(z); }
template <typename T> GN_FN T gn_silu_bwd(T dy, T z, T a) {
    T s = gn_sigmoid(z);
    return dy * s * (T(1) + z * (T(1) - s));
}

// GELU, tanh approximation (torch.nn.functional.gelu(approximate="tanh")).
#define GN_GELU_C 0.7978845608028654  // sqrt(2 / pi)
#define GN_GELU_K 0.044715
// Beyond |z| = 100 the tanh is exactly +-1: clamping z there inside the polynomial keeps z^3 finite (no 0 * inf).
template <typename T> GN_FN T gn_gelu_clamp(T z) { return z > T(100) ? T(100) : (z < T(-100) ? T(-100) : z); }
template <typename T> GN_FN T gn_gelu_fwd(T z, T a) {
    T c = gn_gelu_clamp(z);
    return T(0.5) * z * (T(1) + tanh(T(GN_GELU_C) * (c + T(GN_GELU_K) * c * c * c)));
}
template <typename T> GN_FN T gn_gelu_bwd(T dy, T z, T a) {
    z = gn_gelu_clamp(z);
    T z2 = z * z;
    T t = tanh(T(GN_GELU_C) * (z + T(GN_GELU_K) * z2 * z));
    return dy * (T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * T(GN_GELU_C) * (T(1) + T(3 * GN_GELU_K) * z2));
}
