// Per-row steps of a training step: softmax over a row, and the step's bookkeeping (the batch gather from the
// device-resident data, recording the batch loss at a device counter). They take raw pointers to whole arrays
// (a cupy.ElementwiseKernel's `raw` parameters, C-contiguous), so that a step captured into a CUDA graph reads its
// row offsets and counters from device memory at replay instead of having host integers frozen into it.
#pragma once
#include "gpunet_common.cuh"

// Softmax of row `row` of a (rows, k) array, as gpunet.array_utils.softmax: shifted by the row maximum (a NaN in
// the row makes the maximum, and so the whole row, NaN), exp, divided by the row's sum. `y` may be `z`.
template <typename F> GN_FN void gn_softmax_row(F* y, const F* z, gn_index row, gn_index k) {
    const F* zr = z + row * k;
    F* yr = y + row * k;
    F m = zr[0];
    for (gn_index j = 1; j < k; ++j) m = (zr[j] > m || zr[j] != zr[j]) ? zr[j] : m;
    F s = F(0);
    for (gn_index j = 0; j < k; ++j) {
        F e = exp(zr[j] - m);
        yr[j] = e;
        s = s + e;
    }
    for (gn_index j = 0; j < k; ++j) yr[j] = yr[j] / s;
}

// Element `i` of a (rows, cols) batch gathered from the data `X` (n, cols) by the epoch's row order: batch number
// `counter[0]` of `batch` rows starts at order[counter[0] * batch].
template <typename F, typename I, typename C>
GN_FN F gn_gather(const F* X, const I* order, const C* counter, gn_index i, gn_index cols, gn_index batch) {
    gn_index r = i / cols;
    gn_index src = (gn_index)order[(gn_index)counter[0] * batch + r];
    return X[src * cols + (i - r * cols)];
}

// The batch loss `value` into losses[counter[0]], then the counter advanced (one thread). (The value is passed
// by value: CuPy's 0-d CArray returns its element by value, so it has no address to pass.)
template <typename F, typename C> GN_FN void gn_record(F* losses, C* counter, F value) {
    losses[(gn_index)counter[0]] = value;
    counter[0] = counter[0] + C(1);
}

// z[row] += b, then the softmax of that row, in place (the output layer's forward: one thread per row).
template <typename F> GN_FN void gn_bias_softmax_row(F* z, const F* b, gn_index row, gn_index k) {
    F* zr = z + row * k;
    for (gn_index j = 0; j < k; ++j) zr[j] = zr[j] + b[j];
    gn_softmax_row(zr, zr, gn_index(0), k);
}

// The softmax's backward for one row, in place on dy: dz = y (dy - sum(dy y)).
template <typename F> GN_FN void gn_softmax_bwd_row(F* dy, const F* y, gn_index row, gn_index k) {
    F* d = dy + row * k;
    const F* yr = y + row * k;
    F s = F(0);
    for (gn_index j = 0; j < k; ++j) s = s + d[j] * yr[j];
    for (gn_index j = 0; j < k; ++j) d[j] = yr[j] * (d[j] - s);
}

// The first index of a row's maximum, NaN counting as the maximum (numpy.argmax).
template <typename F> GN_FN gn_index gn_argmax_row(const F* r, gn_index k) {
    gn_index best = 0;
    for (gn_index j = 1; j < k; ++j) {
        if (r[best] != r[best]) break;
        if (r[j] > r[best] || r[j] != r[j]) best = j;
    }
    return best;
}

// 1 where row `row`'s predicted class (argmax) is its target's, else 0 (multi-class accuracy, one thread per row).
template <typename F> GN_FN double gn_argmax_agrees(const F* pred, const F* target, gn_index row, gn_index k) {
    return gn_argmax_row(pred + row * k, k) == gn_argmax_row(target + row * k, k) ? 1.0 : 0.0;
}
