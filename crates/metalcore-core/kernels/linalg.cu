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

__device__ __forceinline__ T nan_t() { return T(__longlong_as_double(0x7ff8000000000000ULL)); }

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

// y[i*ldy] -= x[i*ldx] * s for the rows i = i0, i0 + WARPS, ... < end: a warp's row stripe of one
// column. Four rows in flight (all loads before the stores: the compiler cannot prove that y and
// x, two columns of one matrix, do not alias, and would otherwise serialize every row).
__device__ __forceinline__ void col_axpy(T* y, int ldy, const T* x, int ldx, T s, int i0, int end) {
    int i = i0;
    for (; i + 3 * WARPS < end; i += 4 * WARPS) {
        const T x0 = x[i * ldx], x1 = x[(i + WARPS) * ldx], x2 = x[(i + 2 * WARPS) * ldx], x3 = x[(i + 3 * WARPS) * ldx];
        const T y0 = y[i * ldy], y1 = y[(i + WARPS) * ldy], y2 = y[(i + 2 * WARPS) * ldy], y3 = y[(i + 3 * WARPS) * ldy];
        y[i * ldy] = y0 - x0 * s;
        y[(i + WARPS) * ldy] = y1 - x1 * s;
        y[(i + 2 * WARPS) * ldy] = y2 - x2 * s;
        y[(i + 3 * WARPS) * ldy] = y3 - x3 * s;
    }
    for (; i < end; i += WARPS) y[i * ldy] -= x[i * ldx] * s;
}

// Σ y[i*ldy] x[i*ldx] over the same row stripe, four rows in flight.
__device__ __forceinline__ T col_dot(const T* y, int ldy, const T* x, int ldx, int i0, int end) {
    T s0 = T(0), s1 = T(0);
    int i = i0;
    for (; i + 3 * WARPS < end; i += 4 * WARPS) {
        s0 += y[i * ldy] * x[i * ldx] + y[(i + 2 * WARPS) * ldy] * x[(i + 2 * WARPS) * ldx];
        s1 += y[(i + WARPS) * ldy] * x[(i + WARPS) * ldx] + y[(i + 3 * WARPS) * ldy] * x[(i + 3 * WARPS) * ldx];
    }
    for (; i < end; i += WARPS) s0 += y[i * ldy] * x[i * ldx];
    return s0 + s1;
}

// x[k:m, j0:ncols] = (I - tau v vᵀ) x[k:m, j0:ncols], v_k = 1 and v_i = a[i*lda + k] below.
// Warp w owns rows k + w, k + w + WARPS, ...; warp 0's first row is row k itself (v_k = 1).
// `part` holds WARPS*ncols partial dot products. Ends with a team barrier.
__device__ void reflect(T* x, int ldx, int j0, int ncols, const T* a, int lda, int k, int m, T tau,
                        T* part, const Team& tm) {
    if (tau == T(0)) return;  // uniform: every thread computed the same tau
    const int i0 = tm.w == 0 ? k + WARPS : k + tm.w;
    const T* v = a + k;
    for (int j = j0 + tm.lane; j < ncols; j += 32) {
        T s = col_dot(x + j, ldx, v, lda, i0, m);
        if (tm.w == 0) s += x[k * ldx + j];
#if WARPS == 1
        s *= tau;
        x[k * ldx + j] -= s;
        col_axpy(x + j, ldx, v, lda, s, i0, m);
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
        if (tm.w == 0) x[k * ldx + j] -= s;
        col_axpy(x + j, ldx, v, lda, s, i0, m);
    }
#endif
    TEAM_SYNC();
}

// LAPACK larfg's reflector for (alpha, x) with sigma = ‖x‖²: where sigma > 0, beta =
// -sign(alpha)·‖(alpha, x)‖ (sign(0) = +1), tau = (beta - alpha)/beta and x's scale sc =
// 1/(alpha - beta); else H = I (tau = 0, beta = alpha, sc = 0).
__device__ __forceinline__ void larfg(T alpha, T sigma, T& tau, T& beta, T& sc) {
    tau = T(0);
    beta = alpha;
    sc = T(0);
    if (sigma > T(0)) {
        const T r = sqrt(alpha * alpha + sigma);
        beta = alpha >= T(0) ? -r : r;
        tau = (beta - alpha) / beta;
        sc = T(1) / (alpha - beta);
    }
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
        T tau, beta, scale;
        larfg(alpha, ss, tau, beta, scale);
        if (!(ss > T(0)) && (ss != ss || alpha != alpha)) {
            tau = beta = nan_t();  // NaN in the column: make it reach Q and R
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

// S (batch, n, n) into A (S may be A: in place): the lower triangle of S is read; the factor is
// written to A lower (or, with `upper`, transposed into the upper triangle) with the other triangle zeroed. info[b] = 0, or
// the order of the first leading minor that is not positive definite (NaN included); the factor
// is then partial.
extern "C" __global__ void cholesky_kernel(const T* S, T* A, int* __restrict__ info, long long batch, int n,
                                           int upper) {
    const Team tm = team_of();
    const int ld = n + 1;
    T* a;
    const long long b = team_matrix(&a, (size_t)n * ld);
    if (b >= batch) return;
    const T* src = S + b * n * n;
    T* g = A + b * n * n;
    for (int e = tm.t; e < n * n; e += TEAM) {
        const int i = e / n, j = e % n;
        if (j <= i) a[i * ld + j] = src[e];
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
            int i = k + 1 + tm.w;
            if (i < j) i += ((j - i + WARPS - 1) / WARPS) * WARPS;
            col_axpy(a + j, ld, a + k, ld, a[j * ld + k], i, n);
        }
        TEAM_SYNC();
    }
    for (int e = tm.t; e < n * n; e += TEAM) {
        const int i = e / n, j = e % n;
        g[e] = upper ? (j >= i ? a[j * ld + i] : T(0)) : (j <= i ? a[i * ld + j] : T(0));
    }
    if (tm.t == 0) info[b] = fail;
}

#ifdef R_TILE
// Register-tiled Cholesky for 32 < n <= 16·R_TILE: a 16×16 thread grid, thread (ty, tx) owning
// the elements (ty + 16a, tx + 16b), a, b < R_TILE, of the matrix padded to NP = 16·R_TILE with
// the identity (whose factor is the identity). Right-looking: per column k the diagonal's owner
// publishes a_kk, the column's owners scale it and publish it, and every thread updates its own
// trailing elements from the published column — registers, not shared memory, hold the matrix, so
// an update costs one FMA. Two barriers per column. Same contract as cholesky_kernel.
extern "C" __global__ void __launch_bounds__(256) cholesky_reg_kernel(const T* S, T* A, int* __restrict__ info,
                                                                      long long batch, int n, int upper) {
    constexpr int R = R_TILE, NP = 16 * R_TILE;
    __shared__ T col[NP];
    __shared__ T dsh;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const long long b = blockIdx.x;
    const T* src = S + b * n * n;
    T* g = A + b * n * n;
    T x[R][R];
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
        for (int c = 0; c < R; ++c) {
            const int i = ty + 16 * a, j = tx + 16 * c;
            x[a][c] = (i < n && j < n) ? (j <= i ? src[i * n + j] : T(0)) : (i == j ? T(1) : T(0));
        }
    int fail = 0;
#pragma unroll
    for (int kb = 0; kb < R; ++kb) {
        for (int kk = 0; kk < 16; ++kk) {
            const int k = 16 * kb + kk;
            if (tx == kk && ty == kk) dsh = x[kb][kb];
            __syncthreads();
            const T d = dsh;
            if (!(d > T(0))) {  // uniform: every thread read the same d
                fail = k + 1;
                break;
            }
            const T sd = sqrt(d);
            // Rows and columns past k lie in tiles kb.. (uniform tests, so a finished tile costs
            // no instructions), and only tiles c <= a hold lower-triangle elements.
            if (tx == kk) {
#pragma unroll
                for (int a = 0; a < R; ++a) {
                    const int i = ty + 16 * a;
                    if (a < kb) continue;
                    if (i > k) {
                        const T l = x[a][kb] / sd;
                        x[a][kb] = l;
                        col[i] = l;
                    } else if (i == k) {
                        x[a][kb] = sd;
                    }
                }
            }
            __syncthreads();
            T ci[R], cj[R];
#pragma unroll
            for (int a = 0; a < R; ++a) {
                if (a < kb) continue;
                ci[a] = col[ty + 16 * a];
                cj[a] = col[tx + 16 * a];
            }
#pragma unroll
            for (int a = 0; a < R; ++a)
#pragma unroll
                for (int c = 0; c < R; ++c) {
                    if (c < kb || c > a) continue;
                    const int i = ty + 16 * a, j = tx + 16 * c;
                    if (j > k && i >= j) x[a][c] -= ci[a] * cj[c];
                }
        }
        if (fail) break;
    }
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
        for (int c = 0; c < R; ++c) {
            const int i = ty + 16 * a, j = tx + 16 * c;
            if (i < n && j < n) {
                const T v = j <= i ? x[a][c] : T(0);
                if (upper) {
                    g[j * n + i] = v;
                } else {
                    g[i * n + j] = v;
                }
            }
        }
    if (threadIdx.x == 0) info[b] = fail;
}
#endif

#ifdef DIAG_NB
// The blocked Cholesky of one large matrix (cuda/linalg.rs), right-looking in steps of DIAG_NB
// columns: chol_diag_kernel factors the step's diagonal block, chol_panel_kernel solves the rows
// below it, chol_syrk_kernel (or cuBLAS) updates the trailing matrix — with the look-ahead,
// chol_syrk_col_kernel updates its first block columns apart from the rest. The first two work in
// 32-column tiles: one warp factors a tile in registers, one thread per row solves the rows below
// it, and a rank-32 product updates the columns right of it. Measured (torch.profiler and
// CHOL_TRACE's clock marks, H200, 4096² float32): per step about 28 µs in chol_diag_kernel (of
// it about 11 µs in the four tile factorizations, one warp each, 5 in the updates, 2 in loading
// the block and 2.7 in storing it) and 20 µs in chol_panel_kernel (32 rows a block), on the
// look-ahead's critical path with the 13 µs update of the next block column
// (bench/results/cholesky-blocked-nvidia-h200.md).
// Rows per block of chol_panel_kernel (a define from cuda/linalg.rs's `panel_rows`).
#ifndef PANEL_R
#define PANEL_R 64
#endif
constexpr unsigned CHOL_FULL = 0xffffffffu;
constexpr int CHOL_NW = 8;  // warps of chol_diag_kernel and chol_panel_kernel

// The t-th (i, j), j <= i, of the lower triangle in row order: (0,0), (1,0), (1,1), (2,0), ...
// (the float square root's estimate of i corrected exactly).
__device__ __forceinline__ void lower_pair(int t, int& i, int& j) {
    i = (int)((sqrtf(8.0f * t + 1.0f) - 1.0f) * 0.5f);
    while (i * (i + 1) / 2 > t) --i;
    while ((i + 1) * (i + 2) / 2 <= t) ++i;
    j = t - i * (i + 1) / 2;
}

// Copies into shared memory `s` (row stride DIAG_NB + 1) the entries (i, j), j < lim(i), of the
// rows [0, rows) of `g` (rows `ld` apart), 256 threads: each thread issues its 32 loads before
// storing any, so a block waits for memory about once per 8192 entries, not once per row.
// Where `whole` is set and the rows are 16-byte aligned, whole rows (lim ignored: the entries
// past it are loaded too, and never used) are read 16 bytes per load, one row per warp and
// instruction, 16 loads per thread in flight.
template <typename Lim>
__device__ __forceinline__ void load_rows(T* s, const T* g, long long ld, int rows, Lim lim, bool whole) {
    constexpr int LDS = DIAG_NB + 1, U = 32;
    constexpr int V = 16 / sizeof(T), VR = DIAG_NB / V, UV = 16;
    struct alignas(16) Vec {
        T e[V];
    };
    if (whole && ((reinterpret_cast<unsigned long long>(g) | (unsigned long long)ld * sizeof(T)) & 15) == 0) {
        const int total = rows * VR;
        for (int e0 = 0; e0 < total; e0 += UV * 256) {
            Vec v[UV];
#pragma unroll
            for (int u = 0; u < UV; ++u) {
                const int e = e0 + u * 256 + threadIdx.x;
                if (e < total) v[u] = *reinterpret_cast<const Vec*>(g + (e / VR) * ld + (e % VR) * V);
            }
#pragma unroll
            for (int u = 0; u < UV; ++u) {
                const int e = e0 + u * 256 + threadIdx.x;
                if (e < total) {
#pragma unroll
                    for (int q = 0; q < V; ++q) s[(e / VR) * LDS + (e % VR) * V + q] = v[u].e[q];
                }
            }
        }
        return;
    }
    const int total = rows * DIAG_NB;
    for (int e0 = 0; e0 < total; e0 += U * 256) {
        T v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = e0 + u * 256 + threadIdx.x, i = e / DIAG_NB, j = e % DIAG_NB;
            v[u] = e < total && j < lim(i) ? g[i * ld + j] : T(0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = e0 + u * 256 + threadIdx.x, i = e / DIAG_NB, j = e % DIAG_NB;
            if (e < total && j < lim(i)) s[i * LDS + j] = v[u];
        }
    }
}

// One warp, lane i holding row i of the 32×32 lower tile (a[j], j <= i; lanes from `w` on hold
// identity rows): factors it in place (a[j] = L_ij); returns the order of the first non-positive
// pivot (0: none; the tile is then NaN from there on) and 1 / L_{lane,lane} in `dinv`.
__device__ __forceinline__ int warp_chol(T (&a)[32], int w, T& dinv) {
    const int lane = threadIdx.x & 31;
    int fail = 0;
    // Branch-free: entries above a lane's diagonal are updated too (and never read), so no step
    // needs a per-lane branch (which cost more than the arithmetic).
#pragma unroll
    for (int k = 0; k < 32; ++k) {
        const T d = __shfl_sync(CHOL_FULL, a[k], k);
        fail = (!fail && k < w && !(d > T(0))) ? k + 1 : fail;
        T sd, inv;
        if constexpr (sizeof(T) == 4) {  // the hardware reciprocal square root: half the latency
            inv = rsqrtf(d);
            sd = d * inv;
        } else {
            sd = sqrt(d);
            inv = T(1) / sd;
        }
        a[k] = lane == k ? sd : a[k] * inv;
        dinv = lane == k ? inv : dinv;
#pragma unroll
        for (int j = k + 1; j < 32; ++j) a[j] -= a[k] * __shfl_sync(CHOL_FULL, a[k], j);
    }
    return fail;
}

// x ← x L⁻ᵀ over the tile's `w` columns from c0 for the rows [r0, r1) of `s` (row stride
// DIAG_NB + 1), L the tile at (c0, c0) of `l` with `dinv` its reciprocal diagonal: one row per
// thread, in registers (x_k = x_k / L_kk, then x_j -= x_k L_jk for j > k: independent products,
// L read by every thread of a warp at once).
__device__ __forceinline__ void tile_solve_rows(T* s, const T* l, const T* dinv, int c0, int w, int r0, int r1) {
    constexpr int LDS = DIAG_NB + 1;
    for (int r = r0 + (int)threadIdx.x; r < r1; r += blockDim.x) {
        T x[32];
#pragma unroll
        for (int j = 0; j < 32; ++j) x[j] = j < w ? s[r * LDS + c0 + j] : T(0);
#pragma unroll
        for (int k = 0; k < 32; ++k) {
            if (k < w) {  // uniform
                x[k] *= dinv[c0 + k];
#pragma unroll
                for (int j = k + 1; j < 32; ++j)
                    if (j < w) x[j] -= x[k] * l[(c0 + j) * LDS + c0 + k];
            }
        }
#pragma unroll
        for (int j = 0; j < 32; ++j)
            if (j < w) s[r * LDS + c0 + j] = x[j];
    }
}

// One thread's 4×4 outputs of a rank-w update in shared memory (row stride DIAG_NB + 1): for
// p, q < 4 with i = i0 + p·rs < rows, j = j0 + q·cs < cols (and j <= i with `lower`),
// s[ra + i][cb + j] -= Σ_{k<w} s[ra + i][c0+k] l[rb + j][c0+k].
__device__ __forceinline__ void rank_update_4x4(T* s, const T* l, int c0, int w, int ra, int i0, int rs, int rows,
                                                int rb, int j0, int cs, int cols, int cb, bool lower) {
    constexpr int LDS = DIAG_NB + 1;
    T acc[4][4];
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] = T(0);
#pragma unroll 8
    for (int k = 0; k < w; ++k) {
        T li[4], ll[4];
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            li[p] = i0 + p * rs < rows ? s[(ra + i0 + p * rs) * LDS + c0 + k] : T(0);
            ll[p] = j0 + p * cs < cols ? l[(rb + j0 + p * cs) * LDS + c0 + k] : T(0);
        }
#pragma unroll
        for (int p = 0; p < 4; ++p)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[p][q] += li[p] * ll[q];
    }
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int i = i0 + p * rs, j = j0 + q * cs;
            if (i < rows && j < cols && (!lower || j <= i)) s[(ra + i) * LDS + cb + j] -= acc[p][q];
        }
}

// s[i][j] -= Σ_{k<w} s[i][c0+k] l[j][c0+k] for the `rows` rows of `s` from i0s and the `cols`
// rows of `l` from j0s (the columns of `s` written), 4×4 outputs per thread: rows ti + p·mt and
// columns tl + q·nt, so that the lanes of a warp read consecutive rows of `l` (distinct banks)
// instead of rows 4 apart (8 banks, 4-way conflicts).
__device__ __forceinline__ void tile_update(T* s, const T* l, int c0, int w, int i0s, int rows, int j0s, int cols) {
    const int mt = (rows + 3) >> 2, nt = (cols + 3) >> 2;
    for (int t = threadIdx.x; t < mt * nt; t += blockDim.x) {
        const int ti = t / nt, tl = t - ti * nt;
        rank_update_4x4(s, l, c0, w, i0s, ti, mt, rows, j0s, tl, nt, cols, j0s, false);
    }
}

// CHOL_TRACE (METALCORE_CHOL_TRACE=1, a development aid): thread 0 of the first block prints the
// SM clock's ticks between the phase boundaries of the diagonal kernel's first three steps and
// of every panel kernel.
#ifdef CHOL_TRACE
#define CHOL_MARKS() \
    long long mark_[24]; \
    int nmark_ = 0;
#define CHOL_MARK() \
    if (threadIdx.x == 0 && nmark_ < 24) mark_[nmark_++] = clock64();
#define CHOL_PRINT(what, k)                                                                 \
    if (threadIdx.x == 0 && blockIdx.x == 0 && (k) < 3 * DIAG_NB) {                         \
        printf("%s k0=%d:", what, (int)(k));                                                \
        for (int m_ = 1; m_ < nmark_; ++m_) printf(" %lld", mark_[m_] - mark_[m_ - 1]);     \
        printf("\n");                                                                       \
    }
#else
#define CHOL_MARKS()
#define CHOL_MARK()
#define CHOL_PRINT(what, k)
#endif

// s[i][j] -= Σ_{k<32} s[i][c0+k] s[j][c0+k] for j <= i < rows, i and j counted from i0 (rows and
// columns of `s`): the lower 32×32 blocks of that square, 64 threads per block, thread (ti, tl)
// owning rows ti + 8p and columns tl + 8q (p, q < 4) of its block, so that the lanes of a warp read
// 8 consecutive rows of one operand and 4 of the other (distinct banks). Diagonal blocks are
// computed whole and written on and below the diagonal only.
__device__ __forceinline__ void tri_update(T* s, int c0, int i0, int rows) {
    const int nbk = (rows + 31) >> 5, total = 64 * (nbk * (nbk + 1) / 2);
    for (int t = threadIdx.x; t < total; t += blockDim.x) {
        int bi, bj;
        lower_pair(t >> 6, bi, bj);
        const int r0 = 32 * bi + ((t & 63) >> 3), q0 = 32 * bj + (t & 7);
        rank_update_4x4(s, s, c0, 32, i0, r0, 8, rows, i0, q0, 8, rows, i0, true);
    }
}

