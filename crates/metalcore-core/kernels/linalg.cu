// Batched small dense factorizations: Householder QR, Cholesky, LU with partial pivoting (fused
// with the solve) and triangular solves. One "team" of threads owns one matrix, held in shared
// memory from load to store, so the whole batch is one launch and global memory is touched once
// per operand. A team is one warp (WARPS == 1, MPB teams per block, for n <= 32: no block barriers)
// or WARPS warps (one matrix per block).
//
// Work split inside a team: lanes own columns (consecutive columns of a row sit in consecutive
// banks), warps own row stripes (row i belongs to warp i mod WARPS). Rows are padded to an odd
// stride so a column read across rows is conflict-free too.
//
// QR follows LAPACK's geqr2/org2r: reflector H_k = I - tau v vᵀ with v_k = 1, beta = -sign(alpha)
// ||(alpha, x)|| (sign(0) = +1), tau = (beta - alpha)/beta, v = x/(alpha - beta); R keeps beta on its diagonal
// (the sign convention of torch.linalg.qr). Q is accumulated backwards, H_0 (H_1 (... I)).
// Cholesky is the right-looking (outer-product) variant; LU is Gaussian elimination with row
// interchanges (first largest |pivot|, as LAPACK's idamax), applied to the right-hand sides as it
// goes, then back substitution.
//
// Defines: T_X (float or double; ACC the same), WARPS (warps per team), MPB (teams per block;
// WARPS == 1 only).

typedef T_X T;

#if WARPS == 1
#define TEAM_SYNC() __syncwarp()
#else
#define TEAM_SYNC() __syncthreads()
#endif
#define TEAM (32 * WARPS)

struct Team {
    int t;     // thread index in the team
    int lane;  // lane in the warp
    int w;     // warp in the team
};

__device__ __forceinline__ Team team_of() {
    Team tm;
    tm.t = threadIdx.x % TEAM;
    tm.lane = threadIdx.x & 31;
    tm.w = tm.t >> 5;
    return tm;
}

// Matrix index of this team, and its slice of the dynamic shared memory (`per` elements each).
__device__ __forceinline__ long long team_matrix(T** base, size_t per) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int team = threadIdx.x / TEAM;
    *base = reinterpret_cast<T*>(smem_raw) + team * per;
    return (long long)blockIdx.x * MPB + team;
}

// Sum over the team, returned to every thread. `red` holds 2*WARPS values: the two halves alternate
// between calls (by `parity`), so a call never overwrites values a slower warp is still reading.
__device__ __forceinline__ T team_sum(T v, T* red, int parity, const Team& tm) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
#if WARPS > 1
    if (tm.lane == 0) red[parity * WARPS + tm.w] = v;
    __syncthreads();
    v = T(0);
    for (int i = 0; i < WARPS; ++i) v += red[parity * WARPS + i];
#endif
    return v;
}

// The first index of the largest |value| over the team (NaN counts as largest, so it is picked and
// propagates); every thread gets (value, index). `red` holds 2*WARPS values and 2*WARPS indices.
__device__ __forceinline__ void better(T& v, int& i, T ov, int oi) {
    const bool take = (ov > v) || (ov == v && oi < i) || (ov != ov && v == v) || (ov != ov && oi < i);
    if (take) { v = ov; i = oi; }
}

__device__ __forceinline__ void team_argmax(T& v, int& i, T* red, int* redi, int parity, const Team& tm) {
    for (int o = 16; o; o >>= 1) {
        const T ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        better(v, i, ov, oi);
    }
#if WARPS > 1
    if (tm.lane == 0) { red[parity * WARPS + tm.w] = v; redi[parity * WARPS + tm.w] = i; }
    __syncthreads();
    v = red[parity * WARPS];
    i = redi[parity * WARPS];
    for (int q = 1; q < WARPS; ++q) better(v, i, red[parity * WARPS + q], redi[parity * WARPS + q]);
#endif
}

