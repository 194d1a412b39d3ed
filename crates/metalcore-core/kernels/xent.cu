// xent.cu — cross-entropy over rows of logits: loss, log-sum-exp and gradient (math in
// src/ops/xent.rs).
//
// One block per row (grid-stride over rows). The forward streams the row once, each thread
// keeping a running (max, sum of exp) that is rescaled once per VEC-vector ("online softmax",
// Milakov & Gimelshein 2018), plus Σx for label smoothing; the block merges them. With the
// gradient (MODE 1), the same block streams the row a second time right away — from L2, where
// the rows of the resident blocks still are — and writes g·(p·(1 + 2z·lse) − ε/V − (1 − ε)[j = t]).
// MODE 2 writes the gradient alone from a saved lse. The gradient may overwrite the logits
// (each element is read by the thread that writes it, before it writes it).
//
// FAST (16-bit logits) uses the hardware exp2 (__expf); float32/float64 use expf/exp.
// Compile-time parameters (-D): T_X ACC VEC UNROLL BLOCK MODE (0 fwd, 1 fwd + grad, 2 grad) SMOOTH FAST.

typedef long long i64;

// Plain max (a NaN is carried by the sum of exponentials instead: any NaN logit makes it NaN).
__device__ __forceinline__ float max_ce(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_ce(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float log_ce(float v) { return logf(v); }
__device__ __forceinline__ double log_ce(double v) { return log(v); }

extern "C" __global__ void __launch_bounds__(BLOCK)
    xent_kernel(const T_X* x, i64 x_rs, T_X* grad, i64 g_rs, const int* __restrict__ target, i64 t_st,
                ACC* __restrict__ loss, i64 l_st, ACC* __restrict__ lse_io, i64 lse_st, const ACC* __restrict__ scale,
                i64 s_st, i64 rows, int cols, int ignore_index, ACC eps, ACC z) {
    __shared__ ACC red[BLOCK / 32];
    __shared__ ACC row_lse;
    const int nvec = cols / VEC;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        // `x` and `grad` may alias (in-place gradient): no __restrict__ on them together.
        const T_X* xr = x + row * x_rs;
        const int t = target[row * t_st];
        const bool ignored = t == ignore_index;
        const bool bad = !ignored && (t < 0 || t >= cols);
#if MODE != 2
        ACC m = NEG_INF_ACC, s = 0, sx = 0;
        for (int c0 = threadIdx.x; c0 < nvec; c0 += BLOCK * UNROLL) {
            // UNROLL vectors in flight per thread before any math (one 16-byte load per thread
            // at a time is far too little to cover HBM latency).
            Vec<T_X, VEC> raw[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + u * BLOCK;
                if (c < nvec) raw[u] = load_raw<T_X, VEC>(xr + (i64)c * VEC);
            }
            ACC lm = NEG_INF_ACC;
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (c0 + u * BLOCK < nvec) {
                    ACC a[VEC];
                    unpack<T_X, VEC>(raw[u], a);
#pragma unroll
                    for (int i = 0; i < VEC; ++i) lm = max_ce(lm, a[i]);
                }
            }
            const ACC nm = max_ce(m, lm);
            // Rescale the running sum to the new max (nothing to rescale while it is -inf), and
            // take exponentials against a finite reference so a row of -inf does not make NaN.
            const ACC ref = nm == NEG_INF_ACC ? (ACC)0 : nm;
            if (m != nm) s *= exp_io(m - ref);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (c0 + u * BLOCK < nvec) {
                    ACC a[VEC];
                    unpack<T_X, VEC>(raw[u], a);
#pragma unroll
                    for (int i = 0; i < VEC; ++i) {
                        s += exp_io(a[i] - ref);
#if SMOOTH
                        sx += a[i];
#endif
                    }
                }
            }
            m = nm;
        }
        const ACC bm = group_max<BLOCK>(m, red);
        const ACC bref = bm == NEG_INF_ACC ? (ACC)0 : bm;
        if (m != bm) s *= exp_io(m - bref);
        const ACC bs = group_sum<BLOCK>(s, red);
#if SMOOTH
        const ACC bsx = group_sum<BLOCK>(sx, red);
#else
        const ACC bsx = 0;
#endif
        if (threadIdx.x == 0) {
            const ACC l = bref + log_ce(bs);  // NaN for a NaN anywhere (via the sum), -inf for a row of -inf
            ACC out;
            if (ignored) {
                out = 0;
            } else if (bad) {
                out = NEG_INF_ACC - NEG_INF_ACC;  // NaN
            } else {
                // (1−ε)(lse − x_t) + ε(lse − mean x): differences of nearby values first.
                out = ((ACC)1 - eps) * (l - to_acc(xr[t])) + eps * (l - bsx / (ACC)cols) + z * l * l;
            }
            loss[row * l_st] = out;
            lse_io[row * lse_st] = l;
            row_lse = l;
        }
#endif
#if MODE != 0
#if MODE == 2
        if (threadIdx.x == 0) row_lse = lse_io[row * lse_st];
#endif
        __syncthreads();
        const ACC l = row_lse;
        T_X* gr = grad + row * g_rs;
        const bool zero = ignored || bad;
        const ACC g = zero ? (ACC)0 : scale[row * s_st];
        const ACC pf = g * ((ACC)1 + (ACC)2 * z * l);
        const ACC off = g * eps / (ACC)cols;
        const ACC hit = g * ((ACC)1 - eps);
        for (int c0 = threadIdx.x; c0 < nvec; c0 += BLOCK * UNROLL) {
            Vec<T_X, VEC> raw[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + u * BLOCK;
                if (c < nvec) raw[u] = load_raw<T_X, VEC>(xr + (i64)c * VEC);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + u * BLOCK;
                if (c >= nvec) continue;
                ACC a[VEC];
                unpack<T_X, VEC>(raw[u], a);
#pragma unroll
                for (int i = 0; i < VEC; ++i) a[i] = zero ? (ACC)0 : pf * exp_io(a[i] - l) - off;
                const int k = t - c * VEC;  // the target's place in this vector, if it is here
                if (!zero && k >= 0 && k < VEC) {
#pragma unroll
                    for (int i = 0; i < VEC; ++i)
                        if (i == k) a[i] -= hit;
                }
                store_vec<T_X, VEC>(gr + (i64)c * VEC, a);
            }
        }
#endif
        __syncthreads();  // row_lse and red are reused by the next row
    }
}