// The step's diagonal block (n <= DIAG_NB) in place at A (rows `ld` apart; lower triangle read
// and written), 256 threads, the block in shared memory (DIAG_NB × (DIAG_NB + 1) elements,
// dynamic). Per 32-column tile: warp 0 factors it in registers, one thread per row solves the rows
// below against it, every thread updates a 4×4 tile of the trailing lower triangle. `info`:
// nonzero from an earlier step: nothing is done; a failure here is written as its order in the
// whole matrix, `k0` + its order in this block.
extern "C" __global__ void __launch_bounds__(256) chol_diag_kernel(T* A, long long ld, int n, int* __restrict__ info,
                                                                   int k0) {
    constexpr int LDS = DIAG_NB + 1;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sm = reinterpret_cast<T*>(smem_raw);
    __shared__ T dinv[DIAG_NB];
    __shared__ int fail_sh;
    if (info[0] != 0) return;  // uniform
    CHOL_MARKS();
    CHOL_MARK();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    load_rows(sm, A, ld, n, [n](int i) { return min(i + 1, n); }, n == DIAG_NB);
    if (tid == 0) fail_sh = 0;
    __syncthreads();
    CHOL_MARK();
    for (int c0 = 0; c0 < n; c0 += 32) {
        const int w = min(32, n - c0);
        if (warp == 0) {
            T a[32], di = T(0);
#pragma unroll
            for (int j = 0; j < 32; ++j)
                a[j] = lane < w ? (j <= lane ? sm[(c0 + lane) * LDS + c0 + j] : T(0)) : T(j == lane ? 1 : 0);
            const int fail = warp_chol(a, w, di);
            if (lane < w) {
#pragma unroll
                for (int j = 0; j < 32; ++j)
                    if (j <= lane) sm[(c0 + lane) * LDS + c0 + j] = a[j];
                dinv[c0 + lane] = di;
            }
            if (lane == 0) fail_sh = fail ? c0 + fail : 0;
        }
        __syncthreads();
        CHOL_MARK();
        if (fail_sh) break;  // uniform
        if (c0 + w < n) {    // uniform
            // (w == 32 here: only the last tile can be narrower, and nothing follows it.)
            tile_solve_rows(sm, sm, dinv, c0, 32, c0 + 32, n);
            __syncthreads();
            CHOL_MARK();
            tri_update(sm, c0, c0 + 32, n - c0 - 32);
            __syncthreads();
            CHOL_MARK();
        }
    }
    for (int i = warp; i < n; i += CHOL_NW)
        for (int j = lane; j <= i; j += 32) A[i * ld + j] = sm[i * LDS + j];
    if (tid == 0 && fail_sh) info[0] = k0 + fail_sh;
    __syncthreads();
    CHOL_MARK();
    CHOL_PRINT("diag", k0);
}

// The rows below the step's diagonal block: L21 = A21 L11⁻ᵀ in place, PANEL_R rows per block of
// 256 threads. `A` is the diagonal block's corner (rows `ld` apart): its lower triangle holds L11
// (b = DIAG_NB columns); the panel's `r` rows follow it. Per 32-column tile: one thread per row
// solves against the tile, then the columns right of it are updated (a rank-32 product), all in
// shared memory.
extern "C" __global__ void __launch_bounds__(256) chol_panel_kernel(T* A, long long ld, int r,
                                                                    const int* __restrict__ info) {
    constexpr int LDS = DIAG_NB + 1, b = DIAG_NB;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sl = reinterpret_cast<T*>(smem_raw);  // L11: b rows
    T* sp = sl + b * LDS;                    // the panel rows
    __shared__ T dinv[DIAG_NB];
    if (info[0] != 0) return;  // uniform
    CHOL_MARKS();
    CHOL_MARK();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int row0 = b + blockIdx.x * PANEL_R, rows = min(PANEL_R, b + r - row0);
    load_rows(sl, A, ld, b, [](int i) { return i + 1; }, true);
    load_rows(sp, A + row0 * ld, ld, rows, [](int) { return DIAG_NB; }, true);
    __syncthreads();
    for (int j = tid; j < b; j += blockDim.x) dinv[j] = T(1) / sl[j * LDS + j];
    __syncthreads();
    CHOL_MARK();
    for (int c0 = 0; c0 < b; c0 += 32) {
        tile_solve_rows(sp, sl, dinv, c0, 32, 0, rows);
        __syncthreads();
        CHOL_MARK();
        if (c0 + 32 < b) {
            tile_update(sp, sl, c0, 32, 0, rows, c0 + 32, b - c0 - 32);
            __syncthreads();
            CHOL_MARK();
        }
    }
    for (int i = warp; i < rows; i += CHOL_NW)
        for (int j = lane; j < b; j += 32) A[(row0 + i) * ld + j] = sp[i * LDS + j];
    __syncthreads();
    CHOL_MARK();
    CHOL_PRINT("panel", 0);
}

// The trailing update C -= P Pᵀ on C's lower triangle, where P is an r×DIAG_NB panel (rows `ld`
// apart, as chol_panel_kernel left it) and C an r×r matrix (rows `ld` apart; its rows and columns
// are P's rows): the TM×TM tile (ti, tj) of C per block of G² threads (G = 16 from TM = 64 on, else
// TM/4), each thread (TM/G)² outputs in registers (rows 4ty.. and, for TM = 128, 64+4ty..; columns
// likewise with tx), P through shared memory SY_K columns at a time, the next chunk loaded into
// registers while this one is multiplied. (cuBLAS's float32 SYRK ran at
// about 9 TFLOP/s here, its GEMM over the whole square at 25-30 on twice the work.)
constexpr int SY_K = sizeof(T) == 4 ? 32 : 16;
// Tile of chol_syrk_kernel (METALCORE_CHOL_REST_TILE): 64 or 128.
#ifndef REST_TM
#define REST_TM 64
#endif
// Tile of chol_syrk_col_kernel (METALCORE_CHOL_COL_TILE): 64 or 32 (64 threads a block).
#ifndef COL_TM
#define COL_TM 64
#endif
template <int TM>
constexpr int SYRK_THREADS = TM >= 64 ? 256 : (TM / 4) * (TM / 4);
template <int TM>
__device__ __forceinline__ void syrk_tile(const T* __restrict__ P, T* C, long long ld, int r, int ti, int tj) {
    constexpr int NTH = SYRK_THREADS<TM>, G = TM >= 64 ? 16 : TM / 4, H = TM / (4 * G);
    constexpr int LD = TM + 4, U = TM * SY_K / NTH;
    __shared__ __align__(16) T As[SY_K][LD];
    __shared__ __align__(16) T Bs[SY_K][LD];
    const int i0 = ti * TM, j0 = tj * TM;
    const bool diag = ti == tj;
    const int tx = threadIdx.x % G, ty = threadIdx.x / G;
    T acc[4 * H][4 * H];
#pragma unroll
    for (int p = 0; p < 4 * H; ++p)
#pragma unroll
        for (int q = 0; q < 4 * H; ++q) acc[p][q] = T(0);
    T va[U], vb[U];
    auto fetch = [&](int kk) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = threadIdx.x + NTH * u, i = e / SY_K, k = e % SY_K;
            va[u] = i0 + i < r ? P[(long long)(i0 + i) * ld + kk + k] : T(0);
            vb[u] = !diag && j0 + i < r ? P[(long long)(j0 + i) * ld + kk + k] : T(0);
        }
    };
    fetch(0);
    for (int kk = 0; kk < DIAG_NB; kk += SY_K) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int e = threadIdx.x + NTH * u, i = e / SY_K, k = e % SY_K;
            As[k][i] = va[u];
            if (!diag) Bs[k][i] = vb[u];
        }
        __syncthreads();
        if (kk + SY_K < DIAG_NB) fetch(kk + SY_K);  // in flight while this chunk is multiplied
        const T(*Bp)[LD] = diag ? As : Bs;
#pragma unroll 4
        for (int k = 0; k < SY_K; ++k) {
            T a[4 * H], b[4 * H];
#pragma unroll
            for (int h = 0; h < H; ++h) {
                if constexpr (sizeof(T) == 4) {  // 16-byte shared loads: a quarter of the instructions
                    const float4 av = *reinterpret_cast<const float4*>(&As[k][4 * G * h + 4 * ty]);
                    const float4 bv = *reinterpret_cast<const float4*>(&Bp[k][4 * G * h + 4 * tx]);
                    a[4 * h] = av.x, a[4 * h + 1] = av.y, a[4 * h + 2] = av.z, a[4 * h + 3] = av.w;
                    b[4 * h] = bv.x, b[4 * h + 1] = bv.y, b[4 * h + 2] = bv.z, b[4 * h + 3] = bv.w;
                } else {
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        a[4 * h + q] = As[k][4 * G * h + 4 * ty + q];
                        b[4 * h + q] = Bp[k][4 * G * h + 4 * tx + q];
                    }
                }
            }
#pragma unroll
            for (int p = 0; p < 4 * H; ++p)
#pragma unroll
                for (int q = 0; q < 4 * H; ++q) acc[p][q] += a[p] * b[q];
        }
        __syncthreads();
    }
#pragma unroll
    for (int p = 0; p < 4 * H; ++p) {
        const int i = i0 + 4 * G * (p / 4) + 4 * ty + p % 4;
        if (i >= r) continue;
#pragma unroll
        for (int q = 0; q < 4 * H; ++q) {
            const int j = j0 + 4 * G * (q / 4) + 4 * tx + q % 4;
            if (j <= i) C[(long long)i * ld + j] -= acc[p][q];
        }
    }
}

// Every REST_TM² tile of C's lower triangle, blockIdx.x in row order.
extern "C" __global__ void __launch_bounds__(256) chol_syrk_kernel(const T* __restrict__ P, T* C, long long ld, int r) {
    int ti, tj;
    lower_pair(blockIdx.x, ti, tj);
    syrk_tile<REST_TM>(P, C, ld, r, ti, tj);
}

// Only C's first DIAG_NB columns (the look-ahead's updates of single block columns), in COL_TM²
// tiles so that it spreads over many multiprocessors: tile (blockIdx.x / NC, blockIdx.x % NC) for
// the NC = DIAG_NB / COL_TM tile columns, SYRK_THREADS<COL_TM> threads a block.
extern "C" __global__ void __launch_bounds__(SYRK_THREADS<COL_TM>) chol_syrk_col_kernel(const T* __restrict__ P,
                                                                                         T* C, long long ld, int r) {
    constexpr int NC = DIAG_NB / COL_TM;
    const int ti = blockIdx.x / NC, tj = blockIdx.x % NC;
    if (tj > ti) return;
    syrk_tile<COL_TM>(P, C, ld, r, ti, tj);
}
#endif

// The last step of the blocked Cholesky of one n×n matrix whose lower triangle holds the factor:
// zeroes the strict upper triangle, or with `upper` transposes the factor into it and zeroes the
// strict lower one. Block (bx, by), by >= bx, owns the 32×32 tile (by, bx) and its mirror (bx, by),
// read whole before either is written; 256 threads.
extern "C" __global__ void __launch_bounds__(256) tri_finish_kernel(T* A, int n, int upper) {
    const int bx = blockIdx.x, by = blockIdx.y;
    if (bx > by) return;
    __shared__ T tile[32][33];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const long long r0 = 32LL * by, c0 = 32LL * bx;
    for (int y = ty; y < 32; y += 8) {
        const long long i = r0 + y, j = c0 + tx;
        tile[y][tx] = (i < n && j < n) ? A[i * n + j] : T(0);
    }
    __syncthreads();
    for (int y = ty; y < 32; y += 8) {
        const long long i = c0 + y, j = r0 + tx;  // the mirror: strictly upper where j > i
        if (i < n && j < n && j > i) A[i * n + j] = upper ? tile[tx][y] : T(0);
        const long long li = r0 + y, lj = c0 + tx;  // the tile itself: strictly lower where li > lj
        if (upper && li < n && lj < n && li > lj) A[li * n + lj] = T(0);
    }
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

// Reads A (batch, n, n) and B (batch, n, nrhs; nrhs may be 0); writes LU (may be null, or A) the
// LU factors (unit-lower L below the diagonal, U on and above), X (may be B) the solution of
// A X = B, piv (batch, n; may be null) the 1-based row interchanges as LAPACK's getrf reports them,
// info[b] = 0 or j > 0 when U[j-1][j-1] == 0 (the first such; the elimination goes on, as in
// getrf, and X is then undefined).
extern "C" __global__ void lu_kernel(const T* A, T* LU, const T* B, T* X, int* __restrict__ piv,
                                     int* __restrict__ info, long long batch, int n, int nrhs) {
    const Team tm = team_of();
    const int lda = n + 1, ldb = nrhs + 1;
    T* a;
    const long long b = team_matrix(&a, (size_t)n * lda + (size_t)n * ldb + 4 * WARPS);
    if (b >= batch) return;
    T* x = a + (size_t)n * lda;
    T* red = x + (size_t)n * ldb;
    int* redi = reinterpret_cast<int*>(red + 2 * WARPS);  // 2*WARPS ints fit in 2*WARPS elements of T
    load(a, lda, A + b * n * n, n, n, tm);
    load(x, ldb, B + b * n * nrhs, n, nrhs, tm);
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
            col_axpy(col, ld, a + k, lda, col[k * ld], k + 1 + tm.w, n);
        }
        TEAM_SYNC();
    }
    substitute(a, lda, false, false, false, x, ldb, n, nrhs, tm);
    if (LU) store(LU + b * n * n, a, lda, n, n, tm);
    store(X + b * n * nrhs, x, ldb, n, nrhs, tm);
    if (tm.t == 0) info[b] = fail;
}

#ifdef ROW_NP
// lu_kernel for n <= ROW_NP (8, 16 or 32) with the rows in registers: ROW_NP lanes per matrix
// (32 / ROW_NP matrices per warp), lane i holding row i of A, and no shared memory. Rows never
// move: each lane tracks `pos`, its row's place in LAPACK's interchanged order, so the pivot is
// LAPACK's (the first largest |a_ik| in that order; NaN counts as largest) and so are the reported
// interchanges. The pivot row reaches the other lanes by shuffles, one per trailing column. Same
// contract as lu_kernel.
extern "C" __global__ void __launch_bounds__(128) lu_reg_kernel(const T* A, T* LU, const T* B, T* X,
                                                                int* __restrict__ piv, int* __restrict__ info,
                                                                long long batch, int n, int nrhs) {
    constexpr int NP = ROW_NP;
    constexpr unsigned FULL = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const int r = lane % NP;
    const unsigned seg = NP == 32 ? FULL : (((1u << NP) - 1u) << (lane - r));
    const long long gm = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / NP;
    if (((long long)blockIdx.x * blockDim.x + (threadIdx.x & ~31)) / NP >= batch) return;  // the whole warp is idle
    const bool live = gm < batch;
    const long long b = live ? gm : batch - 1;  // a lane past the batch shadows the last matrix, storing nothing
    const bool row = r < n;
    const T* ga = A + b * n * n;
    T a[NP];
#pragma unroll
    for (int j = 0; j < NP; ++j) a[j] = (row && j < n) ? ga[r * n + j] : T(0);
    int pos = r;
    bool cand = row;  // not yet a pivot row
    int fail = 0;
    int pl[NP];  // the lane whose row was the pivot at each step
#pragma unroll
    for (int k = 0; k < NP; ++k) {
        if (k >= n) break;  // uniform
        T v = cand ? fabs(a[k]) : T(-1);
        int ip = cand ? pos : 1 << 30;
#pragma unroll
        for (int o = NP / 2; o; o >>= 1) {
            const T ov = __shfl_xor_sync(FULL, v, o);
            const int oi = __shfl_xor_sync(FULL, ip, o);
            better(v, ip, ov, oi);
        }
        const int src = __ffs(__ballot_sync(FULL, cand && pos == ip) & seg) - 1;
        pl[k] = src;
        if (piv && live && r == 0) piv[b * n + k] = ip + 1;
        const T pkk = __shfl_sync(FULL, a[k], src);
        if (lane == src) {
            cand = false;
            pos = k;
        } else if (cand && pos == k) {
            pos = ip;
        }
        T l = T(0);
        if (pkk == T(0)) {
            if (!fail) fail = k + 1;
        } else if (cand) {
            l = a[k] / pkk;
            a[k] = l;
        }
#pragma unroll
        for (int j = k + 1; j < NP; ++j) {
            const T u = __shfl_sync(FULL, a[j], src);
            if (cand) a[j] -= l * u;
        }
    }
    if (live && row) {
        if (LU) {
            T* gl = LU + b * n * n;
#pragma unroll
            for (int j = 0; j < NP; ++j)
                if (j < n) gl[pos * n + j] = a[j];
        }
        if (r == 0) info[b] = fail;
    }
    const T* gb = B + b * n * nrhs;
    T* gx = X + b * n * nrhs;
    for (int c = 0; c < nrhs; ++c) {
        T x = row ? gb[r * nrhs + c] : T(0);
        // L y = P b in step order, then U x = y backwards; the lane of step k holds row k.
#pragma unroll
        for (int k = 0; k < NP; ++k) {
            if (k >= n) break;
            const T yk = __shfl_sync(FULL, x, pl[k]);
            if (row && pos > k) x -= a[k] * yk;
        }
#pragma unroll
        for (int k = NP - 1; k >= 0; --k) {
            if (k < n) {
                if (row && pos == k) x /= a[k];
                const T xk = __shfl_sync(FULL, x, pl[k]);
                if (row && pos < k) x -= a[k] * xk;
            }
        }
        __syncwarp();  // every lane has read column c before any lane overwrites it (X may be B)
        if (live && row) gx[pos * nrhs + c] = x;
    }
}

// cholesky_kernel for n <= ROW_NP with the rows in registers (lanes as in lu_reg_kernel): per
// column k the diagonal and then each trailing row's multiplier reach the other lanes by shuffles.
// After a failure the lanes keep stepping (shuffles need the whole warp) but change nothing, so
// the factor is partial as in cholesky_kernel. Same contract as cholesky_kernel.
extern "C" __global__ void __launch_bounds__(128) cholesky_row_kernel(const T* S, T* A, int* __restrict__ info,
                                                                      long long batch, int n, int upper) {
    constexpr int NP = ROW_NP;
    constexpr unsigned FULL = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const int r = lane % NP, base = lane - r;
    const long long gm = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / NP;
    if (((long long)blockIdx.x * blockDim.x + (threadIdx.x & ~31)) / NP >= batch) return;  // the whole warp is idle
    const bool live = gm < batch;
    const long long b = live ? gm : batch - 1;
    const bool row = r < n;
    const T* src = S + b * n * n;
    T a[NP];
#pragma unroll
    for (int j = 0; j < NP; ++j) a[j] = (row && j <= r) ? src[r * n + j] : T(0);
    int fail = 0;
#pragma unroll
    for (int k = 0; k < NP; ++k) {
        if (k >= n) break;  // uniform
        const T d = __shfl_sync(FULL, a[k], base + k);
        if (!fail && !(d > T(0))) fail = k + 1;
        const bool go = !fail;
        if (go && r >= k) {
            const T sd = sqrt(d);
            a[k] = r == k ? sd : a[k] / sd;
        }
#pragma unroll
        for (int j = k + 1; j < NP; ++j) {
            const T lj = __shfl_sync(FULL, a[k], base + j);
            if (go && r >= j) a[j] -= a[k] * lj;
        }
    }
    if (!(live && row)) return;
    T* g = A + b * n * n;
#pragma unroll
    for (int j = 0; j < NP; ++j) {
        if (j < n) {
            const T v = j <= r ? a[j] : T(0);
            if (upper) {
                g[j * n + r] = v;
            } else {
                g[r * n + j] = v;
            }
        }
    }
    if (r == 0) info[b] = fail;
}
#endif

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

#ifdef LU_LW
// ---------------------------------------------------------------------------------------------
// Blocked LU with partial pivoting of one large n×n matrix (row-major, in place), driven from
// cuda/linalg.rs (`lu_blocked`): right-looking in panels of at most 128 columns whose trailing
// matrix is updated by cuBLAS (TRSM for the panel's rows of U, GEMM for the rest). A panel is
// factored a "leaf" of LU_LW columns at a time: lu_leaf_kernel factors the leaf's columns over all
// rows at or below its diagonal, moves the rows it interchanged in the rest of the panel and makes
// the leaf's rows of U there; lu_update_kernel then applies the interchanges to every column
// outside the panel (and to the right-hand sides) and updates the rest of the panel below the leaf.

// |x|'s bit pattern as an unsigned integer: orders like |x|, with NaN above +Inf.
template <typename X> struct MagOf;
template <> struct MagOf<float> {
    typedef unsigned int U;
    static __device__ __forceinline__ U of(float x) { return __float_as_uint(x) & 0x7fffffffu; }
};
template <> struct MagOf<double> {
    typedef unsigned long long U;
    static __device__ __forceinline__ U of(double x) {
        return (unsigned long long)__double_as_longlong(x) & 0x7fffffffffffffffULL;
    }
};
typedef MagOf<T>::U Mag;

#define NO_PLACE 0x7fffffff

// The warp's largest magnitude, by redux (a 64-bit magnitude in two halves).
__device__ __forceinline__ unsigned int warp_max_mag(unsigned int m) { return __reduce_max_sync(0xffffffffu, m); }
__device__ __forceinline__ unsigned long long warp_max_mag(unsigned long long m) {
    const unsigned int hi = __reduce_max_sync(0xffffffffu, (unsigned int)(m >> 32));
    const unsigned int lo = __reduce_max_sync(0xffffffffu, (unsigned int)(m >> 32) == hi ? (unsigned int)m : 0u);
    return ((unsigned long long)hi << 32) | lo;
}

// Over the warp: the largest magnitude `m`, and the first place `p` holding it; every lane gets both.
__device__ __forceinline__ void warp_best(Mag& m, int& p) {
    const Mag wm = warp_max_mag(m);
    p = (int)__reduce_min_sync(0xffffffffu, m == wm ? (unsigned int)p : (unsigned int)NO_PLACE);
    m = wm;
}

// Sixteen bytes of shared memory into registers.
__device__ __forceinline__ void load16(const float* s, float* d) {
    const float4 v = *reinterpret_cast<const float4*>(s);
    d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
}
__device__ __forceinline__ void load16(const double* s, double* d) {
    const double2 v = *reinterpret_cast<const double2*>(s);
    d[0] = v.x; d[1] = v.y;
}