// x[k:m, j0:ncols] = (I - tau v vᵀ) x[k:m, j0:ncols], v_k = 1 and v_i = a[i*lda + k] below.
// `part` holds WARPS*ncols partial dot products. Ends with a team barrier.
__device__ void reflect(T* x, int ldx, int j0, int ncols, const T* a, int lda, int k, int m, T tau,
                        T* part, const Team& tm) {
    if (tau == T(0)) return;  // uniform: every thread computed the same tau
    for (int j = j0 + tm.lane; j < ncols; j += 32) {
        T s = T(0);
        for (int i = k + tm.w; i < m; i += WARPS) s += (i == k ? T(1) : a[i * lda + k]) * x[i * ldx + j];
#if WARPS == 1
        s *= tau;
        for (int i = k; i < m; ++i) x[i * ldx + j] -= (i == k ? T(1) : a[i * lda + k]) * s;
#else
        part[tm.w * ncols + j] = s;
#endif
    }
#if WARPS > 1
    __syncthreads();
    for (int j = j0 + tm.lane; j < ncols; j += 32) {
        T s = T(0);
        for (int q = 0; q < WARPS; ++q) s += part[q * ncols + j];
        s *= tau;
        for (int i = k + tm.w; i < m; i += WARPS) x[i * ldx + j] -= (i == k ? T(1) : a[i * lda + k]) * s;
    }
#endif
    TEAM_SYNC();
}

// Elements of the team's shared memory for QR of an m×n matrix (Q with kq columns, or none).
__device__ __forceinline__ size_t qr_smem(int m, int n, int kq) {
    const int K = min(m, n);
    return (size_t)m * (n + 1) + (size_t)m * (kq ? kq + 1 : 0) + (size_t)WARPS * max(n, kq) + K + 2 * WARPS;
}

// A: (batch, m, n) contiguous. Q: (batch, m, kq) or null (kq = 0). R: (batch, kr, n), kr <= m.
extern "C" __global__ void qr_kernel(const T* __restrict__ A, T* __restrict__ Q, T* __restrict__ R,
                                     long long batch, int m, int n, int kq, int kr) {
    const Team tm = team_of();
    const int K = min(m, n), lda = n + 1, ldq = kq + 1;
    T* a;
    const long long b = team_matrix(&a, qr_smem(m, n, kq));
    if (b >= batch) return;  // a whole team leaves together
    T* q = a + (size_t)m * lda;
    T* part = q + (size_t)m * (kq ? ldq : 0);
    T* taus = part + (size_t)WARPS * max(n, kq);
    T* red = taus + K;

    const T* src = A + b * m * n;
    for (int e = tm.t; e < m * n; e += TEAM) a[(e / n) * lda + e % n] = src[e];
    TEAM_SYNC();

    for (int k = 0; k < K; ++k) {
        T ss = T(0);
        for (int i = k + 1 + tm.t; i < m; i += TEAM) { const T x = a[i * lda + k]; ss += x * x; }
        ss = team_sum(ss, red, k & 1, tm);
        const T alpha = a[k * lda + k];
        T tau = T(0), beta = alpha, scale = T(0);
        if (ss > T(0)) {
            const T r = sqrt(alpha * alpha + ss);
            beta = alpha >= T(0) ? -r : r;
            tau = (beta - alpha) / beta;
            scale = T(1) / (alpha - beta);
        } else if (ss != ss || alpha != alpha) {
            tau = beta = T(__longlong_as_double(0x7ff8000000000000ULL));  // NaN in the column: make it reach Q and R
        }
        if (ss > T(0))
            for (int i = k + 1 + tm.t; i < m; i += TEAM) a[i * lda + k] *= scale;
        TEAM_SYNC();
        reflect(a, lda, k + 1, n, a, lda, k, m, tau, part, tm);
        if (tm.t == 0) { a[k * lda + k] = beta; taus[k] = tau; }
    }
    TEAM_SYNC();

    T* rdst = R + b * kr * n;
    for (int e = tm.t; e < kr * n; e += TEAM) {
        const int i = e / n, j = e % n;
        rdst[e] = j >= i ? a[i * lda + j] : T(0);
    }
    if (!kq) return;
    for (int e = tm.t; e < m * kq; e += TEAM) {
        const int i = e / kq, j = e % kq;
        q[i * ldq + j] = i == j ? T(1) : T(0);
    }
    TEAM_SYNC();
    for (int k = K - 1; k >= 0; --k) reflect(q, ldq, k, kq, a, lda, k, m, taus[k], part, tm);
    T* qdst = Q + b * m * kq;
    for (int e = tm.t; e < m * kq; e += TEAM) qdst[e] = q[(e / kq) * ldq + e % kq];
}

