// gpunet kernel sources: shared definitions.
//
// Every per-element step of gpunet's fused CuPy kernels is a small template function in these files. The same text
// compiles three ways:
//   - NVRTC, as the `preamble` of a cupy.ElementwiseKernel (gpunet/cuda_ops.py inlines the #include lines);
//   - nvcc, in the compile check of the test suite;
//   - the host C++ compiler, in the "host twin" tests, which run every function on NumPy arrays through ctypes.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GN_FN __device__ __forceinline__
#else
#include <cmath>
#define GN_FN inline
using std::exp;
using std::expm1;
using std::fabs;
using std::log;
using std::log1p;
using std::pow;
using std::sqrt;
using std::tanh;
#endif

// Row and element indices of the per-row kernels (CuPy's loop index `i` is a ptrdiff_t, which converts).
typedef long long gn_index;

// sign(r) with sign(0) = 0 and NaN passed through, as numpy.sign and torch.sign.
template <typename T> GN_FN T gn_sign(T r) { return r > T(0) ? T(1) : (r < T(0) ? T(-1) : r); }

// 1 / (1 + exp(-z)) from exp(-|z|): never overflows.
template <typename T> GN_FN T gn_sigmoid(T z) {
    T e = exp(-fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// max(log p, -100) with no log(0) evaluated (torch BCELoss's clamp): -100 at p = 0, NaN for a NaN or negative p
// (as torch's clamp of log p), as gpunet.backend.reference.clamped_log.
template <typename T> GN_FN T gn_clamped_log(T p) {
    if (p == T(0)) return T(-100);
    T l = log(p);
    return l > T(-100) ? l : (l <= T(-100) ? T(-100) : l);
}

// Whether x is finite: x - x is 0 for every number and NaN for NaN and the infinities (no header needed).
template <typename F> GN_FN bool gn_isfinite(F x) { return x - x == F(0); }