#define LU_PANEL_MAX 128
#ifdef LU_LR
// A leaf passes through shared memory ("stage", rows of LU_LW values padded to LEAF_LDS) on its
// way in and out, so that a warp's global accesses cover whole row segments (with one thread per
// row, a load instruction touched 32 rows); the loads are asynchronous copies, all in flight at
// once. With 512 threads the staged rows are padded by 16 bytes, so that whole rows move in
// 16-byte pieces (when the rows are 16-byte aligned) and a thread reads its row in 16-byte pieces
// without bank conflicts; 1024 threads (past 4096 rows) have no room for that and pad by one
// element. The leaves of a 4096² float32 LU took 17.9 ms with one thread per row, 11.8 staged,
// 8.1 with the copies in flight together, 7.2 in 16-byte pieces (H200).
#define LEAF_VW (16 / (int)sizeof(T))
#define LEAF_PAD (LU_LT == 1024 ? 1 : LEAF_VW)
#define LEAF_LDS (LU_LW + LEAF_PAD)

// Whether the leaf at g (row stride ld, w of LU_LW columns present) moves in 16-byte pieces.
__device__ __forceinline__ bool leaf_vec(const T* g, long long ld, int w) {
    return LEAF_PAD == LEAF_VW && w == LU_LW && ld % LEAF_VW == 0 && ((size_t)g & 15) == 0;
}

// Rows 0 .. mr-1 of the leaf at g (row stride ld; columns past w staged as zeros) into `stage`;
// returns when every thread's copies have landed.
__device__ __forceinline__ void leaf_stage_in(T* stage, const T* g, long long ld, long long mr, int w) {
    const int tid = threadIdx.x;
    if (leaf_vec(g, ld, w)) {
        constexpr int CH = LU_LW / LEAF_VW;
        for (long long e = tid; e < mr * CH; e += LU_LT) {
            const long long r = e / CH;
            const int v = (int)(e % CH);
            const unsigned int sa = (unsigned int)__cvta_generic_to_shared(stage + r * LEAF_LDS + v * LEAF_VW);
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(g + r * ld + v * LEAF_VW));
        }
    } else {
        for (long long e = tid; e < mr * LU_LW; e += LU_LT) {
            const long long r = e / LU_LW;
            const int c = (int)(e % LU_LW);
            T* d = stage + r * LEAF_LDS + c;
            if (c < w) {
                const unsigned int sa = (unsigned int)__cvta_generic_to_shared(d);
                asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(sa), "l"(g + r * ld + c),
                             "n"((int)sizeof(T)));
            } else {
                *d = T(0);
            }
        }
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
}

// The staged rows 0 .. mr-1 (their first w columns) out to g (row stride ld) and, when u is not
// null, to u too (row stride ldu) with rows 0 .. w-1 made unit upper: ones on the diagonal, zeros
// right of it (the QR leaf's reflectors, from its factored rows). The caller has synced after
// filling `stage`.
__device__ __forceinline__ void leaf_stage_out(const T* stage, T* g, long long ld, long long mr, int w,
                                               T* u = nullptr, long long ldu = 0) {
    const int tid = threadIdx.x;
    if (leaf_vec(g, ld, w) && (u == nullptr || leaf_vec(u, ldu, w))) {
        constexpr int CH = LU_LW / LEAF_VW;
        for (long long e = tid; e < mr * CH; e += LU_LT) {
            const long long r = e / CH;
            const int v = (int)(e % CH);
            const uint4 x = *reinterpret_cast<const uint4*>(stage + r * LEAF_LDS + v * LEAF_VW);
            *reinterpret_cast<uint4*>(g + r * ld + v * LEAF_VW) = x;
            if (u == nullptr) continue;
            if (r < w) {
                __align__(16) T y[LEAF_VW];
#pragma unroll
                for (int t = 0; t < LEAF_VW; ++t) {
                    const int c = v * LEAF_VW + t;
                    y[t] = c < r ? stage[r * LEAF_LDS + c] : T(c == r ? 1 : 0);
                }
                *reinterpret_cast<uint4*>(u + r * ldu + v * LEAF_VW) = *reinterpret_cast<const uint4*>(y);
            } else {
                *reinterpret_cast<uint4*>(u + r * ldu + v * LEAF_VW) = x;
            }
        }
    } else {
        for (long long e = tid; e < mr * LU_LW; e += LU_LT) {
            const long long r = e / LU_LW;
            const int c = (int)(e % LU_LW);
            if (c >= w) continue;
            const T x = stage[r * LEAF_LDS + c];
            g[r * ld + c] = x;
            if (u != nullptr) u[r * ldu + c] = (r < w && c >= r) ? T(c == r ? 1 : 0) : x;
        }
    }
}

// Staged row i into registers (zeros when i >= mr).
__device__ __forceinline__ void leaf_row(const T* stage, long long i, long long mr, T (&x)[LU_LW]) {
    if (LEAF_PAD == LEAF_VW) {
#pragma unroll
        for (int c = 0; c < LU_LW; c += LEAF_VW) {
            if (i < mr) load16(stage + i * LEAF_LDS + c, &x[c]);
            else
#pragma unroll
                for (int t = 0; t < LEAF_VW; ++t) x[c + t] = T(0);
        }
    } else {
#pragma unroll
        for (int c = 0; c < LU_LW; ++c) x[c] = i < mr ? stage[i * LEAF_LDS + c] : T(0);
    }
}

// Factors one leaf: columns c0 .. c0+w-1 (w = min(LU_LW, n - c0)) over the rows at places c0 ..
// n-1, which hold every earlier interchange and update. Each of the LU_LT threads keeps LU_LR of
// those rows in registers (n - c0 <= LU_LT LU_LR). Rows never move: each tracks `pos`, its place in
// LAPACK's interchanged order, so the pivot is LAPACK's (the first largest |a| in that order; NaN
// counts as largest). One barrier per column: each warp finds its best row by redux and the lane
// holding it posts the row whole (magnitude, place, values) in shared memory, double-buffered;
// every warp then picks the block's best of those. Multipliers are products with the pivot's
// reciprocal, as getf2 makes them (a quotient below the smallest normal number; an exactly-zero
// pivot leaves its column as it is and is reported in `info`, if that is still 0: elimination goes
// on past it, as in getrf).
// Then: the leaf's columns are written back with each row at its place; ipiv[c0 + j] = 1-based
// pivot row; the rows that moved are moved in the panel's columns right of the leaf (to ce), whose
// leaf rows then become U12 = L11⁻¹ A12 (L11 the leaf's unit-lower w×w block); and `pairs` gets
// the moves for lu_update_kernel: pairs[0] = count, then (from, to) place pairs.
extern "C" __global__ void __launch_bounds__(LU_LT) lu_leaf_kernel(T* A, long long n, long long c0, long long ce,
                                                                  int* __restrict__ ipiv, int* __restrict__ info,
                                                                  int* __restrict__ pairs) {
    constexpr int NW = LU_LT / 32;
    __shared__ Mag cmag[2][NW];
    __shared__ int cpos[2][NW];
    __shared__ __align__(16) T crow[2][NW][LU_LW];
    __shared__ T l11[LU_LW][LU_LW];
    __shared__ T pbuf[2 * LU_LW][LU_PANEL_MAX];
    __shared__ int msrc[2 * LU_LW], mdst[2 * LU_LW];
    __shared__ int mcount;
    // The whole leaf passes through shared memory on its way in and out (leaf_stage_in).
    extern __shared__ __align__(16) unsigned char lu_stage_raw[];
    T* stage = reinterpret_cast<T*>(lu_stage_raw);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long m = n - c0;
    const int w = (int)min((long long)LU_LW, m);
    if (tid == 0) mcount = 0;
    int fail = tid == 0 ? *info : 0;
    leaf_stage_in(stage, A + c0 * n + c0, n, m, w);
    T a[LU_LR][LU_LW];
    int pos[LU_LR];
#pragma unroll
    for (int q = 0; q < LU_LR; ++q) {
        const long long i = tid + (long long)q * LU_LT;
        pos[q] = i < m ? (int)(c0 + i) : -1;
        leaf_row(stage, i, m, a[q]);
    }
    const T sfmin = sizeof(T) == 4 ? T(1.17549435e-38) : T(2.2250738585072014e-308);
#pragma unroll
    for (int j = 0; j < LU_LW; ++j) {
        if (j >= w) break;
        const int gj = (int)c0 + j, par = j & 1;
        Mag bm = 0;
        int bp = NO_PLACE, bq = 0;
#pragma unroll
        for (int q = 0; q < LU_LR; ++q) {
            const Mag mg = MagOf<T>::of(a[q][j]);
            if (pos[q] >= gj && (mg > bm || (mg == bm && pos[q] < bp))) { bm = mg; bp = pos[q]; bq = q; }
        }
        const int own = bp;
        warp_best(bm, bp);
        if (own == bp && bp != NO_PLACE) {
#pragma unroll
            for (int c = 0; c < LU_LW; ++c) {
                T v = a[0][c];
#pragma unroll
                for (int q = 1; q < LU_LR; ++q) v = bq == q ? a[q][c] : v;
                crow[par][warp][c] = v;
            }
        }
        if (lane == 0) { cmag[par][warp] = bm; cpos[par][warp] = bp; }
        __syncthreads();
        Mag gm = lane < NW ? cmag[par][lane] : Mag(0);
        int gp = lane < NW ? cpos[par][lane] : NO_PLACE;
        const Mag mine = gm;
        const int minep = gp;
        warp_best(gm, gp);
        const int gw = __ffs(__ballot_sync(0xffffffffu, lane < NW && mine == gm && minep == gp)) - 1;
        T pr[LU_LW];
#pragma unroll
        for (int c = 0; c < LU_LW; c += 16 / (int)sizeof(T)) load16(&crow[par][gw][c], &pr[c]);
        const T d = pr[j];
        if (tid == 0) {
            ipiv[gj] = gp + 1;
            if (d == T(0) && fail == 0) *info = fail = gj + 1;
        }
        const bool tiny = fabs(d) < sfmin;
        const T rd = T(1) / d;
#pragma unroll
        for (int q = 0; q < LU_LR; ++q) pos[q] = pos[q] == gp ? gj : (pos[q] == gj ? gp : pos[q]);
#pragma unroll
        for (int q = 0; q < LU_LR; ++q) {
            if (pos[q] > gj) {
                const T l = d == T(0) ? a[q][j] : (tiny ? a[q][j] / d : a[q][j] * rd);
                a[q][j] = l;
#pragma unroll
                for (int c = j + 1; c < LU_LW; ++c) a[q][c] -= l * pr[c];
            }
        }
    }
    // The rows that moved, and the leaf's block L11 (its rows at places c0 .. c0+w-1).
#pragma unroll
    for (int q = 0; q < LU_LR; ++q) {
        const int home = (int)c0 + tid + q * LU_LT;
        if (pos[q] >= 0 && pos[q] != home) {
            const int k = atomicAdd(&mcount, 1);
            msrc[k] = home;
            mdst[k] = pos[q];
        }
        if (pos[q] >= c0 && pos[q] < c0 + w) {
#pragma unroll
            for (int c = 0; c < LU_LW; ++c) l11[pos[q] - c0][c] = a[q][c];
        }
    }
    // The leaf's columns, each row to its place.
#pragma unroll
    for (int q = 0; q < LU_LR; ++q) {
        if (pos[q] >= 0) {
#pragma unroll
            for (int c = 0; c < LU_LW; ++c) stage[(pos[q] - c0) * LEAF_LDS + c] = a[q][c];
        }
    }
    // (Scalar stores: each thread's rows land at their places, scattered; bank conflicts here
    // are once per leaf.)
    __syncthreads();
    leaf_stage_out(stage, A + c0 * n + c0, n, m, w);
    const int cnt = mcount;
    if (tid == 0) pairs[0] = cnt;
    if (tid < cnt) { pairs[1 + 2 * tid] = msrc[tid]; pairs[2 + 2 * tid] = mdst[tid]; }
    // The moves in the panel right of the leaf, through shared memory.
    const long long pc0 = c0 + w;
    const int pw = (int)(ce - pc0);
    for (int e = tid; e < cnt * pw; e += LU_LT) pbuf[e / pw][e % pw] = A[(long long)msrc[e / pw] * n + pc0 + e % pw];
    __syncthreads();
    for (int e = tid; e < cnt * pw; e += LU_LT) A[(long long)mdst[e / pw] * n + pc0 + e % pw] = pbuf[e / pw][e % pw];
    __syncthreads();
    // U12 = L11⁻¹ A12, a column per thread.
    if (tid < pw) {
        T u[LU_LW];
#pragma unroll
        for (int t = 0; t < LU_LW; ++t) u[t] = t < w ? A[(c0 + t) * n + pc0 + tid] : T(0);
#pragma unroll
        for (int t = 1; t < LU_LW; ++t)
#pragma unroll
            for (int s = 0; s < t; ++s) u[t] -= l11[t][s] * u[s];
#pragma unroll
        for (int t = 1; t < LU_LW; ++t)
            if (t < w) A[(c0 + t) * n + pc0 + tid] = u[t];
    }
}

// ---------------------------------------------------------------------------------------------
// Blocked Householder QR of one large m×n matrix F (row-major, in place), driven from
// cuda/linalg.rs (`qr_blocked`): right-looking in panels of at most 128 columns, each factored a
// leaf at a time by qr_leaf_kernel; qr_apply_kernel (or cuBLAS, on tall panels) applies each leaf
// to the rest of its panel, and the host each panel (I − V T Vᵀ, with T = U⁻¹ applied by cuBLAS
// TRSM, U from qr_udiag_kernel) to the trailing matrix and later to Q, by cuBLAS GEMM. The
// arithmetic per column is geqr2's (the reflector as `larfg`, the same one the batched qr_kernel
// makes), so R's diagonal has LAPACK's signs.

// Sums each of the warp's L values s[0 .. L) over its lanes, by halving exchanges (L - 1 shuffles,
// then log2(32 / L) more); lane l gets the total of value l / (32 / L). `s` is clobbered. (The
// steps are template instances, so every index into `s` is a constant and `s` stays in registers.)
template <int L, int H, int BIT>
struct ScatterStep {
    static __device__ __forceinline__ void run(T (&s)[L], int lane) {
        const bool up = (lane & BIT) != 0;
#pragma unroll
        for (int j = 0; j < H; ++j) {
            const T send = up ? s[j] : s[j + H];
            const T keep = up ? s[j + H] : s[j];
            s[j] = keep + __shfl_xor_sync(0xffffffffu, send, BIT);
        }
        ScatterStep<L, H / 2, BIT / 2>::run(s, lane);
    }
};
template <int L, int BIT>
struct ScatterStep<L, 0, BIT> {
    static __device__ __forceinline__ void run(T (&)[L], int) {}
};
template <int L>
__device__ __forceinline__ T warp_scatter_sum(T (&s)[L], int lane) {
    ScatterStep<L, L / 2, 16>::run(s, lane);
    T v = s[0];
#pragma unroll
    for (int bit = 16 / L; bit >= 1; bit /= 2) v += __shfl_xor_sync(0xffffffffu, v, bit);
    return v;
}

// Row x into staged row i (nothing when i >= mr).
__device__ __forceinline__ void leaf_put_row(T* stage, long long i, long long mr, const T (&x)[LU_LW]) {
    if (i >= mr) return;
    if (LEAF_PAD == LEAF_VW) {
#pragma unroll
        for (int c = 0; c < LU_LW; c += LEAF_VW) {
            if (sizeof(T) == 4)
                *reinterpret_cast<float4*>(stage + i * LEAF_LDS + c) = make_float4(x[c], x[c + 1], x[c + 2], x[c + 3]);
            else
                *reinterpret_cast<double2*>(stage + i * LEAF_LDS + c) = make_double2(x[c], x[c + 1]);
        }
    } else {
#pragma unroll
        for (int c = 0; c < LU_LW; ++c) stage[i * LEAF_LDS + c] = x[c];
    }
}

// Factors one leaf: columns c0 .. c0+w-1 (w <= LU_LW) of F (row stride n) over rows c0 .. m-1,
// which hold every earlier reflector's update. Each of the LU_LT threads keeps LU_LR of those rows
// in registers (row i at thread i mod LU_LT, so the leaf's diagonal rows are slot 0 of threads
// 0 .. w-1). One barrier per column: in one pass the block sums the column's products with every
// leaf column over the rows below the diagonal (its squared norm, the products vᵀa the update
// needs, and Vᵀv for T), while the diagonal row's owner posts that row; every thread then has the
// reflector and updates its rows.
// Writes the leaf back into F (R on and above the diagonal, v below), tau[c0 ..], the reflectors
// explicitly into V (row stride ldv: rows k0 .. m-1 of the leaf's columns, unit diagonal, zeros
// above), and Z = V Tᵀ (rows c0 .. m-1, row stride LU_LW; T the leaf's triangular factor,
// H_1 ⋯ H_w = I − V T Vᵀ, LAPACK larft's forward columnwise T), with which the host applies the
// leaf to the rest of its panel: A ← A − Z (Vᵀ A).
extern "C" __global__ void __launch_bounds__(LU_LT) qr_leaf_kernel(T* F, long long m, long long n, long long c0, int w,
                                                                  long long k0, T* __restrict__ V, long long ldv,
                                                                  T* __restrict__ tau, T* __restrict__ Z) {
    constexpr int NW = LU_LT / 32, SPREAD = 32 / LU_LW;
    __shared__ __align__(16) T crow[2][LU_LW];
    __shared__ T red[2][NW][LU_LW];
    __shared__ T ys[LU_LW][LU_LW];  // ys[c][j] = v_jᵀ v_c, j < c
    __shared__ T taus[LU_LW];
    __shared__ T tsm[LU_LW][LU_LW + 1];
    extern __shared__ __align__(16) unsigned char lu_stage_raw[];
    T* stage = reinterpret_cast<T*>(lu_stage_raw);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long mr = m - c0;
    T* g = F + c0 * n + c0;
    leaf_stage_in(stage, g, n, mr, w);
    T a[LU_LR][LU_LW];
#pragma unroll
    for (int q = 0; q < LU_LR; ++q) leaf_row(stage, tid + (long long)q * LU_LT, mr, a[q]);
#pragma unroll
    for (int c = 0; c < LU_LW; ++c) {
        if (c >= w) break;
        const int par = c & 1;
        T s[LU_LW];
#pragma unroll
        for (int j = 0; j < LU_LW; ++j) s[j] = T(0);
#pragma unroll
        for (int q = 0; q < LU_LR; ++q) {
            if (q > 0 || tid > c) {
                const T x = a[q][c];
#pragma unroll
                for (int j = 0; j < LU_LW; ++j) s[j] += x * a[q][j];
            }
        }
        const T part = warp_scatter_sum<LU_LW>(s, lane);
        if (lane % SPREAD == 0) red[par][warp][lane / SPREAD] = part;
        if (tid == c) {
#pragma unroll
            for (int j = 0; j < LU_LW; ++j) crow[par][j] = a[0][j];
        }
        __syncthreads();
        T t = T(0);
#pragma unroll
        for (int q = 0; q < NW; ++q) t += red[par][q][lane / SPREAD];
        // tot[j]: the column's product with column j below the diagonal; pr: the diagonal row.
        T tot[LU_LW], pr[LU_LW];
#pragma unroll
        for (int j = 0; j < LU_LW; ++j) tot[j] = __shfl_sync(0xffffffffu, t, j * SPREAD);
#pragma unroll
        for (int j = 0; j < LU_LW; j += LEAF_VW) load16(&crow[par][j], &pr[j]);
        const T alpha = pr[c], sigma = tot[c];
        T tu, beta, sc;
        larfg(alpha, sigma, tu, beta, sc);
        if (!(sigma > T(0)) && (sigma != sigma || alpha != alpha)) tu = beta = nan_t();  // as qr_kernel
        // v = (1, x·sc): vᵀa_j = a_cj + sc·tot[j] for j > c, and v_jᵀv = v_j[c] + sc·tot[j] for
        // j < c. Where sigma is not positive (H = I, or NaN) x stays as it is.
        const T scv = sigma > T(0) ? sc : T(1);
        T vd[LU_LW];
#pragma unroll
        for (int j = 0; j < LU_LW; ++j) vd[j] = pr[j] + scv * tot[j];
        if (tid == 0) {
            taus[c] = tu;
#pragma unroll
            for (int j = 0; j < LU_LW; ++j)
                if (j < c) ys[c][j] = vd[j];
        }
#pragma unroll
        for (int q = 0; q < LU_LR; ++q) {
            if (q > 0 || tid > c) {
                const T v = a[q][c] * scv;
                a[q][c] = v;
                const T tv = tu * v;
#pragma unroll
                for (int j = c + 1; j < LU_LW; ++j) a[q][j] -= tv * vd[j];
            }
        }
        if (tid == c) {
            a[0][c] = beta;
#pragma unroll
            for (int j = c + 1; j < LU_LW; ++j) a[0][j] -= tu * vd[j];
        }
    }
    // The leaf back into F and, with the unit diagonal, into V, while warp 0 makes T (a row per
    // lane: T[c][c] = tau_c, T[r][c] = −tau_c Σ_{r<=l<c} T[r][l] ys[c][l]).
#pragma unroll
    for (int q = 0; q < LU_LR; ++q) leaf_put_row(stage, tid + (long long)q * LU_LT, mr, a[q]);
    for (long long e = tid; e < (c0 - k0) * w; e += LU_LT) V[(k0 + e / w) * ldv + c0 + e % w] = T(0);
    __syncthreads();
    if (warp == 0) {
        T trow[LU_LW];
#pragma unroll
        for (int c = 0; c < LU_LW; ++c) {
            T v = T(0);
            if (c < w && lane < c) {
                T acc = T(0);
#pragma unroll
                for (int l = 0; l < c; ++l)
                    if (l >= lane) acc += trow[l] * ys[c][l];
                v = -taus[c] * acc;
            } else if (c < w && lane == c) {
                v = taus[c];
            }
            trow[c] = v;
        }
        if (lane < LU_LW) {
#pragma unroll
            for (int c = 0; c < LU_LW; ++c) tsm[lane][c] = trow[c];
        }
        if (lane < w) tau[c0 + lane] = taus[lane];
    }
    leaf_stage_out(stage, g, n, mr, w, V + c0 * ldv + c0, ldv);
    __syncthreads();
    // Z = V Tᵀ: Z[i][j] = Σ_{l>=j} v_l[i] T[j][l].
#pragma unroll
    for (int q = 0; q < LU_LR; ++q) {
        T v[LU_LW], z[LU_LW];
#pragma unroll
        for (int l = 0; l < LU_LW; ++l) v[l] = (q > 0 || l < tid) ? a[q][l] : (l == tid ? T(1) : T(0));
#pragma unroll
        for (int j = 0; j < LU_LW; ++j) {
            T acc = T(0);
#pragma unroll
            for (int l = j; l < LU_LW; ++l) acc += v[l] * tsm[j][l];
            z[j] = acc;
        }
        leaf_put_row(stage, tid + (long long)q * LU_LT, mr, z);
    }
    __syncthreads();
    leaf_stage_out(stage, Z, LU_LW, mr, w);
}

