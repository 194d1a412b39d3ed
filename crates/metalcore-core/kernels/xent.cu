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

// The row's loss and log-sum-exp from every thread's running (max m, Σ exp(x − m), Σx): block
// reductions, then thread 0 writes both and leaves the lse in `row_lse` (read after a barrier).
__device__ __forceinline__ void finish_row(ACC m, ACC s, ACC sx, ACC* red, ACC* row_lse, const T_X* xr, int t,
                                           bool ignored, bool bad, int cols, ACC eps, ACC z, ACC* loss, ACC* lse_io) {
    const ACC bm = group_max<BLOCK>(m, red);
    const ACC bref = bm == NEG_INF_ACC ? (ACC)0 : bm;
    if (m != bm) s *= exp_io(m - bref);
    const ACC bs = group_sum<BLOCK>(s, red);
#if SMOOTH
    const ACC bsx = group_sum<BLOCK>(sx, red);
#else
    const ACC bsx = 0;
    (void)sx;
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
        *loss = out;
        *lse_io = l;
        *row_lse = l;
    }
}

// One row's gradient g·(p·(1 + 2z·lse) − ε/V − (1 − ε)[j = t]), zero for an ignored or bad row.
struct GradRow {
    ACC l, pf, off, hit;
    bool zero;
    int t;
};

// `hit`: the target's whole weight g·(ε/V + 1 − ε), taken at once, so that a row whose softmax is
// exactly the target's one-hot (V = 1) gets an exact zero gradient.
__device__ __forceinline__ GradRow grad_row(ACC l, ACC g, bool zero, int t, int cols, ACC eps, ACC z) {
    return GradRow{l, g * ((ACC)1 + (ACC)2 * z * l), g * eps / (ACC)cols, g * (eps / (ACC)cols + ((ACC)1 - eps)), zero, t};
}

// The gradient of the VEC logits `raw` (vector c of the row) into `gr`.
__device__ __forceinline__ void grad_vec(const Vec<T_X, VEC>& raw, int c, const GradRow& g, T_X* gr) {
    ACC a[VEC];
    unpack<T_X, VEC>(raw, a);
    const int k = g.t - c * VEC;  // the target's place in this vector, if it is here
#pragma unroll
    for (int i = 0; i < VEC; ++i) a[i] = g.zero ? (ACC)0 : g.pf * exp_io(a[i] - g.l) - (i == k ? g.hit : g.off);
    store_vec<T_X, VEC>(gr + (i64)c * VEC, a);
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    xent_kernel(const T_X* x, i64 x_rs, T_X* grad, i64 g_rs, const int* __restrict__ target, i64 t_st,
                ACC* __restrict__ loss, i64 l_st, ACC* __restrict__ lse_io, i64 lse_st, const ACC* __restrict__ scale,
                i64 s_st, const ACC* __restrict__ skip, i64 rows, int cols, int ignore_index, ACC eps, ACC z) {
    __shared__ ACC red[BLOCK / 32];
    __shared__ ACC row_lse;
    const int nvec = cols / VEC;
#if MODE == 2
    // The fused forward already wrote this gradient with this (broadcast) scale.
    if (skip != nullptr && *skip == scale[0]) return;
#endif
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
        finish_row(m, s, sx, red, &row_lse, xr, t, ignored, bad, cols, eps, z, loss + row * l_st, lse_io + row * lse_st);
#endif
#if MODE != 0
#if MODE == 2
        if (threadIdx.x == 0) row_lse = lse_io[row * lse_st];
#endif
        __syncthreads();
        const bool zero = ignored || bad;
        const GradRow gw = grad_row(row_lse, zero ? (ACC)0 : scale[row * s_st], zero, t, cols, eps, z);
        T_X* gr = grad + row * g_rs;
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
                if (c < nvec) grad_vec(raw[u], c, gw, gr);
            }
        }
#endif
        __syncthreads();  // row_lse and red are reused by the next row
    }
}

