// Optimizer updates per parameter element, in place, with torch.optim's rules. Scalars that depend only on the
// step (bias corrections, 1 - lr wd) are computed once on the host in double precision and passed in.
#pragma once
#include "gpunet_common.cuh"

// torch.optim.SGD without momentum: p -= lr (g + wd p).
template <typename T> GN_FN void gn_sgd(T& p, T g, T lr, T wd) {
    if (wd != T(0)) g = g + wd * p;
    p = p - lr * g;
}

// torch.optim.SGD with momentum mu: buf = g on the first step, else mu buf + (1 - dampening) g;
// p -= lr (g + mu buf) with Nesterov, else lr buf.
template <typename T>
GN_FN void gn_sgd_momentum(T& p, T g, T& buf, T lr, T mu, T one_minus_dampening, T wd, bool nesterov, bool first) {
    if (wd != T(0)) g = g + wd * p;
    buf = first ? g : mu * buf + one_minus_dampening * g;
    p = p - lr * (nesterov ? g + mu * buf : buf);
}

// torch.optim.Adam / AdamW. decay = 1 - lr wd (AdamW, applied first) or 1; wd = the L2 coefficient added to the
// gradient (Adam) or 0. step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t).
template <typename T>
GN_FN void gn_adam(T& p, T g, T& m, T& v, T decay, T wd, T one_minus_beta1, T beta2, T one_minus_beta2,
                   T step_size, T bc2_sqrt, T eps) {
    if (decay != T(1)) p = p * decay;
    if (wd != T(0)) g = g + wd * p;
    m = m + one_minus_beta1 * (g - m);
    v = beta2 * v + one_minus_beta2 * g * g;
    p = p - step_size * (m / (sqrt(v) / bc2_sqrt + eps));
}

// Adam with AMSGrad: the running maximum vmax of v replaces v in the denominator.
template <typename T>
GN_FN void gn_adam_amsgrad(T& p, T g, T& m, T& v, T& vmax, T decay, T wd, T one_minus_beta1, T beta2,
                           T one_minus_beta2, T step_size, T bc2_sqrt, T eps) {
    if (decay != T(1)) p = p * decay;
    if (wd != T(0)) g = g + wd * p;
    m = m + one_minus_beta1 * (g - m);
    v = beta2 * v + one_minus_beta2 * g * g;
    vmax = vmax > v ? vmax : v;
    p = p - step_size * (m / (sqrt(vmax) / bc2_sqrt + eps));
}