// Columns per block of qr_apply_kernel: its sums Vᵀ A, LU_LW × QA_CB, sit in registers.
#define QA_CB ((sizeof(T) == 4 ? 64 : 32) / LU_LW)

// The first N values of the row at p (the rest zero), in 16-byte pieces when `vec`.
template <int N>
__device__ __forceinline__ void load_row(const T* p, bool vec, int valid, T (&x)[N]) {
    if (vec && valid == N && N % LEAF_VW == 0) {
#pragma unroll
        for (int c = 0; c < N; c += LEAF_VW) {
            if (sizeof(T) == 4) {
                const float4 q = *reinterpret_cast<const float4*>(p + c);
                x[c] = q.x; x[c + 1] = q.y; x[c + 2] = q.z; x[c + 3] = q.w;
            } else {
                const double2 q = *reinterpret_cast<const double2*>(p + c);
                x[c] = q.x; x[c + 1] = q.y;
            }
        }
    } else {
#pragma unroll
        for (int c = 0; c < N; ++c) x[c] = c < valid ? p[c] : T(0);
    }
}

// After qr_leaf_kernel at c0 (w columns of its panel, which ends at column ce), the rest of the
// panel — columns c0+w .. ce-1 over rows c0 .. m-1 — loses Z (Vᵀ A). Each block takes QA_CB of
// those columns whole: it sums their products with the leaf's reflectors over every row (W = Vᵀ A,
// in registers, then across the block in a fixed order), then updates them (A −= Z W). No block
// needs another's W, so this is one launch (cuBLAS took a GEMM, its split-K reduction and a second
// GEMM). 256 threads, a row each at a time. (Four rows a thread at a time, their loads issued
// together, measured no faster.)
extern "C" __global__ void __launch_bounds__(256) qr_apply_kernel(T* F, long long m, long long n, long long c0, int w,
                                                                 long long ce, const T* __restrict__ V, long long ldv,
                                                                 const T* __restrict__ Z) {
    constexpr int CB = QA_CB, NV = LU_LW * CB, NWP = 8;
    static_assert(NV % 32 == 0, "the block sums go 32 values at a time");
    __shared__ T red[NWP][NV];
    __shared__ T ws[NV];  // W[l][j] at l * CB + j
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long j0 = c0 + w + (long long)blockIdx.x * CB;
    const int cb = (int)min((long long)CB, ce - j0);
    const long long mr = m - c0;
    const T* v0 = V + c0 * ldv + c0;
    T* a0 = F + c0 * n + j0;
    const bool vvec = ldv % LEAF_VW == 0 && ((size_t)v0 & 15) == 0;
    const bool avec = n % LEAF_VW == 0 && ((size_t)a0 & 15) == 0;
    T acc[NV];
#pragma unroll
    for (int i = 0; i < NV; ++i) acc[i] = T(0);
    for (long long r = tid; r < mr; r += 256) {
        T v[LU_LW], x[CB];
        load_row(v0 + r * ldv, vvec, w, v);
        load_row(a0 + r * n, avec, cb, x);
#pragma unroll
        for (int l = 0; l < LU_LW; ++l)
#pragma unroll
            for (int j = 0; j < CB; ++j) acc[l * CB + j] += v[l] * x[j];
    }
#pragma unroll
    for (int h = 0; h < NV; h += 32) {
        T part[32];
#pragma unroll
        for (int i = 0; i < 32; ++i) part[i] = acc[h + i];
        red[warp][h + lane] = warp_scatter_sum<32>(part, lane);
    }
    __syncthreads();
    if (tid < NV) {
        T t = T(0);
#pragma unroll
        for (int q = 0; q < NWP; ++q) t += red[q][tid];
        ws[tid] = t;
    }
    __syncthreads();
    for (long long r = tid; r < mr; r += 256) {
        T z[LU_LW], x[CB];
        load_row(Z + r * LU_LW, true, w, z);
        load_row(a0 + r * n, avec, cb, x);
#pragma unroll
        for (int j = 0; j < CB; ++j) {
            T s = x[j];
#pragma unroll
            for (int l = 0; l < LU_LW; ++l) s -= z[l] * ws[l * CB + j];
            if (j < cb) a0[r * n + j] = s;
        }
    }
}
#endif

#ifndef LU_LR
// After the leaf at c0 (w columns, panel ending at ce; its moves in `pairs`, see lu_leaf_kernel):
// blocks 0 .. tiles-1 update the panel right of the leaf below it, A22 -= L21 U12 (64 rows × 32
// columns per block: a lane per column, U12's column in registers, each row's L21 entries
// broadcast); the others apply the moves to one column each, through registers: columns 0 ..
// c0-1, then ce .. n-1 of A, then the nrhs columns of X (row-major; null when nrhs is 0).
extern "C" __global__ void __launch_bounds__(256) lu_update_kernel(T* A, long long n, T* X, int nrhs,
                                                                   const int* __restrict__ pairs, long long c0, int w,
                                                                   long long ce, int tiles) {
    const int tid = threadIdx.x, bid = blockIdx.x;
    if (bid >= tiles) {
        long long g = (long long)(bid - tiles) * 256 + tid;
        T* col;
        long long ld = n;
        if (g < c0) {
            col = A + g;
        } else if ((g -= c0) < n - ce) {
            col = A + ce + g;
        } else if ((g -= n - ce) < nrhs) {
            col = X + g;
            ld = nrhs;
        } else {
            return;
        }
        const int cnt = pairs[0];
        T v[2 * LU_LW];
#pragma unroll
        for (int i = 0; i < 2 * LU_LW; ++i)
            if (i < cnt) v[i] = col[(long long)pairs[1 + 2 * i] * ld];
#pragma unroll
        for (int i = 0; i < 2 * LU_LW; ++i)
            if (i < cnt) col[(long long)pairs[2 + 2 * i] * ld] = v[i];
        return;
    }
    const long long pc0 = c0 + w;
    const int pw = (int)(ce - pc0);
    const int ct = (pw + 31) / 32;
    const int lane = tid & 31, warp = tid >> 5;
    const long long j = pc0 + (long long)(bid % ct) * 32 + lane;
    const long long r0 = pc0 + (long long)(bid / ct) * 64;
    const bool live = j < ce;
    T u[LU_LW];
#pragma unroll
    for (int s = 0; s < LU_LW; ++s) u[s] = (live && s < w) ? A[(c0 + s) * n + j] : T(0);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const long long r = r0 + warp + 8 * i;
        if (r >= n) break;
        const T* row = A + r * n;
        T x = live ? row[j] : T(0);
#pragma unroll
        for (int s = 0; s < LU_LW; ++s)
            if (s < w) x -= row[c0 + s] * u[s];
        if (live) A[r * n + j] = x;
    }
}

// The diagonal of the blocked QR's panel factor U = diag(1/tau) + striu(VᵀV) (row stride ldu),
// whose inverse is the panel's T (I − V T Vᵀ = H_1 ⋯ H_nb; the "UT transform"): U[i][i] = 1/tau_i
// (infinite for tau = 0, H = I, which makes T's row and column i zero, as larft's).
extern "C" __global__ void __launch_bounds__(128) qr_udiag_kernel(T* U, int ldu, const T* __restrict__ tau, int nb) {
    for (int i = threadIdx.x; i < nb; i += 128) U[i * (long long)ldu + i] = T(1) / tau[i];
}

// D (rows × cols, contiguous) = the upper trapezoid of F (row stride ldf) with zeros below the
// diagonal — or, with `eye`, the identity.
extern "C" __global__ void __launch_bounds__(256) qr_copy_kernel(const T* __restrict__ F, long long ldf,
                                                                 T* __restrict__ D, long long rows, long long cols,
                                                                 int eye) {
    for (long long e = blockIdx.x * 256LL + threadIdx.x; e < rows * cols; e += (long long)gridDim.x * 256) {
        const long long i = e / cols, j = e % cols;
        D[e] = eye ? T(i == j ? 1 : 0) : (j >= i ? F[i * ldf + j] : T(0));
    }
}
#endif
#endif

// ---------------------------------------------------------------------------------------------
// Jacobi SVD (one-sided, Hestenes) and symmetric eigendecomposition (two-sided, parallel order).
//
// Both sweep over all pairs of indices in round-robin ("circle") order: n rounded up to even, n - 1
// rounds per sweep, the n/2 pairs of a round disjoint, so a round is one parallel step ending with
// one barrier (two for eigh). A sweep that rotates no pair ends the iteration (converged); after
// `max_sweeps` sweeps info = 1. The rotation angle: zeta = (β - α)/(2γ), t = sign(zeta)/(|zeta| +
// sqrt(1 + zeta²)), c = 1/sqrt(1 + t²), s = c t; x ← c x - s y, y ← s x + c y, applied in
// Rutishauser's form (see `rotate_cols`).
//
// SVD (A m×n, m >= n, column-major in shared memory): α, β, γ = a_p·a_p, a_q·a_q, a_p·a_q; a pair is
// rotated when |γ| > tol ‖a_p‖‖a_q‖ (tol = sqrt(m) eps); σ_j = ‖a_j‖, U = A V Σ⁻¹. Each warp
// rotates its own pairs' columns (of A and of V) with no barrier inside a round.
// eigh (A n×n symmetric; its lower triangle is read): α, β, γ = a_pp, a_qq, a_pq; rotated when
// |a_pq| > tol sqrt(|a_pp a_qq|) (tol = sqrt(n) eps); A ← Jᵀ A J on every 2×2 block of the pair
// partition at once (the pair's own block becomes diag(a_pp - t a_pq, a_qq + t a_pq), its
// off-diagonal exactly zero), V ← V J; eigenvalues = the diagonal. Odd n is padded with a zero
// row and column, which no rotation ever touches.
//
// Outputs sorted (singular values descending, eigenvalues ascending; NaN first / last), with the
// sign convention: the entry of largest magnitude of each column of U (SVD; V's where σ = 0) or of
// each eigenvector is positive (the first such entry on ties). A U column whose σ is zero is
// written as zeros (the Python layer completes U to an orthonormal basis).

// The machine epsilon of T (float or double).
__device__ __forceinline__ T eps_t() { return sizeof(T) == 4 ? T(1.1920929e-07) : T(2.220446049250313e-16); }

// The exponent e with amax / 2^e in [0.5, 1), clamped so that 2^e and 2^-e are normal T numbers (0
// for zero or non-finite amax). The Jacobi kernels divide the matrix by 2^e (exact) and multiply
// the values back: column norms² and rotation angles then neither underflow nor overflow, for a
// matrix of subnormals or of huge entries alike.
__device__ __forceinline__ int pow2_exp(double amax) {
    int e = 0;
    if (amax > 0.0 && amax <= 1.7976931348623157e308) frexp(amax, &e);
    const int lo = sizeof(T) == 4 ? -125 : -1021, hi = sizeof(T) == 4 ? 126 : 1022;
    return e < lo ? lo : (e > hi ? hi : e);
}

