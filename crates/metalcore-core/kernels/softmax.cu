// softmax.cu — softmax over rows, forward and backward.
//
// Math (per row of n elements, accumulation in ACC):
//   forward:  m = max(x), s = sum(exp(x - m)), y = exp(x - m) / s.
//   backward: dx = y * (dy - sum(dy * y)).
// A row of -inf gives NaN (as torch does: -inf - -inf); a NaN anywhere gives a NaN row.
// Layout as in norm.cu: TPR threads per row, BLOCK/TPR rows per block walking the rows grid-stride;
// CHUNKS > 0 keeps the row in registers (in its storage type), CHUNKS == 0 streams it: the forward
// then keeps a running (max, sum) per thread, rescaling the sum when the max grows ("online
// softmax", Milakov & Gimelshein 2018), and reads the row twice in all.
//
// SMEM (forward, CHUNKS == 0, one row per block): the row is kept in dynamic shared memory after
// the first read, so it is read from memory once.
//
// Compile-time parameters (-D): T_X T_Y ACC VEC TPR BLOCK CHUNKS SMEM FAST.

typedef long long i64;
constexpr int RPB = BLOCK / TPR;

// Pairwise sum of N values (N need not be a power of two).
template <int N> __device__ __forceinline__ ACC tree_sum(ACC (&v)[N]) {
#pragma unroll
    for (int w = 1; w < N; w *= 2) {
#pragma unroll
        for (int i = 0; i + w < N; i += 2 * w) v[i] += v[i + w];
    }
    return v[0];
}

// Online softmax: folds VEC values into the running max m and sum s = Σ e^(x − m), rescaling s
// when the max grows (nothing to rescale from -inf; while every value seen is -inf they add
// nothing, as exp(-inf - -inf) would be NaN).
__device__ __forceinline__ void online_update(const ACC (&a)[VEC], ACC& m, ACC& s) {
    ACC cm = a[0];
#pragma unroll
    for (int i = 1; i < VEC; ++i) cm = MaxOp{}(cm, a[i]);
    const ACC nm = MaxOp{}(m, cm);
    s = (nm == m) ? s : s * exp_io(m - nm);
    m = nm;
    if (m != NEG_INF_ACC) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) s += exp_io(a[i] - m);
    }
}

// Merges the threads' (m, s) of a row: the row max, and the sum rescaled to it.
__device__ __forceinline__ void merge_row(ACC& m, ACC& s, ACC* red) {
    const ACC gm = group_max<TPR>(m, red);
    s = (m == gm) ? s : s * exp_io(m - gm);
    s = group_sum<TPR>(s, red);
    m = gm;
}

extern "C" __global__ void __launch_bounds__(BLOCK) softmax_fwd(const T_X* __restrict__ x, i64 x_rs,
                                                                T_Y* __restrict__ y, i64 y_rs, i64 rows, int cols) {
    __shared__ ACC red[BLOCK / 32];
    const int group = threadIdx.x / TPR, lane = threadIdx.x % TPR;
    const int nvec = cols / VEC;
    for (i64 base = (i64)blockIdx.x * RPB; base < rows; base += (i64)gridDim.x * RPB) {
        const i64 row = base + group;
        const bool valid = row < rows;
        const T_X* xr = x + row * x_rs;
        T_Y* yr = y + row * y_rs;
#if CHUNKS > 0
        Vec<T_X, VEC> v[CHUNKS];
        ACC m = NEG_INF_ACC;
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (valid && c < nvec) {
                v[k] = load_raw<T_X, VEC>(xr + c * VEC);
                ACC a[VEC];
                unpack<T_X, VEC>(v[k], a);
#pragma unroll
                for (int i = 0; i < VEC; ++i) m = MaxOp{}(m, a[i]);
            }
        }
        m = group_max<TPR>(m, red);
        // Pairwise (tree) sums within each chunk and across chunks: a running sum of 32 terms
        // loses ~sqrt(32) roundings, which shows directly in every y of the row.
        ACC cs[CHUNKS];
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            cs[k] = 0;
            if (valid && c < nvec) {
                ACC a[VEC];
                unpack<T_X, VEC>(v[k], a);
#pragma unroll
                for (int i = 0; i < VEC; ++i) a[i] = exp_io(a[i] - m);
                cs[k] = tree_sum<VEC>(a);
            }
        }
        ACC s = group_sum<TPR>(tree_sum<CHUNKS>(cs), red);
        if (!valid) continue;
        const ACC inv = (ACC)1 / s;
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (c < nvec) {
                ACC a[VEC];
                unpack<T_X, VEC>(v[k], a);
#pragma unroll
                for (int i = 0; i < VEC; ++i) a[i] = exp_io(a[i] - m) * inv;
                store_vec<T_Y, VEC>(yr + c * VEC, a);
            }
        }