#ifdef ONCHIP_R
// MODE 1 (loss, lse and gradient) with the whole row held on chip, so HBM sees one read and one
// write per element whatever L2 keeps: each thread holds ONCHIP_R of its vectors in registers and
// the rest in its own slots of dynamic shared memory, filled by asynchronous copies (cp.async)
// that are in flight while the register part loads. One row per block (BLOCK threads, one block
// per SM); the host picks this kernel only when a row fits (16-byte vectors). Each thread reads
// back only the slots it filled, so no block barrier guards them. The gradient may overwrite the
// logits (the whole row is on chip before any store).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src));
}

extern "C" __global__ void __launch_bounds__(BLOCK, 1)
    xent_onchip_kernel(const T_X* x, i64 x_rs, T_X* grad, i64 g_rs, const int* __restrict__ target, i64 t_st,
                       ACC* __restrict__ loss, i64 l_st, ACC* __restrict__ lse_io, i64 lse_st,
                       const ACC* __restrict__ scale, i64 s_st, const ACC* __restrict__ skip, i64 rows, int cols,
                       int ignore_index, ACC eps, ACC z) {
    constexpr int R = ONCHIP_R;
    typedef Vec<T_X, VEC> V;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    V* slots = reinterpret_cast<V*>(smem_raw);
    __shared__ ACC red[BLOCK / 32];
    __shared__ ACC row_lse;
    const int nvec = cols / VEC;
    const int K = (nvec + BLOCK - 1) / BLOCK;  // vectors per thread: R in registers, K - R in slots
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T_X* xr = x + row * x_rs;
        const int t = target[row * t_st];
        const bool ignored = t == ignore_index;
        const bool bad = !ignored && (t < 0 || t >= cols);
        for (int k = R; k < K; ++k) {
            const int c = threadIdx.x + k * BLOCK;
            if (c < nvec) cp_async16(&slots[(k - R) * BLOCK + threadIdx.x], xr + (i64)c * VEC);
        }
        asm volatile("cp.async.commit_group;");
        V reg[R];
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int c = threadIdx.x + k * BLOCK;
            if (c < nvec) reg[k] = load_raw<T_X, VEC>(xr + (i64)c * VEC);
        }
        // Online max and sum of exponentials (as in xent_kernel), registers first, then the slots.
        ACC m = NEG_INF_ACC, s = 0, sx = 0;
        auto take = [&](const V& raw) {
            ACC a[VEC];
            unpack<T_X, VEC>(raw, a);
            ACC lm = NEG_INF_ACC;
#pragma unroll
            for (int i = 0; i < VEC; ++i) lm = max_ce(lm, a[i]);
            const ACC nm = max_ce(m, lm);
            const ACC ref = nm == NEG_INF_ACC ? (ACC)0 : nm;  // finite: a row of -inf gives no NaN
            if (m != nm) s *= exp_io(m - ref);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                s += exp_io(a[i] - ref);
#if SMOOTH
                sx += a[i];
#endif
            }
            m = nm;
        };
#pragma unroll
        for (int k = 0; k < R; ++k)
            if (threadIdx.x + k * BLOCK < nvec) take(reg[k]);
        asm volatile("cp.async.wait_all;" ::: "memory");
        for (int k = R; k < K; ++k)
            if (threadIdx.x + k * BLOCK < nvec) take(slots[(k - R) * BLOCK + threadIdx.x]);
        finish_row(m, s, sx, red, &row_lse, xr, t, ignored, bad, cols, eps, z, loss + row * l_st, lse_io + row * lse_st);
        __syncthreads();
        const bool zero = ignored || bad;
        const GradRow gw = grad_row(row_lse, zero ? (ACC)0 : scale[row * s_st], zero, t, cols, eps, z);
        T_X* gr = grad + row * g_rs;
        auto emit = [&](const V& raw, int c) { grad_vec(raw, c, gw, gr); };
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int c = threadIdx.x + k * BLOCK;
            if (c < nvec) emit(reg[k], c);
        }
        for (int k = R; k < K; ++k) {
            const int c = threadIdx.x + k * BLOCK;
            if (c < nvec) emit(slots[(k - R) * BLOCK + threadIdx.x], c);
        }
        __syncthreads();  // row_lse and red are reused by the next row
    }
}
#endif