// pow2_exp of the largest of the team's `v` (every thread gets it); `red` holds WARPS values.
// Starts with no barrier (the caller's last one must follow its reads of `red`) and ends with one.
__device__ __forceinline__ int team_pow2_exp(T v, T* red, const Team& tm) {
    for (int o = 16; o; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
#if WARPS > 1
    if (tm.lane == 0) red[tm.w] = v;
    __syncthreads();
    v = red[0];
    for (int i = 1; i < WARPS; ++i) v = fmax(v, red[i]);
    __syncthreads();
#endif
    return pow2_exp((double)v);
}

// Pair k of round r (0 <= r < np - 1, 0 <= k < np/2): player 0 stays, players 1..np-1 turn.
// r + k and r + L - k lie in [0, 2L), so one conditional subtraction replaces the modulo.
__device__ __forceinline__ void round_pair(int r, int k, int np, int& p, int& q) {
    const int L = np - 1;
    int x = r + k, y = r + L - k;
    x -= x >= L ? L : 0;
    y -= y >= L ? L : 0;
    p = k == 0 ? 0 : 1 + x;
    q = 1 + y;
}

// Fast reciprocal and square root: a rotation's angle need not be correctly rounded (a slightly
// different angle only costs convergence, not orthogonality: see `rotation`).
__device__ __forceinline__ float fast_rcp(float x) { return __fdividef(1.0f, x); }
__device__ __forceinline__ double fast_rcp(double x) { return 1.0 / x; }
__device__ __forceinline__ float fast_rsqrt(float x) { return rsqrtf(x); }
__device__ __forceinline__ double fast_rsqrt(double x) { return rsqrt(x); }

// (s, τ, t) of the rotation for (α, β, γ), γ != 0: t = tan θ, s = sin θ, and τ = s/(1 + c) as
// Rutishauser's update uses it. τ comes from s itself (c = sqrt(1 - s²) = 1/sqrt(1 + t²)), so
// the applied transform [[1 - sτ, -s], [s, 1 - sτ]] is orthogonal to rounding even though t and s
// are computed with approximate reciprocals.
__device__ __forceinline__ void rotation(T al, T be, T ga, T& s, T& tau, T& t) {
    const T eps = eps_t();
    const T zeta = (be - al) * (T(0.5) * fast_rcp(ga));
    const T az = fabs(zeta);
    t = (az > T(1) / eps ? T(0.5) * fast_rcp(az) : fast_rcp(az + sqrt(T(1) + zeta * zeta))) *
        (zeta < T(0) ? T(-1) : T(1));
    const T c = fast_rsqrt(T(1) + t * t);
    s = c * t;
    tau = s * fast_rcp(T(1) + c);
}

// x ← c x − s y, y ← s x + c y over a warp, in Rutishauser's form x ← x − s (y + τ x),
// y ← y + s (x − τ y), τ = s/(1 + c): the rounding error scales with the angle, which is small
// near convergence, so V stays orthogonal to a few ulps over thousands of rotations.
__device__ __forceinline__ void rotate_cols(T* x, T* y, int len, T s, T tau, int lane) {
    for (int i = lane; i < len; i += 32) {
        const T a = x[i], b = y[i];
        x[i] = a - s * (b + tau * a);
        y[i] = b + s * (a - tau * b);
    }
}

__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// warp_sum in float64 whatever T is.
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Descending total order with NaN first (or ascending with NaN last): x goes before y.
__device__ __forceinline__ bool before(T x, T y, bool desc) {
    const bool nx = x != x, ny = y != y;
    if (nx != ny) return desc ? nx : ny;
    return desc ? x > y : x < y;
}

// Sorts the n values `sv` into S (batch row b, multiplied by `up`: the matrix's scale) and writes
// the matching columns: U[:, rank] = sign · a_j / σ_j (when U; `a` column-major, stride lda, m
// rows) and V[:, rank] = sign · v_j (when V; stride ldv). `rank` is n ints of scratch. Starts and
// ends with a team barrier.
__device__ void emit(const T* a, int lda, int m, const T* v, int ldv, int n, const T* sv, int* rank, bool desc,
                     bool use_u, T* S, T* U, T* V, long long b, const Team& tm, T up) {
    TEAM_SYNC();
    for (int j = tm.t; j < n; j += TEAM) {
        int rk = 0;
        const T x = sv[j];
        for (int i = 0; i < n; ++i) {
            const T y = sv[i];
            rk += before(y, x, desc) || (i < j && !before(x, y, desc));
        }
        rank[j] = rk;
        S[b * n + rk] = x * up;
    }
    TEAM_SYNC();
    for (int j = tm.w; j < n; j += WARPS) {
        const int rk = rank[j];
        const T sj = sv[j];
        const bool has_u = use_u && !(sj <= T(0));  // NaN included: its column comes out NaN
        const T* col = has_u ? a + j * lda : v + j * ldv;
        const int len = has_u ? m : n;
        T best = T(-1);
        int at = len;
        if (V || has_u) {
            for (int i = tm.lane; i < len; i += 32) better(best, at, fabs(col[i]), i);
            for (int o = 16; o; o >>= 1) {
                const T ob = __shfl_xor_sync(0xffffffffu, best, o);
                const int oi = __shfl_xor_sync(0xffffffffu, at, o);
                better(best, at, ob, oi);
            }
        }
        const T sign = (at < len && col[at] < T(0)) ? T(-1) : T(1);
        if (U) {
            const T inv = has_u ? T(1) / sj : T(0);
            T* ud = U + b * m * n;
            for (int i = tm.lane; i < m; i += 32) ud[i * n + rk] = has_u ? sign * a[j * lda + i] * inv : T(0);
        }
        if (V) {
            T* vd = V + b * n * n;
            for (int i = tm.lane; i < n; i += 32) vd[i * n + rk] = sign * v[j * ldv + i];
        }
    }
}

__device__ __forceinline__ void fill_nan(T* x, int count, const Team& tm) {
    for (int e = tm.t; e < count; e += TEAM) x[e] = nan_t();
}

__device__ __forceinline__ int team_any(int x) {
#if WARPS > 1
    return __syncthreads_or(x);
#else
    return __any_sync(0xffffffffu, x);
#endif
}

__device__ __forceinline__ size_t jacobi_smem(int m, int n, int want_v) {
    return (size_t)n * (m + 1) + (want_v ? (size_t)n * (n + 1) : 0) + 3 * (size_t)n;
}

// nrm[j] = ‖a_j‖² (column-major, stride lda), a warp per column.
__device__ __forceinline__ void col_norms(const T* a, int lda, int m, int n, T* nrm, const Team& tm) {
    for (int j = tm.w; j < n; j += WARPS) {
        T s2 = T(0);
        for (int i = tm.lane; i < m; i += 32) {
            const T x = a[j * lda + i];
            s2 += x * x;
        }
        s2 = warp_sum(s2);
        if (tm.lane == 0) nrm[j] = s2;
    }
}

// Round r of one-sided Jacobi: each pair (p, q) of the round rotated by LPP lanes (32 / LPP
// pairs side by side in a warp; LPP a compile-time constant, so the strides and the shuffle
// count are too). Every lane runs every shuffle and barrier (a part with no pair, or none to
// rotate, idles through them). Sets `rotated` where some pair rotated.
template <int LPP>
__device__ __forceinline__ void jacobi_round(T* a, int lda, T* v, int ldv, int m, int n, int np, int r, T* nrm, T tol,
                                             bool want_v, const Team& tm, int& rotated) {
    constexpr int PPW = 32 / LPP;
    const int part = tm.lane / LPP, pl = tm.lane % LPP;
    for (int kb = tm.w * PPW; kb < np / 2; kb += WARPS * PPW) {
        const int k = kb + part;
        int p = 0, q = 0;
        bool live = k < np / 2;
        if (live) {
            round_pair(r, k, np, p, q);
            live = p < n && q < n;  // not the phantom column of odd n
        }
        T* ap = a + p * lda;
        T* aq = a + q * lda;
        T ga = T(0);
        if (live)
            for (int i = pl; i < m; i += LPP) ga += ap[i] * aq[i];
#pragma unroll
        for (int o = LPP / 2; o; o >>= 1) ga += __shfl_xor_sync(0xffffffffu, ga, o);
        T al = T(1), be = T(1);
        if (live) al = nrm[p], be = nrm[q];
        // |γ| > tol ‖a_p‖‖a_q‖ (false for NaN, and for a zero column: 0·inf is NaN).
        const bool rot = live && fabs(ga) * fast_rsqrt(al) * fast_rsqrt(be) > tol;
        T s = T(0), tau = T(0), t = T(0);
        if (rot) {
            rotated = 1;
            rotation(al, be, ga, s, tau, t);
            for (int i = pl; i < m; i += LPP) {
                const T x = ap[i], y = aq[i];
                ap[i] = x - s * (y + tau * x);
                aq[i] = y + s * (x - tau * y);
            }
            if (want_v) {
                T* vp = v + p * ldv;
                T* vq = v + q * ldv;
                for (int i = pl; i < n; i += LPP) {
                    const T x = vp[i], y = vq[i];
                    vp[i] = x - s * (y + tau * x);
                    vq[i] = y + s * (x - tau * y);
                }
            }
        }
        if (LPP == 32 && !rot) continue;  // the whole warp's one pair: nothing to publish
        __syncwarp();  // every lane has read nrm[p], nrm[q] before its part's lane 0 replaces them
        if (rot && pl == 0) {
            nrm[p] = al - t * ga;
            nrm[q] = be + t * ga;
        }
    }
}

// One-sided Jacobi SVD. A: (batch, m, n) row-major, m >= n. S: (batch, n). U: (batch, m, n) or
// null. V: (batch, n, n) or null. info: (batch,) flags, 1: no convergence, 2: some σ is zero (its
// U column is left zero).
// PAIR_LANES lanes per pair (32, or 16: two pairs side by side in each warp instead of one after
// the other; a compile-time choice, so the usual variant carries no code of the other).
#ifndef PAIR_LANES
#define PAIR_LANES 32
#endif
extern "C" __global__ void jacobi_kernel(const T* __restrict__ A, T* __restrict__ S, T* __restrict__ U,
                                         T* __restrict__ V, int* __restrict__ info, long long batch, int m, int n,
                                         int max_sweeps) {
    const Team tm = team_of();
    const int lda = m + 1, ldv = n + 1;
    const bool want_v = V != nullptr;
    T* a;
    const long long b = team_matrix(&a, jacobi_smem(m, n, want_v));
    if (b >= batch) return;
    T* v = a + (size_t)n * lda;
    T* sv = v + (want_v ? (size_t)n * ldv : 0);
    int* rank = reinterpret_cast<int*>(sv + n);  // n ints fit in n elements of T
    T* nrm = sv + 2 * n;  // ‖a_j‖², exact at the start of a sweep, then updated by each rotation

    const T* src = A + b * m * n;
    int bad = 0;  // a NaN or Inf anywhere: every output of the matrix is NaN
    T amax = T(0);
    for (int e = tm.t; e < m * n; e += TEAM) {
        const T x = src[e];
        bad |= !(x - x == T(0));
        amax = fmax(amax, fabs(x));
        a[(e % n) * lda + e / n] = x;
    }
    if (want_v)
        for (int e = tm.t; e < n * n; e += TEAM) v[(e / n) * ldv + e % n] = (e / n == e % n) ? T(1) : T(0);
    bad = team_any(bad);
    // Scaled by a power of two (nrm, WARPS <= n of it, is free until the first sweep).
    const int ex = bad ? 0 : team_pow2_exp(amax, nrm, tm);
    const T down = T(ldexp(1.0, -ex));
    for (int e = tm.t; e < m * n; e += TEAM) a[(e % n) * lda + e / n] *= down;
    TEAM_SYNC();

    const T eps = eps_t();
    const T tol = sqrt(T(m)) * eps;
    const int np = n + (n & 1);
    int converged = n <= 1 || bad;
    for (int sweep = 0; sweep < max_sweeps && !converged; ++sweep) {
        int rotated = 0;
        col_norms(a, lda, m, n, nrm, tm);
        TEAM_SYNC();
        for (int r = 0; r < np - 1; ++r) {
            jacobi_round<PAIR_LANES>(a, lda, v, ldv, m, n, np, r, nrm, tol, want_v, tm, rotated);
            __syncwarp();
            TEAM_SYNC();
        }
        converged = !team_any(rotated);
    }
    col_norms(a, lda, m, n, nrm, tm);
    __syncwarp();
    for (int j = tm.w; j < n; j += WARPS)
        if (tm.lane == 0) sv[j] = bad ? nan_t() : sqrt(nrm[j]);
    if (bad) fill_nan(v, want_v ? n * ldv : 0, tm);
    emit(a, lda, m, v, ldv, n, sv, rank, true, true, S, U, V, b, tm, T(ldexp(1.0, ex)));
    if (tm.t == 0) {
        int zero = 0;  // a σ = 0, whose U column emit left zero
        for (int j = 0; j < n; ++j) zero |= sv[j] <= T(0);
        info[b] = (converged ? 0 : 1) | (zero ? 2 : 0);
    }
}

__device__ __forceinline__ size_t eigh_smem(int n) {
    const int np = n + (n & 1);
    return 2 * (size_t)np * (np + 1) + 4 * (size_t)np;
}

// Two-sided Jacobi eigendecomposition. A: (batch, n, n) row-major (lower triangle read). L:
// (batch, n) ascending. V: (batch, n, n) eigenvectors (columns). info as for jacobi_kernel. With
// `redo`, only the matrices whose info is 2 (left by eigh_tri_kernel) are decomposed.
extern "C" __global__ void eigh_kernel(const T* __restrict__ A, T* __restrict__ L, T* __restrict__ V,
                                       int* __restrict__ info, long long batch, int n, int max_sweeps, int redo) {
    const Team tm = team_of();
    const int np = n + (n & 1), half = np / 2, ld = np + 1;
    T* a;
    const long long b = team_matrix(&a, eigh_smem(n));
    if (b >= batch || (redo && info[b] != 2)) return;
    T* v = a + (size_t)np * ld;
    T* sv = v + (size_t)np * ld;
    int* rank = reinterpret_cast<int*>(sv + np);
    T* cs = sv + 2 * np;  // τ_k, s_k of this round's pairs (c = 1 - sτ)
    T* sn = cs + half;
    int* pk = reinterpret_cast<int*>(sn + half);  // p_k, q_k of this round's pairs
    int* qk = pk + half;

    const T* src = A + b * n * n;
    int bad = 0;  // a NaN or Inf in the lower triangle: every output of the matrix is NaN
    T amax = T(0);
    for (int e = tm.t; e < np * np; e += TEAM) {
        const int i = e / np, j = e % np;
        const bool real = i < n && j < n;
        // column-major storage; the lower triangle mirrored.
        const T x = real ? (j > i ? src[j * n + i] : src[i * n + j]) : T(0);
        bad |= !(x - x == T(0));
        amax = fmax(amax, fabs(x));
        a[j * ld + i] = x;
        v[j * ld + i] = i == j ? T(1) : T(0);
    }
    bad = team_any(bad);
    // Scaled by a power of two (cs, WARPS <= n/2 of it, is free until the first round).
    const int ex = bad ? 0 : team_pow2_exp(amax, cs, tm);
    const T down = T(ldexp(1.0, -ex));
    for (int e = tm.t; e < np * np; e += TEAM) a[(e % np) * ld + e / np] *= down;
    TEAM_SYNC();
    const T eps = eps_t();
    const T tol = sqrt(T(n)) * eps;
    int converged = n <= 1 || bad;
    for (int sweep = 0; sweep < max_sweeps && !converged; ++sweep) {
        int rotated = 0;
        for (int r = 0; r < np - 1; ++r) {
            for (int k = tm.t; k < half; k += TEAM) {
                int p, q;
                round_pair(r, k, np, p, q);
                const T app = a[p * ld + p], aqq = a[q * ld + q], apq = a[q * ld + p];
                T s = T(0), tau = T(0), t = T(0);
                if (fabs(apq) > tol * sqrt(fabs(app)) * sqrt(fabs(aqq))) {
                    rotation(app, aqq, apq, s, tau, t);
                    rotated = 1;
                }
                cs[k] = tau;
                sn[k] = s;
                pk[k] = p;
                qk[k] = q;
            }
            TEAM_SYNC();
            // Every 2×2 block (pair k1's rows, pair k2's columns): X ← J1ᵀ X J2. Warps own row
            // pairs, lanes column pairs; with fewer than 32 column pairs a warp takes several row
            // pairs at once (`lpr` lanes each, a power of two), so no lane idles.
            const int lpr = half >= 32 ? 32 : (half > 16 ? 32 : half > 8 ? 16 : half > 4 ? 8 : half > 2 ? 4 : half > 1 ? 2 : 1);
            const int rpi = 32 / lpr, sub = tm.lane / lpr, l2 = tm.lane & (lpr - 1);
            for (int k1b = tm.w * rpi; k1b < half; k1b += WARPS * rpi) {
                const int k1 = k1b + sub;
                if (k1 < half) {
                    const int p1 = pk[k1], q1 = qk[k1];
                    const T s1 = sn[k1], c1 = T(1) - s1 * cs[k1];
                    for (int k2 = l2; k2 < half; k2 += lpr) {
                        const T s2 = sn[k2], c2 = T(1) - s2 * cs[k2];
                        if (s1 == T(0) && s2 == T(0)) continue;
                        const int p2 = pk[k2], q2 = qk[k2];
                        T* x11 = a + p2 * ld + p1;
                        T* x12 = a + q2 * ld + p1;
                        T* x21 = a + p2 * ld + q1;
                        T* x22 = a + q2 * ld + q1;
                        if (k1 == k2) {
                            // The pair's own block: diagonalized exactly.
                            const T apq = *x12, tt = s1 / c1;
                            *x11 = *x11 - tt * apq;
                            *x22 = *x22 + tt * apq;
                            *x12 = T(0);
                            *x21 = T(0);
                            continue;
                        }
                        const T a11 = *x11, a12 = *x12, a21 = *x21, a22 = *x22;
                        // X J2 (columns), then J1ᵀ (rows).
                        const T b11 = c2 * a11 - s2 * a12, b12 = s2 * a11 + c2 * a12;
                        const T b21 = c2 * a21 - s2 * a22, b22 = s2 * a21 + c2 * a22;
                        *x11 = c1 * b11 - s1 * b21;
                        *x21 = s1 * b11 + c1 * b21;
                        *x12 = c1 * b12 - s1 * b22;
                        *x22 = s1 * b12 + c1 * b22;
                    }
                }
                // V ← V J for these row pairs' rotations (V's columns p, q), lanes over rows.
                for (int j = 0; j < rpi && k1b + j < half; ++j) {
                    const int k = k1b + j;
                    const T sk = sn[k];
                    if (sk != T(0)) rotate_cols(v + pk[k] * ld, v + qk[k] * ld, np, sk, cs[k], tm.lane);
                }
            }
            TEAM_SYNC();
        }
        converged = !team_any(rotated);
    }
    // The padding row/column (index n when n is odd) was never rotated: drop it.
    for (int j = tm.t; j < n; j += TEAM) sv[j] = bad ? nan_t() : a[j * ld + j];
    if (bad) fill_nan(v, np * ld, tm);
    emit(a, ld, n, v, ld, n, sv, rank, false, false, L, nullptr, V, b, tm, T(ldexp(1.0, ex)));
    if (tm.t == 0) info[b] = converged ? 0 : 1;
}

#if defined(TRI_EIGH) || defined(EIGH_BIG)
// ---------------------------------------------------------------------------------------------
// Tridiagonal eigenproblem helpers shared by eigh_tri_kernel (one block per matrix) and the
// large-matrix eigensolver (EIGH_BIG): Sturm counts, multisection, twisted factorizations.

// 1/x for a normal float64 x: the hardware's approximate reciprocal and two Newton steps (a
// relative error of a few ulps, against the much slower correctly rounded division; the Sturm
// counts and twisted factorizations only need small relative errors per step).
__device__ __forceinline__ double rcp64(double x) {
    double r;
    asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(r) : "d"(x));
    double e = fma(-x, r, 1.0);
    r = fma(r, e, r);
    e = fma(-x, r, 1.0);
    return fma(r, e, r);
}

// 1/x: float's approximate reciprocal, or rcp64.
__device__ __forceinline__ float rcp_of(float x) { return __fdividef(1.0f, x); }
__device__ __forceinline__ double rcp_of(double x) { return rcp64(x); }

// The number of eigenvalues of T[s..t] below x (Sturm count, pivots kept at least pivmin away
// from zero), in F's precision.
template <class F>
__device__ int sturm_count(const F* d, const F* e, int s, int t, F x, F pivmin) {
    F q = d[s] - x;
    if (fabs(q) < pivmin) q = -pivmin;
    int c = q < F(0);
    int i = s + 1;
    // Two steps at a time, their loads issued ahead of the dependent chain.
    for (; i + 1 <= t; i += 2) {
        const F d0 = d[i] - x, d1 = d[i + 1] - x, f0 = e[i - 1] * e[i - 1], f1 = e[i] * e[i];
        q = d0 - f0 * rcp_of(q);
        if (fabs(q) < pivmin) q = -pivmin;
        c += q < F(0);
        q = d1 - f1 * rcp_of(q);
        if (fabs(q) < pivmin) q = -pivmin;
        c += q < F(0);
    }
    if (i <= t) {
        q = d[i] - x - e[i - 1] * e[i - 1] * rcp_of(q);
        if (fabs(q) < pivmin) q = -pivmin;
        c += q < F(0);
    }
    return c;
}

// Multisection point g of G inside [lo, lo + width]; every lane computes a chosen bound the same way.
template <class F>
__device__ __forceinline__ F tri_point(F lo, F width, int g, int G) {
    return lo + width * F(g + 1) / F(G + 1);
}

template <class F>
__device__ F bisect_in(const F* d, const F* e, int s, int t, int r, F lo, F hi, F tnorm, F pivmin, F eps, int gl,
                       int G, unsigned mask);

// Eigenvalue r (from the bottom) of T[s..t], s < t, by multisection over the G lanes of a group
// (`gl` this lane, `mask` the group), in F's precision: to the last bits of F (relative, or
// eps·‖T‖ absolute: no better is possible) or until the points no longer split the interval.
template <class F>
__device__ F bisect(const F* d, const F* e, int s, int t, int r, F tnorm, F pivmin, F eps, int gl, int G,
                    unsigned mask) {
    F lo = d[s], hi = d[s];
    for (int i = s; i <= t; ++i) {
        const F rad = (i > s ? fabs(e[i - 1]) : F(0)) + (i < t ? fabs(e[i]) : F(0));
        lo = fmin(lo, d[i] - rad);
        hi = fmax(hi, d[i] + rad);
    }
    const F pad = F(2) * eps * tnorm + F(2) * pivmin;
    return bisect_in<F>(d, e, s, t, r, lo - pad, hi + pad, tnorm, pivmin, eps, gl, G, mask);
}

// bisect from the interval [lo, hi], which must hold the eigenvalue.
template <class F>
__device__ F bisect_in(const F* d, const F* e, int s, int t, int r, F lo, F hi, F tnorm, F pivmin, F eps, int gl,
                       int G, unsigned mask) {
    for (int it = 0; it < 256; ++it) {
        const F width = hi - lo;
        if (!(width > F(2) * eps * fmax(fabs(lo), fabs(hi)) + eps * tnorm + pivmin)) break;
        const int cnt = sturm_count(d, e, s, t, tri_point(lo, width, gl, G), pivmin);
        const int c = __popc(__ballot_sync(mask, cnt <= r) & mask);
        const F nlo = c > 0 ? tri_point(lo, width, c - 1, G) : lo;
        const F nhi = c < G ? tri_point(lo, width, c, G) : hi;
        if (nlo == lo && nhi == hi) break;
        lo = nlo;
        hi = nhi;
    }
    return F(0.5) * (lo + hi);
}

// A twisted-factorization pivot kept at least `tiny` away from zero.
__device__ __forceinline__ double tri_fix(double x, double tiny) {
    return fabs(x) >= tiny ? x : (x < 0.0 ? -tiny : tiny);
}

// The stationary (top-down) pivots D+ of T[s..t] − λI into z[s..t].
template <class Z>
__device__ __forceinline__ void twisted_down(const double* d, const double* e, int s, int t, double lam, double tiny,
                                             Z z) {
    double D = tri_fix(d[s] - lam, tiny);
    z[s] = D;
    for (int i = s; i < t; ++i) {
        D = tri_fix(d[i + 1] - lam - e[i] * e[i] * rcp64(D), tiny);
        z[i + 1] = D;
    }
}

// The progressive (bottom-up) pivots D- of T[..t] − λI into z[r+1..t] (where the vector's entries
// below the twist index r will need them).
template <class Z>
__device__ __forceinline__ void twisted_up_below(const double* d, const double* e, int t, int r, double lam,
                                                 double tiny, Z z) {
    double Dm = tri_fix(d[t] - lam, tiny);
    for (int i = t; i > r; --i) {
        z[i] = Dm;
        if (i - 1 > r) Dm = tri_fix(d[i - 1] - lam - e[i - 1] * e[i - 1] * rcp64(Dm), tiny);
    }
}

// The eigenvector of T[s..t] for λ into z (entries s..t; `z` a double* or an accessor with
// operator[]), normalized, and in `rq` the Rayleigh quotient's correction to λ. Returns 0 when
// the vector is not finite.
template <class Z>
__device__ int twisted_vector(const double* d, const double* e, int s, int t, double lam, double tiny, Z z, double* rq) {
    *rq = 0.0;
    if (s == t) {
        z[s] = 1.0;
        return 1;
    }
    twisted_down(d, e, s, t, lam, tiny, z);
    // Progressive (bottom-up) pivots D-, and the twist index r of least |γ_r|.
    double Dm = tri_fix(d[t] - lam, tiny), gr = z[t];
    int r = t;
    for (int i = t - 1; i >= s; --i) {
        const double g = z[i] - e[i] * e[i] * rcp64(Dm);
        if (fabs(g) < fabs(gr)) {
            gr = g;
            r = i;
        }
        Dm = tri_fix(d[i] - lam - e[i] * e[i] * rcp64(Dm), tiny);
    }
    // D- again, stored below r (where D+ is no longer needed).
    twisted_up_below(d, e, t, r, lam, tiny, z);
    z[r] = 1.0;
    double nrm = 1.0;
    for (int i = r + 1; i <= t; ++i) {
        z[i] = -e[i - 1] * z[i - 1] * rcp64(z[i]);
        nrm += z[i] * z[i];
    }
    for (int i = r - 1; i >= s; --i) {
        z[i] = -e[i] * z[i + 1] * rcp64(z[i]);
        nrm += z[i] * z[i];
    }
    if (!(nrm < 1e300)) return 0;
    *rq = gr / nrm;  // (T - λ) z = γ_r e_r with z_r = 1: zᵀ(T - λ)z / zᵀz
    const double inv = 1.0 / sqrt(nrm);
    for (int i = s; i <= t; ++i) z[i] *= inv;
    return 1;
}

#endif

#ifdef TRI_EIGH
// ---------------------------------------------------------------------------------------------
// Symmetric eigendecomposition through a tridiagonal matrix, one block per matrix, no sweeps:
//  1. Householder reduction A = Q T Qᵀ in T's precision, in shared memory (LAPACK's sytd2, lower:
//     H_k = I - tau v vᵀ on rows k+1.., v_{k+1} = 1, kept in column k of `a`, then packed). The
//     matrix is first scaled by a power of two (exact) so that its largest entry lies in [0.5, 1).
//  2. T's eigenvalues by bisection on Sturm counts, G threads per eigenvalue (multisection: the G
//     points split the interval into G + 1 parts), per unreduced block of T (an off-diagonal at
//     most n·eps₆₄·‖T‖ counts as zero: a backward error well below the reduction's own): in
//     float32 then two float64 Rayleigh-quotient steps, or in float64 (see phase 2 below).
//  3. Each eigenvector of T by one twisted factorization of T - λI in float64 (the stationary and
//     progressive recurrences meet at the index r where |γ_r| is least; z_r = 1, and the two
//     recurrences give the rest): one step of inverse iteration from e_r, whose error is
//     eps₆₄‖T‖/gap. Eigenvalues of a block closer than 1e-3‖T‖ (a cluster) have their vectors
//     orthogonalized by modified Gram–Schmidt, a warp per cluster.
//  4. V = Q Z, each column held in registers by a group of lanes, the reflectors applied last to
//     first (no block barrier).
// A cluster whose Gram–Schmidt loses more than 1e-3 of a vector's norm (eigenvalues equal to
// float64 precision inside one block: exactly repeated eigenvalues of a float64 matrix), a
// Rayleigh step that strays from the float32 estimate, or a vector that overflows, sets info = 2:
// the caller then runs eigh_kernel (Jacobi) on that matrix.
// Same outputs as eigh_kernel otherwise (info 0; a NaN or Inf input gives NaN outputs).

// Rows per warp of the reduction's matrix-vector product (32 / its threads per row): the column
// stride is that mod 32, so a warp's reads fall in distinct banks.
__device__ __forceinline__ int tri_group(int n) {
    int g = 1;
    while (g < 32 && 2 * g * n <= TEAM) g *= 2;
    return g;
}
// Lanes per column of the back-transformation: tri_group, or more where a lane would otherwise
// hold more than 32 rows of the column.
__device__ __forceinline__ int tri_bt_group(int n) {
    int g = tri_group(n);
    while (g < 32 && g * 32 < n) g *= 2;
    return g;
}
__device__ __forceinline__ int tri_lda(int n) {
    const int r = 32 / tri_group(n);
    return n + ((r - n % 32) % 32 + 32) % 32;
}
// Shared memory (cuda/linalg.rs's tri_smem_bytes sums it): one region for the matrix a (n × lda, T)
// during the reduction and Z (n × (n|1) doubles) after it, the reflectors packed (column k's
// rows k+1.., T), d, e, λ, float copies of d and e, the reduction scratch (2·WARPS doubles), block
// starts/ends, tight flags, a flag and padding (4n + 2 ints), then tau, p, the eigenvalues (T)
// and emit's ranks. Packing the reflectors lets Z reuse a's space: 100 rows in float32 take
// about 100 KB, so two matrices share an SM.
__device__ __forceinline__ size_t tri_x_bytes(int n) {
    const size_t zb = 8 * (size_t)n * (n | 1), ab = sizeof(T) * (size_t)n * tri_lda(n);
    return ((zb > ab ? zb : ab) + 7) / 8 * 8;
}
__device__ __forceinline__ size_t tri_packed(int n) { return ((size_t)n * (n - 1) / 2 + 1) / 2 * 2; }

