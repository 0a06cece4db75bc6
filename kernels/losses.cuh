// Loss value and gradient per element, in one pass. `scale` is the factor of the mean (1 / number of elements, or
// 1 / rows for categorical cross-entropy), so `grad` is already the gradient of the mean loss.
#pragma once
#include "gpunet_common.cuh"

// Huber (torch.nn.HuberLoss): 0.5 r^2 within delta, delta (|r| - delta / 2) beyond; r = p - t.
template <typename T> GN_FN void gn_huber(T p, T t, T delta, T scale, T& loss, T& grad) {
    T r = p - t;
    T a = fabs(r);
    if (a <= delta) {
        loss = T(0.5) * r * r;
        grad = scale * r;
    } else {
        loss = delta * (a - T(0.5) * delta);
        grad = scale * (delta * gn_sign(r));
    }
}

// Binary cross-entropy on logits z (torch BCEWithLogitsLoss): max(z, 0) - z t + log1p(exp(-|z|)).
template <typename T> GN_FN void gn_bce_logits(T z, T t, T scale, T& loss, T& grad) {
    loss = (z > T(0) ? z : T(0)) - z * t + log1p(exp(-fabs(z)));
    grad = scale * (gn_sigmoid(z) - t);
}

// Sigmoid + binary cross-entropy on the probability p: BCELoss's clamped value, and the combined gradient with
// respect to the logit, (p - t) scale.
template <typename T> GN_FN void gn_bce_sigmoid(T p, T t, T scale, T& loss, T& grad) {
    loss = -(t * gn_clamped_log(p) + (T(1) - t) * gn_clamped_log(T(1) - p));
    grad = scale * (p - t);
}

// Softmax + categorical cross-entropy on the probability p: the element's share -t log p of its row's loss, and the
// combined gradient with respect to the logit, (p - t) scale.
template <typename T> GN_FN void gn_cce_softmax(T p, T t, T scale, T& loss, T& grad) {
    loss = -(t * gn_clamped_log(p));
    grad = scale * (p - t);
}

// Mean squared error (torch.nn.MSELoss): (p - t)^2, gradient 2 (p - t) scale.
template <typename T> GN_FN void gn_mse(T p, T t, T scale, T& loss, T& grad) {
    T r = p - t;
    loss = r * r;
    grad = (T(2) * scale) * r;
}

// Mean absolute error (torch.nn.L1Loss): |p - t|, gradient sign(p - t) scale (0 at 0, NaN passed through).
template <typename T> GN_FN void gn_mae(T p, T t, T scale, T& loss, T& grad) {
    T r = p - t;
    loss = fabs(r);
    grad = scale * gn_sign(r);
}
