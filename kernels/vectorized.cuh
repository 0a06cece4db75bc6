// The in-place bias + activation forward with 16-byte loads and stores, for cupy.RawKernel (see gpunet/backend/
// cuda_ops.py, CupyOps.bias_act_vec4). CuPy's ElementwiseKernel gives each thread one element with 4-byte
// accesses; a kernel that reads one array and writes it back then has too few bytes in flight per thread to fill
// HBM (the in-place relu/sigmoid forward measured 56% of the copy bandwidth on an H100, the 3-array kernels 84%).
// Here each thread moves float4 vectors in a grid-stride loop. Requires float32 rows of `cols` elements, cols a
// multiple of 4, and z aligned to 16 bytes; the bias is read with scalar loads (it is a view into the flat
// parameters, at any 4-byte offset).
#pragma once
#include "activations.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
typedef float4 gn_float4;
#else
struct gn_float4 {
    float x, y, z, w;
};
#endif

// Vectors tid, tid + nthreads, ... of the n4 = rows * cols / 4 vectors of z: z = Act::f(z + b[column], a).
template <typename Act>
GN_FN void gn_bias_act_vec4(float* z, const float* b, gn_index n4, gn_index cols4, float a, gn_index tid,
                            gn_index nthreads) {
    gn_float4* zv = reinterpret_cast<gn_float4*>(z);
    for (gn_index i = tid; i < n4; i += nthreads) {
        gn_float4 v = zv[i];
        const float* c = b + 4 * (i % cols4);
        v.x = Act::f(v.x + c[0], a);
        v.y = Act::f(v.y + c[1], a);
        v.z = Act::f(v.z + c[2], a);
        v.w = Act::f(v.w + c[3], a);
        zv[i] = v;
    }
}

// The activations of the in-place forward, as the functors gn_bias_act_vec4 takes.
#define GN_VEC_ACT(name) \
    struct gn_vec_##name { \
        static GN_FN float f(float z, float a) { return gn_##name##_fwd(z, a); } \
    };
GN_VEC_ACT(linear)
GN_VEC_ACT(sigmoid)
GN_VEC_ACT(tanh)
GN_VEC_ACT(relu)
GN_VEC_ACT(leaky_relu)
GN_VEC_ACT(elu)
#undef GN_VEC_ACT
