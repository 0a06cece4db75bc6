// Optimizer updates per parameter element, in place, with torch.optim's rules. Scalars that depend only on the
// step (bias corrections, 1 - lr wd) are computed once per step in double precision: on the host for NumPy-style
// calls, or on the device by gn_step_prepare (below) for steps that a CUDA graph replays, where the learning rate
// and the step count must be read from device memory at replay instead of being frozen into the graph.
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

// The device scalars of an optimizer, a float64 array `s`: s[0] = lr and s[1] = completed steps t, written by the
// host (schedules, loading, roll-back) and by this kernel; then, per step, s[2] = lr / (1 - beta1^t) (Adam's step
// size; lr for beta1 = 0), s[3] = sqrt(1 - beta2^t), s[4] = 1 - lr wd (AdamW's decay). `amp` is the loss scaler's
// state (gn_scaler_update): a step whose gradients were not finite (amp[2] != 0) is skipped and does not count.
// One thread, once per step, before the update kernels (which read s and amp).
template <typename F> GN_FN void gn_step_prepare(F* s, const F* amp, F beta1, F beta2, F wd) {
    if (amp[2] != F(0)) return;
    F t = s[1] + F(1);
    s[1] = t;
    s[2] = s[0] / (F(1) - pow(beta1, t));
    s[3] = sqrt(F(1) - pow(beta2, t));
    s[4] = F(1) - s[0] * wd;
}

// Dynamic loss scaling, torch.amp.GradScaler's rule. amp = [scale, growth tracker, found_inf, 1 / scale]:
// gn_unscale_check multiplies a gradient element by 1 / scale and raises found_inf where the result is not finite
// (every thread writes the same 1: no race that matters); gn_scaler_update then (one thread, after the update)
// halves the scale on found_inf (tracker reset), else counts the clean step and doubles the scale after
// `interval` clean steps (only while the doubled scale stays a finite float32, as torch's float32 scale does), and
// clears found_inf for the next step.
template <typename T, typename F> GN_FN void gn_unscale_check(T& g, F* amp) {
    g = g * T(amp[3]);
    if (!gn_isfinite(g)) amp[2] = F(1);
}
template <typename F> GN_FN void gn_scaler_update(F* amp, F growth, F backoff, F interval) {
    if (amp[2] != F(0)) {
        amp[0] = amp[0] * backoff;
        amp[1] = F(0);
    } else {
        F tracker = amp[1] + F(1);
        if (tracker == interval) {
            F grown = amp[0] * growth;
            if (grown <= F(3.4028234663852886e38)) amp[0] = grown;
            tracker = F(0);
        }
        amp[1] = tracker;
    }
    amp[2] = F(0);
    amp[3] = F(1) / amp[0];
}