// Max over the team (every thread gets it); `red` holds 2*WARPS doubles used by `parity`.
__device__ __forceinline__ double tri_max(double v, double* red, int parity, const Team& tm) {
    for (int o = 16; o; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (tm.lane == 0) red[parity * WARPS + tm.w] = v;
    __syncthreads();
    v = red[parity * WARPS];
    for (int i = 1; i < WARPS; ++i) v = fmax(v, red[parity * WARPS + i]);
    return v;
}

// Reflector k of the reduction, by one warp: from column k's rows k+1.. (alpha = a_{k+1,k}, x
// below), H = I - tau v vᵀ with v_{k+1} = 1 (stored over alpha) and v = x/(alpha - beta) below,
// beta = -sign(alpha) ‖(alpha, x)‖ (LAPACK's larfg; tau = 0 where x = 0). Writes tau, d_k and
// e_k = beta.
__device__ __forceinline__ void tri_house(T* a, int lda, int n, int k, T* taus, double* dd, double* ee, int lane) {
    T* col = a + k * lda;
    const T alpha = col[k + 1];
    T sigma = T(0);
    for (int i = k + 2 + lane; i < n; i += 32) sigma += col[i] * col[i];
    sigma = warp_sum(sigma);
    T tau, beta, sc;
    larfg(alpha, sigma, tau, beta, sc);
    for (int i = k + 2 + lane; i < n; i += 32) col[i] *= sc;
    __syncwarp();  // every lane has read alpha before lane 0 overwrites it
    if (lane == 0) {
        taus[k] = tau;
        dd[k] = (double)col[k];
        ee[k] = (double)beta;
        col[k + 1] = T(1);
    }
}

// Reflectors k = khi down to max(klo, 0) applied to a column held by a group of GB lanes (lane gl:
// rows gl + q·GB, q >= Q0 only: the caller guarantees rows below are untouched). Returns the next k.
template <int Q0>
__device__ __forceinline__ int tri_bt_steps(T (&zr)[TRI_NPL], int k, int klo, const T* pk, const T* taus, int n,
                                            int gl, int GB, unsigned mask) {
    for (; k >= klo && k >= 0; --k) {
        const T tau = taus[k];
        if (tau == T(0)) continue;
        const T* v = pk + (k * (n - 1) - k * (k - 1) / 2) - (k + 1);  // packed column k
        T s = T(0);
#pragma unroll
        for (int q = Q0; q < TRI_NPL; ++q) {
            const int i = gl + q * GB;
            if (i > k && i < n) s += v[i] * zr[q];
        }
        for (int o = GB / 2; o; o >>= 1) s += __shfl_xor_sync(mask, s, o);
        s *= tau;
#pragma unroll
        for (int q = Q0; q < TRI_NPL; ++q) {
            const int i = gl + q * GB;
            if (i > k && i < n) zr[q] -= s * v[i];
        }
    }
    return k;
}

// A: (batch, n, n) row-major (lower triangle read). L: (batch, n) ascending. V: (batch, n, n)
// eigenvectors (columns). info: 0, or 2 (see above). One matrix per block (MPB == 1).
extern "C" __global__ void __launch_bounds__(32 * WARPS) eigh_tri_kernel(const T* __restrict__ A, T* __restrict__ L, T* __restrict__ V,
                                           int* __restrict__ info, long long batch, int n) {
    const Team tm = team_of();
    T* base;
    const long long b = team_matrix(&base, 0);  // MPB == 1: the whole dynamic shared memory
    if (b >= batch) return;
    if ((n + tri_bt_group(n) - 1) / tri_bt_group(n) > TRI_NPL) {  // not as planned: Jacobi
        if (threadIdx.x == 0) info[b] = 2;
        return;
    }
    const int ldz = n | 1, lda = tri_lda(n);
#ifdef TRI_PROFILE
    long long prof[8];
#define TRI_MARK(i) (prof[i] = clock64())
    TRI_MARK(0);
#else
#define TRI_MARK(i) ((void)0)
#endif
    unsigned char* raw = reinterpret_cast<unsigned char*>(base);
    double* z = reinterpret_cast<double*>(raw);
    T* a = reinterpret_cast<T*>(raw);
    T* pk = reinterpret_cast<T*>(raw + tri_x_bytes(n));
    double* dd = reinterpret_cast<double*>(pk + tri_packed(n));
    double* ee = dd + n;
    double* lam = ee + n;
    float* df = reinterpret_cast<float*>(lam + n);
    float* ef = df + n;
    double* red = lam + 2 * n;
    int* bs = reinterpret_cast<int*>(red + 2 * WARPS);
    int* be = bs + n;
    int* tight = be + n;
    int* flag = tight + n;
    T* taus = reinterpret_cast<T*>(flag + 2 + n);  // 4n + 2 ints: 8-byte aligned
    T* pv = taus + n;
    T* sv = pv + n;
    int* rank = reinterpret_cast<int*>(sv + n);

    // Load (the lower triangle, mirrored), check, scale.
    const T* src = A + b * n * n;
    int bad = 0;
    double amax = 0.0;
    for (int e = tm.t; e < n * n; e += TEAM) {
        const int i = e / n, j = e % n;
        const T x = j > i ? src[j * n + i] : src[i * n + j];
        bad |= !(x - x == T(0));
        amax = fmax(amax, (double)fabs(x));
        a[j * lda + i] = x;
    }
    if (tm.t == 0) flag[0] = 0;
    bad = team_any(bad);
    if (bad) {
        for (int j = tm.t; j < n; j += TEAM) L[b * n + j] = nan_t();
        for (int e = tm.t; e < n * n; e += TEAM) V[b * n * n + e] = nan_t();
        if (tm.t == 0) info[b] = 0;
        return;
    }
    amax = tri_max(amax, red, 0, tm);
    const int ex = pow2_exp(amax);
    const T scale = T(ldexp(1.0, -ex));
    for (int e = tm.t; e < n * n; e += TEAM) {
        const int i = e % n, j = e / n;
        a[j * lda + i] *= scale;
    }
    __syncthreads();

    TRI_MARK(1);
    // 1. Reduction to tridiagonal form. Warp 0 makes reflector k + 1 as soon as it has updated
    // column k + 1 (the other warps are still updating theirs), so a step has two barriers.
    const int G = tri_group(n), R = 32 / G;
    if (tm.w == 0 && n > 2) tri_house(a, lda, n, 0, taus, dd, ee, tm.lane);
    __syncthreads();
    for (int k = 0; k + 2 < n; ++k) {
        const T tau = taus[k];
        const bool next = k + 3 < n;
        if (tau == T(0)) {  // uniform: H_k = I
            if (tm.w == 0 && next) tri_house(a, lda, n, k + 1, taus, dd, ee, tm.lane);
            __syncthreads();
            continue;
        }
        const int m = n - k - 1;
        const T* v = a + k * lda + k + 1;
        T* sub = a + (k + 1) * lda + k + 1;
        // p = tau · A22 v: G threads per row; a warp's lanes take R consecutive rows. Each warp
        // also sums p_i v_i over its rows into kp[w] (for pᵀv after the barrier).
        const int row_in = tm.lane % R, g = tm.lane / R;
        T* kp = reinterpret_cast<T*>(red);
        T kpw = T(0);
        for (int base = tm.w * R; base < m; base += WARPS * R) {
            const int i = base + row_in;
            T s = T(0), s1 = T(0);
            if (i < m) {
                int j = g;
#pragma unroll 2
                for (; j + G < m; j += 2 * G) {
                    s += sub[j * lda + i] * v[j];
                    s1 += sub[(j + G) * lda + i] * v[j + G];
                }
                if (j < m) s += sub[j * lda + i] * v[j];
            }
            s += s1;
            for (int o = R; o < 32; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            T pvi = T(0);
            if (g == 0 && i < m) {
                pv[i] = tau * s;
                pvi = tau * s * v[i];
            }
            for (int o = 1; o < R; o <<= 1) pvi += __shfl_xor_sync(0xffffffffu, pvi, o);
            kpw += pvi;
        }
        if (tm.lane == 0) kp[tm.w] = kpw;
        __syncthreads();
        // w = p - (tau/2)(pᵀv) v;  A22 -= v wᵀ + w vᵀ (both triangles), a warp per column, each
        // lane's rows' v_i and w_i in registers (n <= 128: four rows a lane).
        T kk = T(0);
        for (int q = 0; q < WARPS; ++q) kk += kp[q];
        kk *= T(0.5) * tau;
        T vr[4], wr[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int i = tm.lane + 32 * q;
            vr[q] = i < m ? v[i] : T(0);
            wr[q] = i < m ? pv[i] - kk * vr[q] : T(0);
        }
        if (tm.w == 0) {
            // Warp 0 updates column k + 1 alone and makes reflector k + 1 from it in registers
            // (as tri_house: sub row 0 is d_{k+1}, row 1 alpha, rows 2.. x), while warps 1..
            // update the other columns.
            const T wj = pv[0] - kk;  // v_0 = 1
            T c[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int r = tm.lane + 32 * q;
                c[q] = r < m ? sub[r] - (vr[q] * wj + wr[q]) : T(0);
            }
            if (next) {
                T sg = T(0);
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int r = tm.lane + 32 * q;
                    if (r >= 2 && r < m) sg += c[q] * c[q];
                }
                sg = warp_sum(sg);
                const T alpha = __shfl_sync(0xffffffffu, c[0], 1);
                T tau1, beta, sc;
                larfg(alpha, sg, tau1, beta, sc);
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int r = tm.lane + 32 * q;
                    if (r < m) sub[r] = r == 0 ? c[q] : (r == 1 ? T(1) : c[q] * sc);
                }
                if (tm.lane == 0) {
                    taus[k + 1] = tau1;
                    dd[k + 1] = (double)c[0];
                    ee[k + 1] = (double)beta;
                }
            } else {
#pragma unroll
                for (int q = 0; q < 4; ++q)
                    if (tm.lane + 32 * q < m) sub[tm.lane + 32 * q] = c[q];
            }
        } else {
            // Two columns at a time, all loads before the stores.
            const int step = WARPS - 1;
            for (int j = tm.w; j < m; j += 2 * step) {
                const int j2 = j + step < m ? j + step : j;
                const T vj = v[j], wj = pv[j] - kk * vj, vj2 = v[j2], wj2 = pv[j2] - kk * vj2;
                T* cj = sub + j * lda;
                T* cj2 = sub + j2 * lda;
                T c[4], c2[4];
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const bool in = tm.lane + 32 * q < m;
                    c[q] = in ? cj[tm.lane + 32 * q] : T(0);
                    c2[q] = in ? cj2[tm.lane + 32 * q] : T(0);
                }
#pragma unroll
                for (int q = 0; q < 4; ++q)
                    if (tm.lane + 32 * q < m) {
                        cj[tm.lane + 32 * q] = c[q] - (vr[q] * wj + wr[q] * vj);
                        if (j2 != j) cj2[tm.lane + 32 * q] = c2[q] - (vr[q] * wj2 + wr[q] * vj2);
                    }
            }
        }
        __syncthreads();
    }
    if (tm.t == 0) {
        if (n >= 2) {
            dd[n - 2] = (double)a[(n - 2) * lda + n - 2];
            ee[n - 2] = (double)a[(n - 2) * lda + n - 1];
            taus[n - 2] = T(0);
        }
        dd[n - 1] = (double)a[(n - 1) * lda + n - 1];
        ee[n - 1] = 0.0;
        taus[n - 1] = T(0);
    }
    // The reflectors, packed (a's space becomes Z's after the next barriers).
    for (int k = tm.w; k + 2 < n; k += WARPS) {
        T* dst = pk + (k * (n - 1) - k * (k - 1) / 2) - (k + 1);
        for (int i = k + 1 + tm.lane; i < n; i += 32) dst[i] = a[k * lda + i];
    }
    __syncthreads();

    TRI_MARK(2);
    // 2. Splitting (T in float64) and bisection.
    double tn = 0.0, e2max = 0.0;
    for (int i = tm.t; i < n; i += TEAM) {
        const double el = i > 0 ? fabs(ee[i - 1]) : 0.0;
        tn = fmax(tn, fabs(dd[i]) + el + fabs(ee[i]));
    }
    const double tnorm = tri_max(tn, red, 1, tm);
    const double eps = 2.220446049250313e-16;
    for (int i = tm.t; i + 1 < n; i += TEAM) {
        if (fabs(ee[i]) <= (double)n * eps * tnorm) ee[i] = 0.0;
        e2max = fmax(e2max, ee[i] * ee[i]);
    }
    const double e2max_all = tri_max(e2max, red, 0, tm);
    const double pivmin = 2.2250738585072014e-308 * fmax(1.0, e2max_all);
    for (int i = tm.t; i < n; i += TEAM) {
        int s = i, t = i;
        while (s > 0 && ee[s - 1] != 0.0) --s;
        while (t + 1 < n && ee[t] != 0.0) ++t;
        bs[i] = s;
        be[i] = t;
        df[i] = (float)dd[i];
        ef[i] = (float)ee[i];
    }
    __syncthreads();
    // Float32 input: float32 bisection for every eigenvalue (error at most δ = 10 eps₃₂ ‖T‖: Sturm
    // counts in floating point are exact for a matrix within a few eps of T, entry by entry).
    // Eigenvalues whose neighbour in the block is within 10δ ("tight") are redone in float64
    // bisection; the others are refined by two Rayleigh quotient steps in float64 with their
    // vectors (cubic convergence from δ to the one eigenvalue within 8δ: a vector error near
    // 1e-8). Float64 input: float64 bisection for all.
    const double delta = 10.0 * 1.1920929e-07 * tnorm;
    {
        const int gl = tm.lane % G;
        const unsigned mask = G == 32 ? 0xffffffffu : (((1u << G) - 1u) << (tm.lane - gl));
        const float pivmin32 = 1.17549435e-38f * fmaxf(1.0f, (float)e2max_all);
        if (sizeof(T) == 4) {
            for (int j = tm.t / G; j < n; j += TEAM / G) {
                const int s = bs[j], t = be[j];
                const double l = s == t ? dd[s]
                                        : (double)bisect<float>(df, ef, s, t, j - s, (float)tnorm, pivmin32,
                                                                1.1920929e-07f, gl, G, mask);
                if (gl == 0) lam[j] = l;
            }
            __syncthreads();
        }
        for (int j = tm.t; j < n; j += TEAM) {
            const int s = bs[j], t = be[j];
            tight[j] = s < t && (sizeof(T) == 8 || (j > s && lam[j] - lam[j - 1] <= 10.0 * delta) ||
                                 (j < t && lam[j + 1] - lam[j] <= 10.0 * delta));
            if (s == t) lam[j] = dd[s];
        }
        __syncthreads();
        for (int j = tm.t / G; j < n; j += TEAM / G) {
            if (!tight[j]) continue;
            const int s = bs[j], t = be[j];
            const double l = bisect<double>(dd, ee, s, t, j - s, tnorm, pivmin, eps, gl, G, mask);
            if (gl == 0) lam[j] = l;
        }
    }
    __syncthreads();

    TRI_MARK(3);
    // 3. Eigenvectors of T, then Gram–Schmidt inside clusters.
    const double tiny = eps * tnorm;
    for (int j = tm.t; j < n; j += TEAM) {
        double* zj = z + (size_t)j * ldz;
        const int s = bs[j], t = be[j];
        for (int i = 0; i < s; ++i) zj[i] = 0.0;
        for (int i = t + 1; i < n; ++i) zj[i] = 0.0;
        double lj = lam[j], rq = 0.0;
        if (s < t && !tight[j])
            for (int it = 0; it < 2; ++it) {
                // The Rayleigh quotient of the vector for the current estimate; a step that leaves
                // the float32 estimate's neighbourhood means a bad estimate: Jacobi redoes it.
                if (!twisted_vector(dd, ee, s, t, lj, tiny, zj, &rq) || !(fabs(lj + rq - lam[j]) <= 4.0 * delta)) {
                    flag[0] = 1;
                    break;
                }
                lj += rq;
            }
        lam[j] = lj;
        if (!twisted_vector(dd, ee, s, t, lj, tiny, zj, &rq)) flag[0] = 1;
    }
    __syncthreads();
    TRI_MARK(4);
    const double ctol = 1e-3 * tnorm;
    for (int j = tm.w; j + 1 < n; j += WARPS) {
        const bool head = j == 0 || bs[j - 1] != bs[j] || lam[j] - lam[j - 1] > ctol;
        if (!head || bs[j + 1] != bs[j] || lam[j + 1] - lam[j] > ctol) continue;
        int k = j + 1;
        while (k + 1 < n && bs[k + 1] == bs[j] && lam[k + 1] - lam[k] <= ctol) ++k;
        const int s = bs[j], t = be[j];
        for (int q = j + 1; q <= k; ++q) {
            double* zq = z + (size_t)q * ldz;
            for (int p = j; p < q; ++p) {
                const double* zp = z + (size_t)p * ldz;
                double dot = 0.0;
                for (int i = s + tm.lane; i <= t; i += 32) dot += zq[i] * zp[i];
                dot = warp_sum_d(dot);
                for (int i = s + tm.lane; i <= t; i += 32) zq[i] -= dot * zp[i];
            }
            double nn = 0.0;
            for (int i = s + tm.lane; i <= t; i += 32) nn += zq[i] * zq[i];
            nn = warp_sum_d(nn);
            if (!(nn >= 1e-6)) {
                if (tm.lane == 0) flag[0] = 1;
                nn = 1.0;
            }
            const double inv = 1.0 / sqrt(nn);
            for (int i = s + tm.lane; i <= t; i += 32) zq[i] *= inv;
            __syncwarp();
        }
    }
    __syncthreads();

    TRI_MARK(5);
    // 4. V = Q Z in T's precision: GB lanes per column, lane gl holding the rows i ≡ gl (mod GB)
    // in registers (TRI_NPL of them), reflectors last to first; each v_i is one shared-memory
    // broadcast to every column of the warp. The column then goes back over its own slot of z
    // (as T), which emit reads.
    T* zt = reinterpret_cast<T*>(z);
    const int ldv = ldz * (int)(sizeof(double) / sizeof(T));
    {
        const int GB = tri_bt_group(n), gl = tm.lane % GB;
        const unsigned mask = GB == 32 ? 0xffffffffu : (((1u << GB) - 1u) << (tm.lane - gl));
        for (int j = tm.t / GB; j < n; j += TEAM / GB) {
            T zr[TRI_NPL];
#pragma unroll
            for (int q = 0; q < TRI_NPL; ++q) {
                const int i = gl + q * GB;
                zr[q] = i < n ? T(z[(size_t)j * ldz + i]) : T(0);
            }
            // Reflector k touches rows > k only: past k = Q0·GB - 1 the registers below Q0 are
            // idle, so four ranges of k each skip the quarters they cannot touch.
            constexpr int N = TRI_NPL;
            int k = n - 3;
            k = tri_bt_steps<3 * N / 4>(zr, k, 3 * N / 4 * GB - 1, pk, taus, n, gl, GB, mask);
            k = tri_bt_steps<N / 2>(zr, k, N / 2 * GB - 1, pk, taus, n, gl, GB, mask);
            k = tri_bt_steps<N / 4>(zr, k, N / 4 * GB - 1, pk, taus, n, gl, GB, mask);
            tri_bt_steps<0>(zr, k, 0, pk, taus, n, gl, GB, mask);
            __syncwarp(mask);  // every lane of the group has read its rows of column j
#pragma unroll
            for (int q = 0; q < TRI_NPL; ++q) {
                const int i = gl + q * GB;
                if (i < n) zt[(size_t)j * ldv + i] = zr[q];
            }
        }
    }
    TRI_MARK(6);
    // Outputs: eigenvalues scaled back (emit begins with a barrier).
    for (int j = tm.t; j < n; j += TEAM) sv[j] = T(ldexp(lam[j], ex));
    const T* vz = zt;
    emit(vz, ldv, n, vz, ldv, n, sv, rank, false, false, L, nullptr, V, b, tm, T(1));
    if (tm.t == 0) info[b] = flag[0] ? 2 : 0;
#ifdef TRI_PROFILE
    // Cycles per phase (thread 0's clock between barriers) over V[b][0][0..6], for
    // scripts/time_eigh_tri.py; the vectors are then wrong.
    TRI_MARK(7);
    __syncthreads();
    if (tm.t == 0)
        for (int i = 0; i < 7 && i < n * n; ++i) V[b * n * n + i] = T(prof[i + 1] - prof[i]);
#endif
}
#endif

