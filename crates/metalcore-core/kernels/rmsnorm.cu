// rmsnorm.cu — RMSNorm forward and backward, optionally fused with a residual add.
//
// Math (per row of n elements; all accumulation in ACC):
//   forward:  s = x [+ residual] (rounded to T_X, written to residual_out),
//             r = 1/sqrt(mean(s^2) + eps),  x̂ = s*r,
//             y = (w + offset) * round_to<T_X>(x̂)   with CAST_BEFORE_W (HF Llama),
//             y = (w + offset) * x̂                  otherwise (HF Gemma), rounded once to T_Y.
//   backward: g = dy*(w + offset),  dx = r*(g - x̂*mean(g*x̂)) [+ d_residual_out],
//             dw = sum over rows of dy*x̂ (x̂ rounded as in forward), via per-group partials
//             [P][n] in ACC and a column reduction (rmsnorm_dw_reduce).
// References: Zhang & Sennrich, "Root Mean Square Layer Normalization" (2019); the HF transformers
// LlamaRMSNorm / GemmaRMSNorm modules for the casting rules.
//
// Layout: a group of TPR threads owns one row; a block of BLOCK threads holds BLOCK/TPR groups and
// walks the rows grid-stride. Each thread owns the VEC-wide chunks lane, lane+TPR, ... of its row.
// CHUNKS > 0 keeps the row in registers (one read of each input); CHUNKS == 0 streams the row twice
// (for rows too long for registers; the second read is mostly served by L2).
//
// Compile-time parameters (-D): T_X T_W T_Y T_DY T_DX T_DR ACC VEC TPR BLOCK CHUNKS HAS_W HAS_RES
// HAS_RSTD CAST_BEFORE_W HAS_DW HAS_DRES.

#ifndef HAS_W
#define HAS_W 1
#endif
#ifndef HAS_RES
#define HAS_RES 0
#endif
#ifndef HAS_RSTD
#define HAS_RSTD 1
#endif
#ifndef HAS_DW
#define HAS_DW 1
#endif
#ifndef HAS_DRES
#define HAS_DRES 0
#endif

#ifndef MINB
#define MINB 1
#endif

typedef long long i64;
constexpr int RPB = BLOCK / TPR;  // rows per block per step

// (w + offset) for chunk k of this thread, or ones without a weight.
template <class W, int K>
__device__ __forceinline__ void weight_chunk(const W (&wraw)[K], int k, ACC offset, ACC (&wv)[VEC]) {
#if HAS_W
    unpack<T_W, VEC>(wraw[k], wv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) wv[i] += offset;
#else
#pragma unroll
    for (int i = 0; i < VEC; ++i) wv[i] = 1;
#endif
}

extern "C" __global__ void __launch_bounds__(BLOCK, MINB) rmsnorm_fwd(
    const T_X* __restrict__ x, i64 x_rs, const T_X* __restrict__ res, i64 res_rs,
    const T_W* __restrict__ w, T_Y* __restrict__ y, i64 y_rs, T_X* __restrict__ res_out, i64 ro_rs,
    ACC* __restrict__ rstd, i64 rows, int cols, ACC eps, ACC offset) {
    __shared__ ACC red[BLOCK / 32];
    const int group = threadIdx.x / TPR, lane = threadIdx.x % TPR;
    const int nvec = cols / VEC;
    const ACC inv_n = (ACC)1 / (ACC)cols;

    for (i64 base = (i64)blockIdx.x * RPB; base < rows; base += (i64)gridDim.x * RPB) {
        const i64 row = base + group;
        const bool valid = row < rows;
        const T_X* xr = x + row * x_rs;
        ACC ss = 0;
#if CHUNKS > 0
        Vec<T_X, VEC> v[CHUNKS];  // the row (x + residual, rounded to T_X), in storage type
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (valid && c < nvec) {
                v[k] = load_raw<T_X, VEC>(xr + c * VEC);
                ACC a[VEC];
                unpack<T_X, VEC>(v[k], a);
#if HAS_RES
                ACC t[VEC];
                load_vec<T_X, VEC>(res + row * res_rs + c * VEC, t);
#pragma unroll
                for (int i = 0; i < VEC; ++i) a[i] += t[i];
                v[k] = pack<T_X, VEC>(a);
                unpack<T_X, VEC>(v[k], a);
                store_raw<T_X, VEC>(res_out + row * ro_rs + c * VEC, v[k]);
#endif
#pragma unroll
                for (int i = 0; i < VEC; ++i) ss += a[i] * a[i];
            }
        }
#else
        for (int c = lane; valid && c < nvec; c += TPR) {
            ACC v[VEC];
            load_vec<T_X, VEC>(xr + c * VEC, v);
#if HAS_RES
            ACC t[VEC];
            load_vec<T_X, VEC>(res + row * res_rs + c * VEC, t);
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[i] = round_to<T_X>(v[i] + t[i]);
            store_vec<T_X, VEC>(res_out + row * ro_rs + c * VEC, v);
#endif
#pragma unroll
            for (int i = 0; i < VEC; ++i) ss += v[i] * v[i];
        }
#endif
        ss = group_sum<TPR>(ss, red);
        const ACC r = rsqrt_acc(ss * inv_n + eps);
#if HAS_RSTD
        if (valid && lane == 0) rstd[row] = r;
#endif
        if (!valid) continue;  // no barrier follows in this iteration
#if CHUNKS > 0
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (c < nvec) {
                ACC o[VEC], a[VEC];
                unpack<T_X, VEC>(v[k], a);
#if HAS_W
                ACC wv[VEC];
                load_vec<T_W, VEC>(w + c * VEC, wv);
#endif
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    ACC h = a[i] * r;
#if HAS_W
#if CAST_BEFORE_W
                    h = round_to<T_X>(h);
#endif
                    h *= wv[i] + offset;
#endif
                    o[i] = h;
                }
                store_vec<T_Y, VEC>(y + row * y_rs + c * VEC, o);
            }
        }