// In place on A (batch, n, n): the lower triangle is read; the factor is written lower (or, with
// `upper`, transposed into the upper triangle) with the other triangle zeroed. info[b] = 0, or
// the order of the first leading minor that is not positive definite (NaN included); the factor
// is then partial.
extern "C" __global__ void cholesky_kernel(T* __restrict__ A, int* __restrict__ info, long long batch, int n,
                                           int upper) {
    const Team tm = team_of();
    const int ld = n + 1;
    T* a;
    const long long b = team_matrix(&a, (size_t)n * ld);
    if (b >= batch) return;
    T* g = A + b * n * n;
    for (int e = tm.t; e < n * n; e += TEAM) {
        const int i = e / n, j = e % n;
        if (j <= i) a[i * ld + j] = g[e];
    }
    TEAM_SYNC();
    int fail = 0;
    for (int k = 0; k < n; ++k) {
        const T d = a[k * ld + k];
        if (!(d > T(0))) { fail = k + 1; break; }  // uniform: every thread read the same d
        const T s = sqrt(d);
        for (int i = k + 1 + tm.t; i < n; i += TEAM) a[i * ld + k] /= s;
        TEAM_SYNC();
        if (tm.t == 0) a[k * ld + k] = s;
        for (int j = k + 1 + tm.lane; j < n; j += 32) {
            const T ljk = a[j * ld + k];
            int i = k + 1 + tm.w;
            if (i < j) i += ((j - i + WARPS - 1) / WARPS) * WARPS;
            for (; i < n; i += WARPS) a[i * ld + j] -= a[i * ld + k] * ljk;
        }
        TEAM_SYNC();
    }
    for (int e = tm.t; e < n * n; e += TEAM) {
        const int i = e / n, j = e % n;
        g[e] = upper ? (j >= i ? a[j * ld + i] : T(0)) : (j <= i ? a[i * ld + j] : T(0));
    }
    if (tm.t == 0) info[b] = fail;
}

// Solves op(t) x = b in place on b (n × nrhs, stride ldb) for the n×n triangular t (stride ldt):
// op(t) = t, or tᵀ with `trans`; the `lower` (else upper) triangle of t is used, its diagonal taken
// as ones with `unit`. Two barriers per row. Ends with a team barrier.
__device__ void substitute(const T* t, int ldt, bool lower, bool trans, bool unit, T* x, int ldb, int n, int nrhs,
                           const Team& tm) {
    const bool fwd = lower != trans;  // op(t) lower: forward substitution
    for (int s = 0; s < n; ++s) {
        const int k = fwd ? s : n - 1 - s;
        if (!unit) {
            const T d = t[k * ldt + k];
            for (int c = tm.t; c < nrhs; c += TEAM) x[k * ldb + c] /= d;
            TEAM_SYNC();
        }
        const int lo = fwd ? k + 1 : 0, cnt = fwd ? n - k - 1 : k;
        for (int e = tm.t; e < cnt * nrhs; e += TEAM) {
            const int i = lo + e / nrhs, c = e % nrhs;
            const T tik = trans ? t[k * ldt + i] : t[i * ldt + k];
            x[i * ldb + c] -= tik * x[k * ldb + c];
        }
        TEAM_SYNC();
    }
}

// Loads an r×c block (row stride c in global) into shared memory with row stride ld.
__device__ __forceinline__ void load(T* s, int ld, const T* g, int r, int c, const Team& tm) {
    for (int e = tm.t; e < r * c; e += TEAM) s[(e / c) * ld + e % c] = g[e];
}

__device__ __forceinline__ void store(T* g, const T* s, int ld, int r, int c, const Team& tm) {
    for (int e = tm.t; e < r * c; e += TEAM) g[e] = s[(e / c) * ld + e % c];
}