#ifdef LANE_NP
// One-sided Jacobi SVD — and, with `eig`, the symmetric eigendecomposition — of small matrices
// in registers: LANE_NP lanes per matrix (8, 16 or 32; 32 / LANE_NP matrices per warp), lane c
// holding column c of A (m <= LANE_MR rows) and of V. Same contract as jacobi_kernel (eig: as
// eigh_kernel, with S the eigenvalues and U unused), for n <= LANE_NP.
//
// Round r (1 <= r < LANE_NP) pairs lane c with lane c ^ r: for a power-of-two count these rounds
// are a round-robin schedule (every pair meets once per sweep). The partner's column arrives by
// shuffles; both lanes compute α, β, γ over the same values in the same order, hence the same
// rotation, and each updates its own column (of A and of V). Padding columns (c >= n) are zero
// and never rotate. Sweeps end when one rotates no pair of the matrix.
//
// eig: the lower triangle, symmetrized, is shifted to B = A + ‖A‖_F I, which is positive
// semidefinite with A's eigenvectors, so B's right singular vectors are eigenvectors and
// λ = σ − ‖A‖_F (B's columns' norms); the absolute error of λ is a few ulps of ‖A‖_F.
extern "C" __global__ void __launch_bounds__(128) jacobi_lane_kernel(const T* __restrict__ A, T* __restrict__ S,
                                                                     T* __restrict__ U, T* __restrict__ V,
                                                                     int* __restrict__ info, long long batch, int m,
                                                                     int n, int max_sweeps, int eig) {
    constexpr int NP = LANE_NP, MR = LANE_MR;
    constexpr unsigned FULL = 0xffffffffu;
    const int lane = threadIdx.x & 31, c = lane % NP, base = lane - c;
    const long long first = ((long long)blockIdx.x * blockDim.x + (threadIdx.x & ~31)) / NP;
    if (first >= batch) return;  // the whole warp is idle
    const long long gm = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / NP;
    const bool live = gm < batch;
    const long long b = live ? gm : batch - 1;
    const bool col = c < n;
    const unsigned group = NP == 32 ? FULL : (((1u << NP) - 1u) << base);
    const T* src = A + b * m * n;
    T a[MR], y[MR], v[NP];
    int bad = 0;
#pragma unroll
    for (int i = 0; i < MR; ++i) {
        T x = T(0);
        if (col && i < m) x = eig ? (i >= c ? src[i * n + c] : src[c * n + i]) : src[i * n + c];
        bad |= !(x - x == T(0));
        a[i] = x;
    }
#pragma unroll
    for (int j = 0; j < NP; ++j) v[j] = j == c ? T(1) : T(0);
    bad = (__ballot_sync(FULL, bad) & group) != 0;
    // Scaled by a power of two (see pow2_exp); the values are multiplied back at the end.
    T amax = T(0);
#pragma unroll
    for (int i = 0; i < MR; ++i) amax = fmax(amax, fabs(a[i]));
    for (int o = NP / 2; o; o >>= 1) amax = fmax(amax, __shfl_xor_sync(FULL, amax, o));
    const int ex = bad ? 0 : pow2_exp((double)amax);
    const T down = T(ldexp(1.0, -ex));
#pragma unroll
    for (int i = 0; i < MR; ++i) a[i] *= down;
    T shift = T(0);
    if (eig) {
        T s2 = T(0);
#pragma unroll
        for (int i = 0; i < MR; ++i) s2 += a[i] * a[i];
        for (int o = NP / 2; o; o >>= 1) s2 += __shfl_xor_sync(FULL, s2, o);
        shift = sqrt(s2);
#pragma unroll
        for (int i = 0; i < MR; ++i)
            if (i == c && col) a[i] += shift;
    }
    const T tol = sqrt(T(m)) * eps_t();
    int conv = n <= 1 || bad;
    for (int sweep = 0; sweep < max_sweeps; ++sweep) {
        if (__all_sync(FULL, conv)) break;
        int rot = 0;
        // ‖own column‖²: exact at the start of a sweep, then updated by each rotation (Rutishauser:
        // α − tγ, β + tγ), the partner's by a shuffle.
        T own2 = T(0);
#pragma unroll
        for (int i = 0; i < MR; ++i) own2 += a[i] * a[i];
        for (int r = 1; r < NP; ++r) {
            T g = T(0);
#pragma unroll
            for (int i = 0; i < MR; ++i) {
                y[i] = __shfl_xor_sync(FULL, a[i], r);
                g += a[i] * y[i];
            }
            const T oth2 = __shfl_xor_sync(FULL, own2, r);
            const int pc = c ^ r;
            const bool lo = c < pc;
            const T al = lo ? own2 : oth2, be = lo ? oth2 : own2;
            // |γ| > tol ‖a_p‖‖a_q‖ (false for a zero column: 0·inf is NaN).
            const bool go = !conv && col && pc < n && fabs(g) * fast_rsqrt(al) * fast_rsqrt(be) > tol;
            T s = T(0), tau = T(0), t = T(0);
            if (go) {
                rotation(al, be, g, s, tau, t);
                rot = 1;
            }
            own2 = lo ? al - t * g : be + t * g;  // unchanged without a rotation (t = 0)
            // Rutishauser's form: x ← x − s (y + τ x) for the lower index of the pair, y ← y + s (x − τ y)
            // for the upper one.
            const T sg = lo ? -s : s, st = s * tau;
#pragma unroll
            for (int i = 0; i < MR; ++i) a[i] = a[i] - st * a[i] + sg * y[i];
#pragma unroll
            for (int j = 0; j < NP; ++j) {
                const T o = __shfl_xor_sync(FULL, v[j], r);
                v[j] = v[j] - st * v[j] + sg * o;
            }
        }
        const unsigned rotated = __ballot_sync(FULL, rot) & group;  // one ballot for every lane
        if (!conv && rotated == 0) conv = 1;
    }
    T s2 = T(0);
#pragma unroll
    for (int i = 0; i < MR; ++i) s2 += a[i] * a[i];
    const T sig = bad ? nan_t() : sqrt(s2);
    const T key = eig ? sig - shift : sig;
    // Rank in the sorted order (descending singular values, ascending eigenvalues; NaN first / last).
    int rk = 0;
    for (int j = 0; j < NP; ++j) {
        const T kj = __shfl_sync(FULL, key, base + j);
        if (j < n && j != c) rk += before(kj, key, !eig) || (j < c && !before(key, kj, !eig));
    }
    const int zero = (__ballot_sync(FULL, col && !eig && sig <= T(0)) & group) != 0;
    if (!(live && col)) return;
    // The sign: the entry of largest magnitude (the first on ties) of U's column, or of V's where
    // there is no U column (eig, or σ = 0), is positive.
    const bool has_u = !eig && !(sig <= T(0));  // NaN included: its column comes out NaN
    T best = T(-1), at_val = T(0);
    if (has_u) {
#pragma unroll
        for (int i = 0; i < MR; ++i)
            if (i < m && fabs(a[i]) > best) { best = fabs(a[i]); at_val = a[i]; }
    } else {
#pragma unroll
        for (int i = 0; i < NP; ++i)
            if (i < n && fabs(v[i]) > best) { best = fabs(v[i]); at_val = v[i]; }
    }
    const T sign = at_val < T(0) ? T(-1) : T(1);
    S[b * n + rk] = key * T(ldexp(1.0, ex));
    if (U && !eig) {
        const T inv = has_u ? T(1) / sig : T(0);
        T* ud = U + b * m * n;
#pragma unroll
        for (int i = 0; i < MR; ++i)
            if (i < m) ud[i * n + rk] = has_u ? sign * a[i] * inv : T(0);
    }
    if (V) {
        T* vd = V + b * n * n;
#pragma unroll
        for (int i = 0; i < NP; ++i)
            if (i < n) vd[i * n + rk] = bad ? nan_t() : sign * v[i];
    }
    if (c == 0) info[b] = (conv ? 0 : 1) | (zero ? 2 : 0);
}
#endif

#ifdef EIGH_BIG
// ---------------------------------------------------------------------------------------------
// Symmetric eigendecomposition of one matrix too large for one block, driven from cuda/linalg.rs
// (`eigh_large`), in a scratch the host lays out:
//  1. eb_scan_kernel finds the largest |entry| of A's lower triangle (and any NaN/Inf);
//     eb_copy_kernel writes F = A·2^-e, mirrored from the lower triangle (row-major, full).
//  2. Reduction to tridiagonal form A = Q T Qᵀ, blocked as LAPACK's sytrd/latrd: panels of EB_NB
//     columns, each factored by eb_panel_kernel (one cooperative launch, a grid barrier between
//     the phases of a column), then the trailing matrix loses V Wᵀ + W Vᵀ by two cuBLAS GEMMs.
//     Column j of the symmetric F is read as its row j (contiguous). Reflector j (H = I − τ v vᵀ,
//     v_{j+1} = 1, larfg's) is stored over row j: zeros at columns k0+1 .. j, 1 at j+1, v after,
//     so that a panel's rows k0 .. are the transposed unit-lower-trapezoidal V the back
//     transformation needs. T's diagonal and off-diagonal go to d, e (float64).
//  3. T's eigenproblem in float64 (the helpers above): splitting (eb_tsetup_kernel), bisection of
//     every eigenvalue of its unreduced block (eb_tbis_kernel, a group of lanes per eigenvalue),
//     ranks (eb_trank_kernel: ascending order, eigenvalues written), one twisted factorization per
//     eigenvector (eb_tvec_kernel, a thread each, the vector written straight into its column of
//     Z: row-major, so a warp's stores are coalesced), modified Gram–Schmidt inside clusters of
//     eigenvalues closer than ctol·‖T‖ (eb_tmgs_kernel, a warp per cluster), Z to T's precision.
//  4. V = Q Z by the panels' block reflectors, last to first (cuBLAS, the host), then
//     eb_finish_kernel: NaN outputs for a NaN/Inf input, and info.
// Defines: EB_NB (panel width, at most 32: a lane per panel column).

#define EB_T 512
#define EB_W (EB_T / 32)
#define EB_PS (1 + 2 * EB_NB)

// Grid-wide barrier of a cooperative launch (every block resident). `bar` counts arrivals (zeroed
// before the launch); `target` is this block's count of barriers passed times gridDim.x. Writes
// before the barrier are visible after it to reads that bypass L1 (__ldcg), which the panel
// kernel uses for everything another block writes.
__device__ __forceinline__ void eb_grid_sync(unsigned* bar, unsigned& target) {
    __syncthreads();
    target += gridDim.x;
    if (threadIdx.x == 0) {
        // Release (cumulative: the block's writes ordered before it by the barrier above) on
        // arrival, acquire on the polls; no separate fences.
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar) : "memory");
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
        } while (v < target);
    }
    __syncthreads();
}

// 16 bytes of global memory, past L1; their dot product with 16 bytes of shared memory.
typedef Vec<T, 16 / sizeof(T)> EbV;
__device__ __forceinline__ EbV eb_ld16(const T* x) {
    EbV r;
    if constexpr (sizeof(T) == 4) {
        const float4 a = __ldcg(reinterpret_cast<const float4*>(x));
        r.v[0] = a.x;
        r.v[1] = a.y;
        r.v[2] = a.z;
        r.v[3] = a.w;
    } else {
        const double2 a = __ldcg(reinterpret_cast<const double2*>(x));
        r.v[0] = a.x;
        r.v[1] = a.y;
    }
    return r;
}
__device__ __forceinline__ T eb_dotv(const EbV& a, const T* y) {
    const EbV b = *reinterpret_cast<const EbV*>(y);
    T s = T(0);
#pragma unroll
    for (int u = 0; u < (int)(16 / sizeof(T)); ++u) s += a.v[u] * b.v[u];
    return s;
}

// Sum over the block (every thread gets it); `red` holds EB_W values.
__device__ __forceinline__ T eb_block_sum(T v, T* red) {
    v = warp_sum(v);
    __syncthreads();  // earlier readers of red are done
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    T s = T(0);
#pragma unroll
    for (int i = 0; i < EB_W; ++i) s += red[i];
    return s;
}

// ctl words of the scratch: [0] the panel barrier, [1] non-finite input flag, [2], [3] info flags,
// [4..5] the largest |entry| (float64 bits, atomicMax).
extern "C" __global__ void __launch_bounds__(256) eb_scan_kernel(const T* __restrict__ A, long long n,
                                                                 unsigned* ctl) {
    double m = 0.0;
    int bad = 0;
    for (long long i = blockIdx.y; i < n; i += gridDim.y) {
        const T* row = A + i * n;
        for (long long j = blockIdx.x * 256LL + threadIdx.x; j <= i; j += 256LL * gridDim.x) {
            const T x = row[j];
            bad |= !(x - x == T(0));
            m = fmax(m, fabs((double)x));
        }
    }
    for (int o = 16; o; o >>= 1) {
        m = fmax(m, __shfl_xor_sync(0xffffffffu, m, o));
        bad |= __shfl_xor_sync(0xffffffffu, bad, o);
    }
    if ((threadIdx.x & 31) == 0) {
        if (m > 0.0) atomicMax(reinterpret_cast<unsigned long long*>(ctl + 4), (unsigned long long)__double_as_longlong(m));
        if (bad) atomicOr(ctl + 1, 1u);
    }
}

__device__ __forceinline__ int eb_exp(const unsigned* ctl) {
    return pow2_exp(__longlong_as_double((long long)*reinterpret_cast<const unsigned long long*>(ctl + 4)));
}

// F = A·2^-e mirrored from A's lower triangle: a 32×32 tile pair per block (tile (bi, bj) with
// bi >= bj and its transpose), through shared memory so both sides are coalesced.
extern "C" __global__ void __launch_bounds__(256) eb_copy_kernel(const T* __restrict__ A, T* __restrict__ F,
                                                                 long long n, const unsigned* ctl) {
    __shared__ T tile[32][33];
    const int bi = blockIdx.y, bj = blockIdx.x;
    if (bi < bj) return;
    const T scale = T(ldexp(1.0, -eb_exp(ctl)));
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    for (int y = ty; y < 32; y += 8) {
        const long long i = bi * 32LL + y, j = bj * 32LL + tx;
        tile[y][tx] = (i < n && j < n) ? A[i * n + j] * scale : T(0);
    }
    __syncthreads();
    for (int y = ty; y < 32; y += 8) {
        // Lower tile (bi, bj): entries on or below the diagonal from the tile, above it mirrored.
        long long i = bi * 32LL + y, j = bj * 32LL + tx;
        if (i < n && j < n) F[i * n + j] = (bi != bj || tx <= y) ? tile[y][tx] : tile[tx][y];
        if (bi != bj) {
            i = bj * 32LL + y;
            j = bi * 32LL + tx;
            if (i < n && j < n) F[i * n + j] = tile[tx][y];
        }
    }
}

// Columns k0 .. ke-1 of the reduction (see above), on gridDim.x resident blocks. Block b owns the
// rows (and, by symmetry, the columns) [rb, re) of rows k0 .. n-1, at most EB_RB of them: it
// updates their entries of column j, multiplies their rows of the trailing matrix by v and writes
// their entries of w, v and the finished W. Per column two phases, each ended by a grid barrier,
// each issuing its global loads together up front (one round trip, not one per step):
//  1. the column's own rows updated by the panel so far (a = F_j − V wⱼ − W vⱼ, with wⱼ, vⱼ row j
//     of W and V; thread (i, g) takes row i and panel columns g, g + EB_TG, ..., keeping them in
//     registers for the partial sums), d_j; partial sums of ‖a'‖², Wᵀa' and Vᵀa' (a' = a below
//     j+1);
//  2. the symmetric product F a' of this block's rows (a warp per row), then larfg from the
//     totals (every block alike): v = sc·a' with v_{j+1} = 1, so F v = sc·F a' + F_{j+1}, and
//     w = τ(F v − V (Wᵀv) − W (Vᵀv)) with Wᵀv = sc·Wᵀa' + W_{j+1} (V's alike); w is finished
//     (w −= (τ/2)(wᵀv) v) when the next phase 1 has the total of wᵀv.
// VW (3·EB_NB × n): rows 0 .. EB_NB and 2·EB_NB .. hold the panel's v (columns past j), rows
// EB_NB .. its w, so that one GEMM with k = 2·EB_NB makes the trailing update. part
// (gridDim.x × EB_PS partial sums), part2 (gridDim.x: wᵀv), avec (n: a, alpha at j+1).
#define EB_RB 64
#define EB_TG (EB_T / EB_RB)
#define EB_TK (EB_NB / EB_TG)
extern "C" __global__ void __launch_bounds__(EB_T) eb_panel_kernel(T* F, long long n, int k0, int ke, T* VW,
                                                                   double* dd, double* ee, T* taus, T* avec,
                                                                   T* part, T* part2, unsigned* ctl, int cached) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int G = gridDim.x, b = blockIdx.x, tid = threadIdx.x, lane = tid & 31, wp = tid >> 5;
    const long long rpb = (n - k0 + G - 1) / G;
    const long long rb = k0 + b * rpb, re = min(n, rb + rpb);
    T* W = VW + EB_NB * n;
    // Shared: vs (n: a' of the current column), own a values (EB_RB), row j of V and W, row j+1
    // of V and W (EB_NB each), the reduction scratch (EB_T), totals (EB_PS), block sums (EB_W),
    // then with `cached` this block's rows of F from column cb on (the panel never changes the
    // trailing matrix its products read; the host sizes the grid so they fit).
    T* vs = reinterpret_cast<T*>(smem_raw);
    T* own = vs + ((n + 3) & ~3LL);
    T* vj = own + EB_RB;
    T* wj = vj + EB_NB;
    T* v1 = wj + EB_NB;
    T* w1 = v1 + EB_NB;
    T* scr = w1 + EB_NB;
    T* tot = scr + EB_T;
    T* red = tot + ((EB_PS + 3) & ~3);
    T* cache = red + EB_W;
    const long long cb = k0 & ~3LL, ldc = ((n - cb) + 3) & ~3LL;
    if (cached) {
        constexpr int VC = 16 / sizeof(T);
        const long long per = ldc / VC;  // 16-byte chunks per row (n % 4 == 0 when cached)
        for (long long e = tid; e < (re - rb) * per; e += EB_T) {
            const long long i = e / per, q = e % per;
            *reinterpret_cast<EbV*>(cache + i * ldc + q * VC) = eb_ld16(F + (rb + i) * n + cb + q * VC);
        }
        __syncthreads();
    }
    unsigned target = 0;
#ifdef EB_PROFILE
    // Nanoseconds per phase summed over the panel's columns (block 0, thread 0), added to
    // part[248·EB_PS + 1 .. 7] (rows past any grid's) for scripts/time_eigh_large.py.
    unsigned long long pt[8], prev_t = 0;
    float pacc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#define EB_MARK(i)                                                                      \
    do {                                                                                \
        unsigned long long now_;                                                        \
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now_));                        \
        if ((i) > 0) pacc[(i)] += (float)(now_ - prev_t);                               \
        prev_t = now_;                                                                  \
        (void)pt;                                                                       \
    } while (0)