#else
        for (int c = lane; c < nvec; c += TPR) {
            ACC v[VEC], o[VEC];
#if HAS_RES
            load_vec<T_X, VEC>(res_out + row * ro_rs + c * VEC, v);
#else
            load_vec<T_X, VEC>(xr + c * VEC, v);
#endif
#if HAS_W
            ACC wv[VEC];
            load_vec<T_W, VEC>(w + c * VEC, wv);
#endif
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                ACC h = v[i] * r;
#if HAS_W
#if CAST_BEFORE_W
                h = round_to<T_X>(h);
#endif
                h *= wv[i] + offset;
#endif
                o[i] = h;
            }
            store_vec<T_Y, VEC>(y + row * y_rs + c * VEC, o);
        }
#endif
    }
}

// Gradient of x (and, through partials, of w). `partial` holds one ACC row of dw per group
// (gridDim.x * RPB rows); rmsnorm_dw_reduce sums them.
extern "C" __global__ void __launch_bounds__(BLOCK, MINB) rmsnorm_bwd(
    const T_DY* __restrict__ dy, i64 dy_rs, const T_X* __restrict__ x, i64 x_rs,
    const T_W* __restrict__ w, const ACC* __restrict__ rstd, const T_DR* __restrict__ dres, i64 dr_rs,
    T_DX* __restrict__ dx, i64 dx_rs, ACC* __restrict__ partial, i64 rows, int cols, ACC offset) {
    __shared__ ACC red[BLOCK / 32];
    const int group = threadIdx.x / TPR, lane = threadIdx.x % TPR;
    const int nvec = cols / VEC;
    const ACC inv_n = (ACC)1 / (ACC)cols;
    ACC* part = partial + ((i64)blockIdx.x * RPB + group) * cols;

#if CHUNKS > 0
    Vec<T_W, VEC> wraw[CHUNKS];  // this thread's weight chunks, in storage type (unused without HAS_W)
#if HAS_W
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
        const int c = lane + k * TPR;
        if (c < nvec) wraw[k] = load_raw<T_W, VEC>(w + c * VEC);
    }
#endif
#if HAS_DW
    ACC dwacc[CHUNKS][VEC];
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) dwacc[k][i] = 0;
    }
#endif
#else
#if HAS_DW
    for (int c = lane; c < nvec; c += TPR) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) part[c * VEC + i] = 0;
    }
#endif
#endif

    for (i64 base = (i64)blockIdx.x * RPB; base < rows; base += (i64)gridDim.x * RPB) {
        const i64 row = base + group;
        const bool valid = row < rows;
        const ACC r = valid ? rstd[row] : (ACC)0;
        ACC dot = 0;
#if CHUNKS > 0
        Vec<T_X, VEC> xraw[CHUNKS];
        Vec<T_DY, VEC> draw[CHUNKS];
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (valid && c < nvec) {
                xraw[k] = load_raw<T_X, VEC>(x + row * x_rs + c * VEC);
                draw[k] = load_raw<T_DY, VEC>(dy + row * dy_rs + c * VEC);
                ACC xh[VEC], dv[VEC], wv[VEC];
                unpack<T_X, VEC>(xraw[k], xh);
                unpack<T_DY, VEC>(draw[k], dv);
                weight_chunk(wraw, k, offset, wv);
#pragma unroll
                for (int i = 0; i < VEC; ++i) dot += dv[i] * wv[i] * (xh[i] * r);
            }
        }