#elif SMEM
        // The row stays in shared memory (one row per block): read once from memory, 4 vectors in
        // flight per thread; each thread re-reads exactly the vectors it stored, so no barrier.
        extern __shared__ __align__(16) unsigned char smem_raw[];
        Vec<T_X, VEC>* rowbuf = reinterpret_cast<Vec<T_X, VEC>*>(smem_raw);
        ACC m = NEG_INF_ACC, s = 0;
        for (int c0 = lane; valid && c0 < nvec; c0 += TPR * 4) {
            Vec<T_X, VEC> raw[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int c = c0 + u * TPR;
                if (c < nvec) raw[u] = load_raw<T_X, VEC>(xr + c * VEC);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int c = c0 + u * TPR;
                if (c >= nvec) continue;
                rowbuf[c] = raw[u];
                ACC a[VEC];
                unpack<T_X, VEC>(raw[u], a);
                online_update(a, m, s);
            }
        }
        merge_row(m, s, red);
        if (!valid) continue;
        const ACC inv = (ACC)1 / s;
        for (int c = lane; c < nvec; c += TPR) {
            ACC a[VEC];
            unpack<T_X, VEC>(rowbuf[c], a);
#pragma unroll
            for (int i = 0; i < VEC; ++i) a[i] = exp_io(a[i] - m) * inv;
            store_vec<T_Y, VEC>(yr + c * VEC, a);
        }
        __syncthreads();  // the next row overwrites rowbuf
#else
        ACC m = NEG_INF_ACC, s = 0;
        for (int c = lane; valid && c < nvec; c += TPR) {
            ACC a[VEC];
            load_vec<T_X, VEC>(xr + c * VEC, a);
            online_update(a, m, s);
        }
        merge_row(m, s, red);
        if (!valid) continue;
        const ACC inv = (ACC)1 / s;
        for (int c = lane; c < nvec; c += TPR) {
            ACC a[VEC];
            load_vec<T_X, VEC>(xr + c * VEC, a);
#pragma unroll
            for (int i = 0; i < VEC; ++i) a[i] = exp_io(a[i] - m) * inv;
            store_vec<T_Y, VEC>(yr + c * VEC, a);
        }
#endif
    }
}

// dx = y * (dy - sum(dy * y)); T_X is the dtype of y, dy and dx.
extern "C" __global__ void __launch_bounds__(BLOCK) softmax_bwd(const T_X* __restrict__ y, i64 y_rs,
                                                                const T_X* __restrict__ dy, i64 dy_rs,
                                                                T_X* __restrict__ dx, i64 dx_rs, i64 rows, int cols) {
    __shared__ ACC red[BLOCK / 32];
    const int group = threadIdx.x / TPR, lane = threadIdx.x % TPR;
    const int nvec = cols / VEC;
    for (i64 base = (i64)blockIdx.x * RPB; base < rows; base += (i64)gridDim.x * RPB) {
        const i64 row = base + group;
        const bool valid = row < rows;
        ACC dot = 0;
#if CHUNKS > 0
        Vec<T_X, VEC> yv[CHUNKS], dv[CHUNKS];
        ACC cs[CHUNKS];
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            cs[k] = 0;
            if (valid && c < nvec) {
                yv[k] = load_raw<T_X, VEC>(y + row * y_rs + c * VEC);
                dv[k] = load_raw<T_X, VEC>(dy + row * dy_rs + c * VEC);
                ACC a[VEC], d[VEC];
                unpack<T_X, VEC>(yv[k], a);
                unpack<T_X, VEC>(dv[k], d);
#pragma unroll
                for (int i = 0; i < VEC; ++i) a[i] *= d[i];
                cs[k] = tree_sum<VEC>(a);
            }
        }
        dot = tree_sum<CHUNKS>(cs);  // pairwise, as in the forward
#else
        for (int c = lane; valid && c < nvec; c += TPR) {
            ACC a[VEC], d[VEC];
            load_vec<T_X, VEC>(y + row * y_rs + c * VEC, a);
            load_vec<T_X, VEC>(dy + row * dy_rs + c * VEC, d);
#pragma unroll
            for (int i = 0; i < VEC; ++i) dot += a[i] * d[i];
        }
#endif
        dot = group_sum<TPR>(dot, red);
        if (!valid) continue;
#if CHUNKS > 0
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (c < nvec) {
                ACC a[VEC], d[VEC];
                unpack<T_X, VEC>(yv[k], a);
                unpack<T_X, VEC>(dv[k], d);
#pragma unroll
                for (int i = 0; i < VEC; ++i) a[i] *= d[i] - dot;
                store_vec<T_X, VEC>(dx + row * dx_rs + c * VEC, a);
            }
        }
#else
        for (int c = lane; c < nvec; c += TPR) {
            ACC a[VEC], d[VEC];
            load_vec<T_X, VEC>(y + row * y_rs + c * VEC, a);
            load_vec<T_X, VEC>(dy + row * dy_rs + c * VEC, d);
#pragma unroll
            for (int i = 0; i < VEC; ++i) a[i] *= d[i] - dot;
            store_vec<T_X, VEC>(dx + row * dx_rs + c * VEC, a);
        }
#endif
    }
}