// A (batch, n, n) becomes its LU factors (unit-lower L below the diagonal, U on and above), B
// (batch, n, nrhs; nrhs may be 0) the solution of A X = B, piv (batch, n; may be null) the 1-based
// row interchanges as LAPACK's getrf reports them, info[b] = 0 or j > 0 when U[j-1][j-1] == 0
// (the first such; the elimination goes on, as in getrf, and X is then undefined).
extern "C" __global__ void lu_kernel(T* __restrict__ A, T* __restrict__ B, int* __restrict__ piv,
                                     int* __restrict__ info, long long batch, int n, int nrhs) {
    const Team tm = team_of();
    const int lda = n + 1, ldb = nrhs + 1;
    T* a;
    const long long b = team_matrix(&a, (size_t)n * lda + (size_t)n * ldb + 4 * WARPS);
    if (b >= batch) return;
    T* x = a + (size_t)n * lda;
    T* red = x + (size_t)n * ldb;
    int* redi = reinterpret_cast<int*>(red + 2 * WARPS);  // 2*WARPS ints fit in 2*WARPS elements of T
    T* ga = A + b * n * n;
    T* gb = B + b * n * nrhs;
    load(a, lda, ga, n, n, tm);
    load(x, ldb, gb, n, nrhs, tm);
    TEAM_SYNC();
    int fail = 0;
    for (int k = 0; k < n; ++k) {
        T v = T(-1);
        int p = n;
        for (int i = k + tm.t; i < n; i += TEAM) better(v, p, fabs(a[i * lda + k]), i);
        team_argmax(v, p, red, redi, k & 1, tm);
        if (piv && tm.t == 0) piv[b * n + k] = p + 1;
        if (p != k) {
            for (int j = tm.t; j < n + nrhs; j += TEAM) {
                T* r0 = j < n ? a + k * lda + j : x + k * ldb + (j - n);
                T* r1 = j < n ? a + p * lda + j : x + p * ldb + (j - n);
                const T tmp = *r0;
                *r0 = *r1;
                *r1 = tmp;
            }
        }
        TEAM_SYNC();
        const T pv = a[k * lda + k];
        if (pv == T(0)) {
            if (!fail) fail = k + 1;
        } else {
            for (int i = k + 1 + tm.t; i < n; i += TEAM) a[i * lda + k] /= pv;
        }
        TEAM_SYNC();
        for (int j = k + 1 + tm.lane; j < n + nrhs; j += 32) {
            T* col = j < n ? a + j : x + (j - n);
            const int ld = j < n ? lda : ldb;
            const T ukj = col[k * ld];
            for (int i = k + 1 + tm.w; i < n; i += WARPS) col[i * ld] -= a[i * lda + k] * ukj;
        }
        TEAM_SYNC();
    }
    substitute(a, lda, false, false, false, x, ldb, n, nrhs, tm);
    store(ga, a, lda, n, n, tm);
    store(gb, x, ldb, n, nrhs, tm);
    if (tm.t == 0) info[b] = fail;
}

// B (batch, n, nrhs) in place: X = op1(T)⁻¹ B, then, with `two`, X = op2(T)⁻¹ X (a Cholesky solve
// is the pair L, Lᵀ). Flags: bit 0 lower, bit 1 transpose, bit 2 unit diagonal.
extern "C" __global__ void trsm_kernel(const T* __restrict__ Tm, T* __restrict__ B, long long batch, int n, int nrhs,
                                       int flags1, int two, int flags2) {
    const Team tm = team_of();
    const int ldt = n + 1, ldb = nrhs + 1;
    T* t;
    const long long b = team_matrix(&t, (size_t)n * ldt + (size_t)n * ldb);
    if (b >= batch) return;
    T* x = t + (size_t)n * ldt;
    T* gb = B + b * n * nrhs;
    load(t, ldt, Tm + b * n * n, n, n, tm);
    load(x, ldb, gb, n, nrhs, tm);
    TEAM_SYNC();
    substitute(t, ldt, flags1 & 1, flags1 & 2, flags1 & 4, x, ldb, n, nrhs, tm);
    if (two) substitute(t, ldt, flags2 & 1, flags2 & 2, flags2 & 4, x, ldb, n, nrhs, tm);
    store(gb, x, ldb, n, nrhs, tm);
}