#else
        for (int c = lane; valid && c < nvec; c += TPR) {
            ACC xv[VEC], dv[VEC], wl[VEC];
            load_vec<T_X, VEC>(x + row * x_rs + c * VEC, xv);
            load_vec<T_DY, VEC>(dy + row * dy_rs + c * VEC, dv);
#if HAS_W
            load_vec<T_W, VEC>(w + c * VEC, wl);
#else
#pragma unroll
            for (int i = 0; i < VEC; ++i) wl[i] = 1;
#endif
#pragma unroll
            for (int i = 0; i < VEC; ++i) dot += dv[i] * (HAS_W ? wl[i] + offset : wl[i]) * xv[i] * r;
        }
#endif
        dot = group_sum<TPR>(dot, red);
        if (!valid) continue;
        const ACC mean = dot * inv_n;
#if CHUNKS > 0
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (c < nvec) {
                ACC o[VEC], xh[VEC], dv[VEC], wv[VEC];
                unpack<T_X, VEC>(xraw[k], xh);
                unpack<T_DY, VEC>(draw[k], dv);
                weight_chunk(wraw, k, offset, wv);
#pragma unroll
                for (int i = 0; i < VEC; ++i) xh[i] *= r;
#if HAS_DRES
                ACC dr[VEC];
                load_vec<T_DR, VEC>(dres + row * dr_rs + c * VEC, dr);
#endif
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    o[i] = r * (dv[i] * wv[i] - xh[i] * mean);
#if HAS_DRES
                    o[i] += dr[i];
#endif
#if HAS_DW
#if CAST_BEFORE_W
                    dwacc[k][i] += dv[i] * round_to<T_X>(xh[i]);
#else
                    dwacc[k][i] += dv[i] * xh[i];
#endif
#endif
                }
                store_vec<T_DX, VEC>(dx + row * dx_rs + c * VEC, o);
            }
        }
#else
        for (int c = lane; c < nvec; c += TPR) {
            ACC xv[VEC], dv[VEC], wl[VEC], o[VEC];
            load_vec<T_X, VEC>(x + row * x_rs + c * VEC, xv);
            load_vec<T_DY, VEC>(dy + row * dy_rs + c * VEC, dv);
#if HAS_W
            load_vec<T_W, VEC>(w + c * VEC, wl);
#pragma unroll
            for (int i = 0; i < VEC; ++i) wl[i] += offset;
#else
#pragma unroll
            for (int i = 0; i < VEC; ++i) wl[i] = 1;
#endif
#if HAS_DRES
            ACC dr[VEC];
            load_vec<T_DR, VEC>(dres + row * dr_rs + c * VEC, dr);
#endif
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const ACC h = xv[i] * r;
                o[i] = r * (dv[i] * wl[i] - h * mean);
#if HAS_DRES
                o[i] += dr[i];
#endif
#if HAS_DW
#if CAST_BEFORE_W
                part[c * VEC + i] += dv[i] * round_to<T_X>(h);
#else
                part[c * VEC + i] += dv[i] * h;
#endif
#endif
            }
            store_vec<T_DX, VEC>(dx + row * dx_rs + c * VEC, o);
        }
#endif
    }

#if CHUNKS > 0 && HAS_DW
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
        const int c = lane + k * TPR;
        if (c < nvec) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) part[c * VEC + i] = dwacc[k][i];
        }
    }
#endif
}

// dw[col] = sum over p < P of partial[p][col]. Block: 32 columns x 16 slices of P.
extern "C" __global__ void __launch_bounds__(512) rmsnorm_dw_reduce(
    const ACC* __restrict__ partial, int P, int cols, T_W* __restrict__ dw) {
    __shared__ ACC red[16][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    ACC s = 0;
    if (col < cols)
        for (int p = threadIdx.y; p < P; p += 16) s += partial[(i64)p * cols + col];
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        ACC t = 0;
#pragma unroll
        for (int i = 0; i < 16; ++i) t += red[i][threadIdx.x];
        dw[col] = from_acc<T_W>(t);
    }
}
