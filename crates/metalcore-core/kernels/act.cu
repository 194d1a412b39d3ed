// act.cu — elementwise activations (SiLU, GELU exact, GELU tanh) with an optional bias, and gated
// linear units h = f(gate)·up, forward and backward. The math is in src/ops/act.rs:
//   silu(x) = x·σ(x);  gelu(x) = x·Φ(x);  gelu_tanh(x) = ½x(1 + tanh u) = x·σ(2u), u = √(2/π)(x + 0.044715x³).
// Every form is x·g(x) with g in [0, 1], so ±inf and NaN behave as in torch.
//
// Layout: the operands are `rows × cols` views (row strides in elements), walked as VEC-element
// vectors: thread t takes vectors t, t + S, t + 2S, ... (S = threads in the grid), UNROLL of them
// per iteration with all loads issued before any math. Each thread carries its (row, column) and
// advances it by the precomputed (S / vpr, S % vpr) with one carry, so no division in the loop.
//
// FAST (16-bit storage only) uses the hardware exp2 (__expf) and a short erfc fit: their float
// errors (a few ulp) vanish in the output's rounding to 8 or 11 bits. float32/float64 data use
// the accurate expf/exp and normcdf.
//
// Compile-time parameters (-D): T_X ACC VEC UNROLL BLOCK MODE (0 fwd, 1 bwd, 2 glu fwd, 3 glu bwd)
// ACT (0 silu, 1 gelu, 2 gelu tanh) BIAS (0/1) FAST (0/1).

typedef long long i64;

#define NIN (MODE == 0 ? 1 : MODE == 3 ? 3 : 2)

__device__ __forceinline__ float recip_act(float v) {
#if FAST
    return __fdividef(1.0f, v);
#else
    return 1.0f / v;
#endif
}
__device__ __forceinline__ double recip_act(double v) { return 1.0 / v; }
#if FAST
// Φ(v) = ½·erfc(−v/√2) with erfc by the Chebyshev fit of Press et al., Numerical Recipes §6.2
// (fractional error < 1.2e-7 for every argument, so relatively accurate in the lower tail, where
// torch's 1 + erf(v/√2) cancels): a third of the instructions of normcdff, and far below the
// rounding of a 16-bit output.
__device__ __forceinline__ float norm_cdf_act(float v) {
    const float z = -v * 0.70710678118654752f;
    const float t = __fdividef(1.0f, 1.0f + 0.5f * fabsf(z));
    float p = 0.17087277f;
    p = fmaf(p, t, -0.82215223f);
    p = fmaf(p, t, 1.48851587f);
    p = fmaf(p, t, -1.13520398f);
    p = fmaf(p, t, 0.27886807f);
    p = fmaf(p, t, -0.18628806f);
    p = fmaf(p, t, 0.09678418f);
    p = fmaf(p, t, 0.37409196f);
    p = fmaf(p, t, 1.00002368f);
    const float y = t * __expf(fmaf(t, p, -z * z - 1.26551223f));
    return 0.5f * (z >= 0.0f ? y : 2.0f - y);
}
#else
__device__ __forceinline__ float norm_cdf_act(float v) { return normcdff(v); }
#endif
__device__ __forceinline__ double norm_cdf_act(double v) { return normcdf(v); }

// s = σ(v) and c = 1 − σ(v), the latter as e·σ(v) with e = e^(−v) (no cancellation near σ = 1);
// where e overflows (σ = 0, e·σ NaN) c is 1. A NaN v gives a NaN s.
__device__ __forceinline__ void sigmoid_act(ACC v, ACC& s, ACC& c) {
    const ACC e = exp_io(-v);
    s = recip_act((ACC)1 + e);
    c = e * s;
    c = c == c ? c : (ACC)1;
}