#else
#define EB_MARK(i) ((void)0)
#endif
    const int ri = tid % EB_RB, tg = tid / EB_RB;
    const long long r1 = rb + ri;  // phase 1's row
    for (int j = k0; j < ke; ++j) {
        EB_MARK(0);
        const int c = j - k0;
        // ---- Phase 1: every load first.
        constexpr int VEC = 16 / sizeof(T);
        const long long s0 = (j + 1) & ~(long long)(VEC - 1);
        const bool vec = (n % VEC) == 0;
        const int nv = (int)((n - s0) / VEC);
        const long long rs = max(rb, (long long)j + 1);  // phase 2's first row
        const bool mine = r1 >= j && r1 < re;
        const T p2 = (c > 0 && tid < G) ? __ldcg(part2 + tid) : T(0);
        const T tprev = c > 0 ? __ldcg(taus + j - 1) : T(0);
        if (tid < c) {
            vj[tid] = __ldcg(F + (k0 + tid) * n + j);
            wj[tid] = __ldcg(W + tid * n + j);
        }
        T vr[EB_TK], wr[EB_TK];
#pragma unroll
        for (int k = 0; k < EB_TK; ++k) {
            const int t = tg + k * EB_TG;
            const bool in = mine && t < c;
            vr[k] = in ? __ldcg(F + (k0 + t) * n + r1) : T(0);
            wr[k] = in ? __ldcg(W + t * n + r1) : T(0);
        }
        const int tl = (c - 1) % EB_TG;  // the thread group holding column c-1 (W to finish)
        const T vprev = (mine && c > 0 && tg == tl) ? __ldcg(F + (long long)(j - 1) * n + r1) : T(0);
        const T fj = (mine && tg == 0) ? __ldcg(F + (long long)j * n + r1) : T(0);
        const T kk = T(0.5) * tprev * eb_block_sum(p2, red);  // (τ/2)(wᵀv) of column j-1; syncs vj, wj
        EB_MARK(1);
        T s = T(0);
#pragma unroll
        for (int k = 0; k < EB_TK; ++k) {
            const int t = tg + k * EB_TG;
            if (t < c) {
                if (t == c - 1) {
                    wr[k] -= kk * vprev;
                    if (mine && r1 > j) W[t * n + r1] = wr[k];
                }
                s += vr[k] * (t == c - 1 ? wj[t] - kk : wj[t]) + wr[k] * vj[t];  // v_{j-1} at j is 1
            }
        }
        scr[tid] = s;
        __syncthreads();
        EB_MARK(2);
        if (tg == 0 && mine) {
            T a = fj;
#pragma unroll
            for (int g = 0; g < EB_TG; ++g) a -= scr[g * EB_RB + ri];
            own[ri] = a;
            if (r1 == j) dd[j] = (double)a;
            else avec[r1] = a;
        }
        if (j == n - 1) {
            if (b == 0 && tid == 0) taus[j] = T(0);
            break;
        }
        __syncthreads();
        // Partial sums over this block's rows below j+1: ‖a'‖² (group 0), Wᵀa' and Vᵀa' (each
        // thread its columns' products, summed over the rows: a warp holds 32 rows of one group).
        {
            const T a = (mine && r1 >= j + 2) ? own[ri] : T(0);
            T sq = warp_sum(tg == 0 ? a * a : T(0));
            T pk[EB_TK], qk[EB_TK];
#pragma unroll
            for (int k = 0; k < EB_TK; ++k) {
                const bool live = tg + k * EB_TG < c;  // uniform over the warp
                pk[k] = live ? warp_sum(wr[k] * a) : T(0);
                qk[k] = live ? warp_sum(vr[k] * a) : T(0);
            }
            // Warps 2g and 2g + 1 hold group g (EB_RB = 64 rows).
            if (lane == 0) {
                scr[wp] = sq;
#pragma unroll
                for (int k = 0; k < EB_TK; ++k) {
                    scr[EB_W + wp * EB_TK + k] = pk[k];
                    scr[EB_W + EB_W * EB_TK + wp * EB_TK + k] = qk[k];
                }
            }
            __syncthreads();
            if (tid == 0) part[b * EB_PS] = scr[0] + scr[1];
            if (tid < EB_NB) {
                const int t = tid, g = t % EB_TG, k = t / EB_TG;
                const T* ps = scr + EB_W;
                const T* qs = scr + EB_W + EB_W * EB_TK;
                part[b * EB_PS + 1 + t] = t < c ? ps[(2 * g) * EB_TK + k] + ps[(2 * g + 1) * EB_TK + k] : T(0);
                part[b * EB_PS + 1 + EB_NB + t] = t < c ? qs[(2 * g) * EB_TK + k] + qs[(2 * g + 1) * EB_TK + k] : T(0);
            }
        }
        EB_MARK(3);
        eb_grid_sync(ctl, target);
        EB_MARK(4);
        // ---- Phase 2: every load first (partial sums, a', rows j+1 of V and W).
        const int ng = EB_T / EB_PS, idx = tid % EB_PS, grp = tid / EB_PS;
        T ps = T(0);
        if (grp < ng)
            for (int g = grp; g < G; g += ng) ps += __ldcg(part + g * EB_PS + idx);
        const T alpha = __ldcg(avec + j + 1);
        if (tid < c) {
            v1[tid] = __ldcg(F + (k0 + tid) * n + j + 1);
            w1[tid] = __ldcg(W + tid * n + j + 1);
        }
        for (long long s = s0 + tid; s < n; s += EB_T) vs[s] = s <= j + 1 ? T(0) : __ldcg(avec + s);
        scr[tid] = ps;
        __syncthreads();
        // F a' for this block's rows below j: a warp per row (at most EB_RB / EB_W of them each),
        // with the row's V and W entries (lane t: column t) and its entry j+1.
        constexpr int RW = EB_RB / EB_W;
        T acc[RW], cv[RW], cw[RW], f1[RW];
#pragma unroll
        for (int q = 0; q < RW; ++q) {
            const long long r = rs + wp + q * EB_W;
            acc[q] = cv[q] = cw[q] = f1[q] = T(0);
            if (r >= re) continue;
            const T* row = F + r * n;
            if (lane < c) {
                cv[q] = __ldcg(F + (k0 + lane) * n + r);
                cw[q] = __ldcg(W + lane * n + r);
            }
            T x = T(0);
            if (cached) {
                const T* crow = cache + (r - rb) * ldc - cb;  // crow[s] = F[r][s] for s >= cb
                f1[q] = crow[j + 1];
#pragma unroll 4
                for (int i = lane; i < nv; i += 32) {
                    const EbV a = *reinterpret_cast<const EbV*>(crow + s0 + i * VEC);
                    x += eb_dotv(a, vs + s0 + i * VEC);
                }
            } else if (vec) {
                f1[q] = __ldcg(row + j + 1);
#pragma unroll 4
                for (int i = lane; i < nv; i += 32) x += eb_dotv(eb_ld16(row + s0 + i * VEC), vs + s0 + i * VEC);
            } else {
                f1[q] = __ldcg(row + j + 1);
#pragma unroll 4
                for (long long i = s0 + lane; i < n; i += 32) x += __ldcg(row + i) * vs[i];
            }
            acc[q] = warp_sum(x);
        }
        EB_MARK(5);
        // Totals (sum of the groups' partial sums), then larfg, alike in every block.
        if (tid < EB_PS) {
            T x = T(0);
            for (int q = 0; q < ng; ++q) x += scr[q * EB_PS + tid];
            tot[tid] = x;
        }
        __syncthreads();
        T tau, beta, sc;
        larfg(alpha, tot[0], tau, beta, sc);
        if (b == 0 && tid == 0) {
            ee[j] = (double)beta;
            taus[j] = tau;
        }
        const T pl = lane < c ? sc * tot[1 + lane] + w1[lane] : T(0);          // (Wᵀv)_lane
        const T ql = lane < c ? sc * tot[1 + EB_NB + lane] + v1[lane] : T(0);  // (Vᵀv)_lane
        T wv = T(0);
#pragma unroll
        for (int q = 0; q < RW; ++q) {
            const long long r = rs + wp + q * EB_W;
            if (r >= re) continue;  // uniform over the warp
            const T corr = warp_sum(cv[q] * pl + cw[q] * ql);
            if (lane == 0) {
                const T w = tau * (sc * acc[q] + f1[q] - corr);
                const T v = r == j + 1 ? T(1) : sc * vs[r];
                W[c * n + r] = w;
                wv += w * v;
            }
        }
        // v over row j of F, this block's columns past j (the zeros before it, and VW's copies,
        // after the last column: nothing reads them during the panel, and fewer stores before a
        // barrier make its release quicker).
        for (long long r = max(rb, (long long)j + 1) + tid; r < re; r += EB_T)
            F[(long long)j * n + r] = r == j + 1 ? T(1) : sc * vs[r];
        EB_MARK(6);
        wv = eb_block_sum(wv, red);
        if (tid == 0) part2[b] = wv;
        eb_grid_sync(ctl, target);
        EB_MARK(7);
    }
#ifdef EB_PROFILE
    if (b == 0 && tid == 0)
        for (int i = 1; i < 8; ++i) atomicAdd(reinterpret_cast<float*>(part) + 248 * EB_PS + i, pacc[i]);
#endif
    // Each reflector's row of F gets zeros at columns 1 .. j (any run of consecutive reflectors is
    // then a unit lower-trapezoidal V; block 0 takes the columns before the panel), and VW its
    // two copies of v (this block's columns).
    for (int j = k0; j < ke && j < n - 1; ++j) {
        const int c = j - k0;
        for (long long r = max(rb, 1LL) + tid; r < re; r += EB_T) {
            if (r <= j) {
                F[(long long)j * n + r] = T(0);
            } else {
                const T v = __ldcg(F + (long long)j * n + r);
                VW[c * n + r] = v;
                VW[(2 * EB_NB + c) * n + r] = v;
            }
        }
        if (b == 0)
            for (long long r = 1 + tid; r < rb; r += EB_T) F[(long long)j * n + r] = T(0);
    }
    // Finish the last column's w on this block's rows past the panel (the trailing update's).
    const int jl = ke - 1;
    if (jl < n - 1) {
        const T p2 = tid < G ? __ldcg(part2 + tid) : T(0);
        const T kk = T(0.5) * __ldcg(taus + jl) * eb_block_sum(p2, red);
        const int c = jl - k0;
        for (long long r = max(rb, (long long)ke) + tid; r < re; r += EB_T)
            W[c * n + r] = __ldcg(W + c * n + r) - kk * __ldcg(F + (long long)jl * n + r);
    }
}

// Splitting of T (an off-diagonal at most n·eps₆₄·‖T‖ becomes zero), ‖T‖, pivmin and max(1, max e²)
// into tn[0..2], and float32 copies of d and e into d32, d32 + n (one block of 1024 threads).
extern "C" __global__ void __launch_bounds__(1024) eb_tsetup_kernel(const double* __restrict__ dd, double* ee,
                                                                    long long n, double* tn, float* d32) {
    __shared__ double red[32];
    double m = 0.0;
    for (long long i = threadIdx.x; i < n; i += 1024) {
        const double el = i > 0 ? fabs(ee[i - 1]) : 0.0, er = i + 1 < n ? fabs(ee[i]) : 0.0;
        m = fmax(m, fabs(dd[i]) + el + er);
    }
    for (int o = 16; o; o >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    double tnorm = 0.0;
    for (int i = 0; i < 32; ++i) tnorm = fmax(tnorm, red[i]);
    __syncthreads();
    const double eps = 2.220446049250313e-16;
    double e2 = 0.0;
    for (long long i = threadIdx.x; i + 1 < n; i += 1024) {
        if (fabs(ee[i]) <= (double)n * eps * tnorm) ee[i] = 0.0;
        e2 = fmax(e2, ee[i] * ee[i]);
    }
    if (threadIdx.x == 0 && n > 0) ee[n - 1] = 0.0;
    for (int o = 16; o; o >>= 1) e2 = fmax(e2, __shfl_xor_sync(0xffffffffu, e2, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = e2;
    __syncthreads();
    if (threadIdx.x == 0) {
        double x = 0.0;
        for (int i = 0; i < 32; ++i) x = fmax(x, red[i]);
        tn[0] = tnorm;
        tn[1] = 2.2250738585072014e-308 * fmax(1.0, x);
        tn[2] = fmax(1.0, x);
    }
    __syncthreads();  // ee's zeros and ee[n - 1] written
    for (long long i = threadIdx.x; i < n; i += 1024) {
        d32[i] = (float)dd[i];
        d32[n + i] = (float)ee[i];
    }
}

// The unreduced block [s, t] of T holding index j.
__device__ __forceinline__ void eb_block_of(const double* ee, long long n, long long j, int& s, int& t) {
    s = (int)j;
    t = (int)j;
    while (s > 0 && ee[s - 1] != 0.0) --s;
    while (t + 1 < n && ee[t] != 0.0) ++t;
}

// Eigenvalue j - s of T's block [s, t] holding j, by multisection over G lanes (a power of two
// up to 32; more lanes, fewer steps: the steps' recurrences are latency-bound until the GPU
// fills), into lam[j]: in float32 (d32: T's float32 copy) to within 16·eps₃₂·‖T‖ (Sturm counts in
// floating point are exact for a matrix within a few eps of T entry by entry), then in float64
// from there — or, where float64 Sturm counts do not confirm that bracket, from T's Gershgorin
// interval.
extern "C" __global__ void __launch_bounds__(256) eb_tbis_kernel(const double* __restrict__ dd,
                                                                 const double* __restrict__ ee, long long n,
                                                                 const double* __restrict__ tn,
                                                                 const float* __restrict__ d32,
                                                                 double* __restrict__ lam, int G) {
    const long long j = (blockIdx.x * 256LL + threadIdx.x) / G;
    const int gl = threadIdx.x % G, base = threadIdx.x & 31 & ~(G - 1);
    const unsigned mask = (G == 32 ? 0xffffffffu : (1u << G) - 1u) << base;
    if (j >= n) return;  // whole groups leave together (n·G threads, groups aligned)
    int s, t;
    eb_block_of(ee, n, j, s, t);
    const int k = (int)j - s;
    const double eps = 2.220446049250313e-16;
    double l = dd[s];
    if (s < t) {
        const float eps32 = 1.1920929e-07f;
        const float l32 = bisect<float>(d32, d32 + n, s, t, k, (float)tn[0], 1.17549435e-38f * (float)tn[2], eps32, gl,
                                        G, mask);
        const double delta = 16.0 * (double)eps32 * tn[0];
        const double lo = (double)l32 - delta, hi = (double)l32 + delta;
        const int cnt = gl < 2 ? sturm_count<double>(dd, ee, s, t, gl == 0 ? lo : hi, tn[1]) : 0;
        const int c0 = __shfl_sync(mask, cnt, base), c1 = __shfl_sync(mask, cnt, base + 1);
        l = (c0 <= k && c1 > k) ? bisect_in<double>(dd, ee, s, t, k, lo, hi, tn[0], tn[1], eps, gl, G, mask)
                                : bisect<double>(dd, ee, s, t, k, tn[0], tn[1], eps, gl, G, mask);
    }
    if (gl == 0) lam[j] = l;
}

// rank[j] = the position of lam[j] in ascending order (ties by index); L[rank] = lam·2^e.
extern "C" __global__ void __launch_bounds__(256) eb_trank_kernel(const double* __restrict__ lam, long long n,
                                                                  int* __restrict__ rank, T* __restrict__ L,
                                                                  const unsigned* ctl) {
    __shared__ double tile[256];
    const long long j = blockIdx.x * 256LL + threadIdx.x;
    const double x = j < n ? lam[j] : 0.0;
    int r = 0;
    for (long long i0 = 0; i0 < n; i0 += 256) {
        __syncthreads();
        if (i0 + threadIdx.x < n) tile[threadIdx.x] = lam[i0 + threadIdx.x];
        __syncthreads();
        const int m = (int)min(256LL, n - i0);
        for (int q = 0; q < m; ++q) {
            const double y = tile[q];
            r += (y < x) || (y == x && i0 + q < j);
        }
    }
    if (j < n) {
        rank[j] = r;
        L[r] = T(ldexp(x, eb_exp(ctl)));
    }
}

// Row-major column access to Z (n × n doubles): element i of column `col`.
struct EbColumn {
    double* p;
    long long ld;
    __device__ __forceinline__ double& operator[](int i) const { return p[(long long)i * ld]; }
};

// twisted_vector for a column of global memory (one thread per vector, so every load it waits
// for is a full memory latency): the passes that read back what an earlier pass stored load
// EB_PF entries ahead. The vector is left unnormalized (z_r = 1); returns ‖z‖² (0 when not
// finite).
#define EB_PF 32
template <class Z>
__device__ double twisted_big(const double* __restrict__ d, const double* __restrict__ e, int s, int t, double lam,
                              double tiny, Z z) {
    if (s == t) {
        z[s] = 1.0;
        return 1.0;
    }
    twisted_down(d, e, s, t, lam, tiny, z);
    // Progressive pivots D- and the twist index r of least |γ_r|.
    double Dm = tri_fix(d[t] - lam, tiny), gr = z[t];
    int r = t;
    for (int i0 = t - 1; i0 >= s; i0 -= EB_PF) {
        double buf[EB_PF];
#pragma unroll
        for (int k = 0; k < EB_PF; ++k) buf[k] = i0 - k >= s ? z[i0 - k] : 0.0;
#pragma unroll
        for (int k = 0; k < EB_PF; ++k) {
            const int i = i0 - k;
            if (i >= s) {
                const double q = e[i] * e[i] * rcp64(Dm);
                const double g = buf[k] - q;
                if (fabs(g) < fabs(gr)) {
                    gr = g;
                    r = i;
                }
                Dm = tri_fix(d[i] - lam - q, tiny);
            }
        }
    }
    // D- again, stored below r (where D+ is no longer needed).
    twisted_up_below(d, e, t, r, lam, tiny, z);
    z[r] = 1.0;
    double nrm = 1.0, prev = 1.0;
    for (int i0 = r + 1; i0 <= t; i0 += EB_PF) {
        double buf[EB_PF];
#pragma unroll
        for (int k = 0; k < EB_PF; ++k) buf[k] = i0 + k <= t ? z[i0 + k] : 1.0;
#pragma unroll
        for (int k = 0; k < EB_PF; ++k) {
            const int i = i0 + k;
            if (i <= t) {
                prev = -e[i - 1] * prev * rcp64(buf[k]);
                z[i] = prev;
                nrm += prev * prev;
            }
        }
    }
    prev = 1.0;
    for (int i0 = r - 1; i0 >= s; i0 -= EB_PF) {
        double buf[EB_PF];
#pragma unroll
        for (int k = 0; k < EB_PF; ++k) buf[k] = i0 - k >= s ? z[i0 - k] : 1.0;
#pragma unroll
        for (int k = 0; k < EB_PF; ++k) {
            const int i = i0 - k;
            if (i >= s) {
                prev = -e[i] * prev * rcp64(buf[k]);
                z[i] = prev;
                nrm += prev * prev;
            }
        }
    }
    return nrm < 1e300 ? nrm : 0.0;
}

// The eigenvector of eigenvalue j into column rank[j] of Z (zeros outside its block),
// unnormalized; zsc[rank[j]] = 1/‖z‖. A vector that is not finite sets ctl[2].
extern "C" __global__ void __launch_bounds__(128) eb_tvec_kernel(const double* __restrict__ dd,
                                                                 const double* __restrict__ ee, long long n,
                                                                 const double* __restrict__ tn,
                                                                 const double* __restrict__ lam,
                                                                 const int* __restrict__ rank, double* Z,
                                                                 double* __restrict__ zsc, unsigned* ctl) {
    const long long j = blockIdx.x * 128LL + threadIdx.x;
    if (j >= n) return;
    int s, t;
    eb_block_of(ee, n, j, s, t);
    const int col = rank[j];
    const EbColumn z{Z + col, n};
    for (int i = 0; i < s; ++i) z[i] = 0.0;
    for (long long i = t + 1; i < n; ++i) z[(int)i] = 0.0;
    const double nrm = twisted_big(dd, ee, s, t, lam[j], 2.220446049250313e-16 * tn[0], z);
    if (!(nrm > 0.0)) atomicOr(ctl + 2, 1u);
    zsc[col] = nrm > 0.0 ? 1.0 / sqrt(nrm) : 0.0;
}

// Modified Gram–Schmidt over each cluster (eigenvalues of one block with consecutive gaps at most
// ctol·‖T‖), a warp per cluster (the warp of its first index), its vectors normalized first. A
// vector losing more than 1e-3 of its norm (eigenvalues equal to float64 precision) sets ctl[2];
// a cluster of more than EB_CLUSTER_MAX is left as it is and sets ctl[3] (the caller
// orthogonalizes such clusters of the final vectors by QR).
#define EB_CLUSTER_MAX 16
extern "C" __global__ void __launch_bounds__(256) eb_tmgs_kernel(const double* __restrict__ ee, long long n,
                                                                 const double* __restrict__ tn,
                                                                 const double* __restrict__ lam,
                                                                 const int* __restrict__ rank, double* Z,
                                                                 double* zsc, double ctol, unsigned* ctl) {
    const long long j = (blockIdx.x * 256LL + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (j + 1 >= n) return;
    const double tol = ctol * tn[0];
    // j and j + 1 share a block of T when e_j is not zero (blocks end at zeros).
    const bool head = j == 0 || ee[j - 1] == 0.0 || lam[j] - lam[j - 1] > tol;
    if (!head || ee[j] == 0.0 || lam[j + 1] - lam[j] > tol) return;
    int s, t;
    eb_block_of(ee, n, j, s, t);
    long long k = j + 1;
    while (k + 1 <= t && lam[k + 1] - lam[k] <= tol) ++k;
    if (k - j + 1 > EB_CLUSTER_MAX) {  // too costly for one warp over strided columns: left to the caller
        if (lane == 0) atomicOr(ctl + 3, 1u);
        return;
    }
    for (long long q = j; q <= k; ++q) {
        double* zq = Z + rank[q];
        const double sc = zsc[rank[q]];
        for (long long i = s + lane; i <= t; i += 32) zq[i * n] *= sc;
    }
    __syncwarp();
    if (lane == 0)
        for (long long q = j; q <= k; ++q) zsc[rank[q]] = 1.0;
    for (long long q = j + 1; q <= k; ++q) {
        double* zq = Z + rank[q];
        for (long long p = j; p < q; ++p) {
            const double* zp = Z + rank[p];
            double dot = 0.0;
            for (long long i = s + lane; i <= t; i += 32) dot += zq[i * n] * zp[i * n];
            dot = warp_sum_d(dot);
            for (long long i = s + lane; i <= t; i += 32) zq[i * n] -= dot * zp[i * n];
        }
        double nn = 0.0;
        for (long long i = s + lane; i <= t; i += 32) nn += zq[i * n] * zq[i * n];
        nn = warp_sum_d(nn);
        if (!(nn >= 1e-6)) {
            if (lane == 0) atomicOr(ctl + 2, 1u);
            nn = 1.0;
        }
        const double inv = 1.0 / sqrt(nn);
        for (long long i = s + lane; i <= t; i += 32) zq[i * n] *= inv;
        __syncwarp();
    }
}

// V = Z with each column scaled by zsc, in T's precision (float64 outputs: Z is V, in place).
extern "C" __global__ void __launch_bounds__(256) eb_tconv_kernel(const double* Z, T* V, long long n,
                                                                  const double* __restrict__ zsc) {
    for (long long e = blockIdx.x * 256LL + threadIdx.x; e < n * n; e += 256LL * gridDim.x) V[e] = T(Z[e] * zsc[e % n]);
}

// NaN outputs for a non-finite input; info: 2 where T's eigenvectors could not be made
// orthogonal (ctl[2]), 4 where a cluster was left to the caller (ctl[3]), else 0. V is null for
// eigenvalues only.
extern "C" __global__ void __launch_bounds__(256) eb_finish_kernel(T* __restrict__ L, T* __restrict__ V, long long n,
                                                                   const unsigned* ctl, int* info) {
    const bool bad = ctl[1] != 0;
    if (blockIdx.x == 0 && threadIdx.x == 0) *info = bad ? 0 : (ctl[2] ? 2 : 0) | (ctl[3] ? 4 : 0);
    if (!bad) return;
    for (long long e = blockIdx.x * 256LL + threadIdx.x; e < n * n; e += 256LL * gridDim.x) {
        if (V) V[e] = nan_t();
        if (e < n) L[e] = nan_t();
    }
}
#endif