// f(x) and f'(x) (the derivative only when `der`; the compiler drops what is unused).
__device__ __forceinline__ void act(ACC x, ACC& f, ACC& d) {
#if ACT == 0
    ACC s, c;
    sigmoid_act(x, s, c);
    f = x * s;
    d = s * ((ACC)1 + x * c);
#elif ACT == 1
    const ACC p = norm_cdf_act(x);
    f = x * p;
    d = p + x * exp_io((ACC)-0.5 * x * x) * (ACC)0.3989422804014327;
#else
    const ACC k = (ACC)(2.0 * 0.7978845608028654), x2 = x * x;
    ACC s, c;
    sigmoid_act(k * (x + (ACC)0.044715 * x2 * x), s, c);
    f = x * s;
    // The second term vanishes past |x| = 20 (c or s is 0 there), but x² overflows float before x
    // does (∞·0 = NaN for |x| > 1.8e19): it takes x clamped to ±20, and (x − x), 0 for finite x,
    // keeps float64's NaN at ±∞ (and NaN for NaN, which the clamp passes through).
    const ACC t = x < (ACC)-20 ? (ACC)-20 : (x > (ACC)20 ? (ACC)20 : x);
    d = s + t * s * c * k * ((ACC)1 + (ACC)(3.0 * 0.044715) * t * t) + (x - x);
#endif
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    act_kernel(const T_X* __restrict__ in0, i64 rs0, const T_X* __restrict__ in1, i64 rs1, const T_X* __restrict__ in2,
               i64 rs2, T_X* __restrict__ out0, i64 ors0, T_X* __restrict__ out1, i64 ors1, const T_X* __restrict__ bias,
               i64 rows, i64 vpr, i64 step_r, i64 step_c) {
    const i64 total = rows * vpr;
    i64 i = (i64)blockIdx.x * BLOCK + threadIdx.x;
    i64 r = i / vpr, c = i - r * vpr;
    const i64 stride = (i64)gridDim.x * BLOCK;
    while (i < total) {
        Vec<T_X, VEC> a[UNROLL], b[UNROLL], e[UNROLL], bv[UNROLL];
        i64 rr[UNROLL], cc[UNROLL];
        bool ok[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            ok[k] = i + k * stride < total;
            rr[k] = r;
            cc[k] = c * VEC;
            if (ok[k]) {
                a[k] = load_raw<T_X, VEC>(in0 + r * rs0 + cc[k]);
                if (NIN > 1) b[k] = load_raw<T_X, VEC>(in1 + r * rs1 + cc[k]);
                if (NIN > 2) e[k] = load_raw<T_X, VEC>(in2 + r * rs2 + cc[k]);
                if (BIAS) bv[k] = load_raw<T_X, VEC>(bias + cc[k]);
            }
            c += step_c;
            r += step_r;
            if (c >= vpr) {
                c -= vpr;
                ++r;
            }
        }
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            if (!ok[k]) continue;
            ACC x[VEC], y[VEC], z[VEC], o0[VEC], o1[VEC];
            unpack<T_X, VEC>(a[k], x);
            if (NIN > 1) unpack<T_X, VEC>(b[k], y);
            if (NIN > 2) unpack<T_X, VEC>(e[k], z);
            if (BIAS) {
                ACC bb[VEC];
                unpack<T_X, VEC>(bv[k], bb);
#pragma unroll
                for (int j = 0; j < VEC; ++j) x[j] += bb[j];
            }
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                ACC f, d;
                act(x[j], f, d);
                if (MODE == 0) o0[j] = f;
                if (MODE == 1) o0[j] = y[j] * d;
                if (MODE == 2) o0[j] = f * y[j];
                if (MODE == 3) {
                    o0[j] = z[j] * y[j] * d;
                    o1[j] = z[j] * f;
                }
            }
            store_vec<T_X, VEC>(out0 + rr[k] * ors0 + cc[k], o0);
            if (MODE == 3) store_vec<T_X, VEC>(out1 + rr[k] * ors1 + cc[k], o1);
        }
        i += UNROLL * stride;
    }
}
