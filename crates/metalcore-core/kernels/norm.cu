// norm.cu — RMSNorm and LayerNorm forward and backward, optionally fused with a residual add.
//
// Math (per row of n elements; all accumulation in ACC):
//   forward:  s = x [+ residual] (rounded to T_X, written to residual_out),
//             RMSNorm:   mu = 0,        r = 1/sqrt(mean(s^2) + eps)
//             LayerNorm: mu = mean(s),  r = 1/sqrt(mean((s - mu)^2) + eps)   (two passes, no
//                        cancellation from E[s^2] - E[s]^2)
//             x̂ = (s - mu)*r,
//             y = (w + offset) * round_to<T_X>(x̂)   with CAST_BEFORE_W (HF Llama RMSNorm),
//             y = (w + offset) * x̂ [+ b]            otherwise (HF Gemma, LayerNorm), rounded once.
//   backward: g = dy*(w + offset),
//             dx = r*(g - mean(g) - x̂*mean(g*x̂)) [+ d_residual_out]   (the mean(g) term: LayerNorm),
//             dw = sum over rows of dy*x̂ (x̂ rounded as in forward), db = sum over rows of dy, via
//             per-group partials [P][n] in ACC and a column reduction (norm_col_reduce).
// References: Ba, Kiros & Hinton, "Layer Normalization" (2016); Zhang & Sennrich, "Root Mean Square
// Layer Normalization" (2019); the HF transformers LlamaRMSNorm / GemmaRMSNorm modules for the
// casting rules.
//
// Layout: a group of TPR threads owns one row; a block of BLOCK threads holds BLOCK/TPR groups and
// walks the rows grid-stride. Each thread owns the VEC-wide chunks lane, lane+TPR, ... of its row.
// CHUNKS > 0 keeps the row in registers, in its storage type (one read of each input); CHUNKS == 0
// streams the row several times (for rows too long for registers; re-reads mostly hit L2).
//
// Compile-time parameters (-D): T_X T_W T_Y T_DY T_DX T_DR ACC VEC TPR BLOCK CHUNKS MINB LAYER HAS_W
// HAS_B HAS_RES HAS_RSTD CAST_BEFORE_W HAS_DW HAS_DB HAS_DRES.

#ifndef LAYER
#define LAYER 0
#endif
#ifndef HAS_W
#define HAS_W 1
#endif
#ifndef HAS_B
#define HAS_B 0
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
#ifndef HAS_DB
#define HAS_DB 0
#endif
#ifndef HAS_DRES
#define HAS_DRES 0
#endif
#ifndef MINB
#define MINB 1
#endif

typedef long long i64;
constexpr int RPB = BLOCK / TPR;  // rows per block per step

// (w + offset) from a raw weight chunk, or ones without a weight.
template <class W, int K>
__device__ __forceinline__ void weight_chunk(const W (&wraw)[K], int k, ACC offset, ACC (&wv)[VEC]) {
#if HAS_W
    unpack_elementwise<T_W, VEC>(wraw[k], wv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) wv[i] += offset;
#else
#pragma unroll
    for (int i = 0; i < VEC; ++i) wv[i] = 1;
#endif
}

// (w + offset) for VEC-chunk c, read from memory (streaming path), or ones without a weight.
__device__ __forceinline__ void weight_at(const T_W* __restrict__ w, int c, ACC offset, ACC (&wv)[VEC]) {
    const Vec<T_W, VEC> raw[1] = {HAS_W ? load_raw<T_W, VEC>(w + c * VEC) : Vec<T_W, VEC>{}};
    weight_chunk(raw, 0, offset, wv);
}

// y for VEC normalized values h = (s - mu) * r of chunk c.
__device__ __forceinline__ void finish_y(ACC (&h)[VEC], const T_W* __restrict__ w, const T_W* __restrict__ b, int c,
                                         ACC offset) {
#if HAS_W
    ACC wv[VEC];
    load_vec<T_W, VEC>(w + c * VEC, wv);
#endif
#if HAS_B
    ACC bv[VEC];
    load_vec<T_W, VEC>(b + c * VEC, bv);
#endif
#if HAS_W && CAST_BEFORE_W
    round_vec<T_X, VEC>(h);
#endif
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
#if HAS_W
        h[i] *= wv[i] + offset;
#endif
#if HAS_B
        h[i] += bv[i];
#endif
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK, MINB) norm_fwd(
    const T_X* __restrict__ x, i64 x_rs, const T_X* __restrict__ res, i64 res_rs, const T_W* __restrict__ w,
    const T_W* __restrict__ b, T_Y* __restrict__ y, i64 y_rs, T_X* __restrict__ res_out, i64 ro_rs,
    ACC* __restrict__ mean, ACC* __restrict__ rstd, i64 rows, int cols, ACC eps, ACC offset) {
    __shared__ ACC red[BLOCK / 32];
    const int group = threadIdx.x / TPR, lane = threadIdx.x % TPR;
    const int nvec = cols / VEC;
    const ACC inv_n = (ACC)1 / (ACC)cols;

    for (i64 base = (i64)blockIdx.x * RPB; base < rows; base += (i64)gridDim.x * RPB) {
        const i64 row = base + group;
        const bool valid = row < rows;
        const T_X* xr = x + row * x_rs;
        // The row as normalized (x + residual when fused), re-read by the streaming passes.
        const T_X* sr = HAS_RES ? res_out + row * ro_rs : xr;
        ACC acc = 0;  // sum of s (LayerNorm) or of s^2 (RMSNorm)
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
                for (int i = 0; i < VEC; ++i) acc += LAYER ? a[i] : a[i] * a[i];
            }
        }
#else
        for (int c = lane; valid && c < nvec; c += TPR) {
            ACC a[VEC];
            load_vec<T_X, VEC>(xr + c * VEC, a);
#if HAS_RES
            ACC t[VEC];
            load_vec<T_X, VEC>(res + row * res_rs + c * VEC, t);
#pragma unroll
            for (int i = 0; i < VEC; ++i) a[i] = round_to<T_X>(a[i] + t[i]);
            store_vec<T_X, VEC>(res_out + row * ro_rs + c * VEC, a);
#endif
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc += LAYER ? a[i] : a[i] * a[i];
        }
#endif
        acc = group_sum<TPR>(acc, red);
        ACC mu = 0;
#if LAYER
        mu = acc * inv_n;
        acc = 0;
#if CHUNKS > 0
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (valid && c < nvec) {
                ACC a[VEC];
                unpack<T_X, VEC>(v[k], a);
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc += (a[i] - mu) * (a[i] - mu);
            }
        }
#else
        for (int c = lane; valid && c < nvec; c += TPR) {
            ACC a[VEC];
            load_vec<T_X, VEC>(sr + c * VEC, a);
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc += (a[i] - mu) * (a[i] - mu);
        }
#endif
        acc = group_sum<TPR>(acc, red);
#endif
        const ACC r = rsqrt_acc(acc * inv_n + eps);
#if HAS_RSTD
        if (valid && lane == 0) {
            rstd[row] = r;
#if LAYER
            mean[row] = mu;
#endif
        }
#endif
        if (!valid) continue;  // no barrier follows in this iteration
#if CHUNKS > 0
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (c < nvec) {
                ACC h[VEC];
                unpack<T_X, VEC>(v[k], h);
#pragma unroll
                for (int i = 0; i < VEC; ++i) h[i] = (h[i] - mu) * r;
                finish_y(h, w, b, c, offset);
                store_vec<T_Y, VEC>(y + row * y_rs + c * VEC, h);
            }
        }
#else
        for (int c = lane; c < nvec; c += TPR) {
            ACC h[VEC];
            load_vec<T_X, VEC>(sr + c * VEC, h);
#pragma unroll
            for (int i = 0; i < VEC; ++i) h[i] = (h[i] - mu) * r;
            finish_y(h, w, b, c, offset);
            store_vec<T_Y, VEC>(y + row * y_rs + c * VEC, h);
        }
#endif
    }
}

// Gradient of x (and, through partials, of w and b). `partial_w` / `partial_b` hold one ACC row per
// group (gridDim.x * RPB rows); norm_col_reduce sums them.
extern "C" __global__ void __launch_bounds__(BLOCK, MINB) norm_bwd(
    const T_DY* __restrict__ dy, i64 dy_rs, const T_X* __restrict__ x, i64 x_rs, const T_W* __restrict__ w,
    const ACC* __restrict__ mean, const ACC* __restrict__ rstd, const T_DR* __restrict__ dres, i64 dr_rs,
    T_DX* __restrict__ dx, i64 dx_rs, ACC* __restrict__ partial_w, ACC* __restrict__ partial_b, i64 rows, int cols,
    ACC offset) {
    __shared__ ACC red[BLOCK / 32];
    const int group = threadIdx.x / TPR, lane = threadIdx.x % TPR;
    const int nvec = cols / VEC;
    const ACC inv_n = (ACC)1 / (ACC)cols;
    const i64 slot = ((i64)blockIdx.x * RPB + group) * cols;
    ACC* pw = partial_w + slot;
    ACC* pb = partial_b + slot;

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
#endif
#if HAS_DB
    ACC dbacc[CHUNKS][VEC];
#endif
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
#if HAS_DW
            dwacc[k][i] = 0;
#endif
#if HAS_DB
            dbacc[k][i] = 0;
#endif
        }
    }
#else
    for (int c = lane; c < nvec; c += TPR) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
#if HAS_DW
            pw[c * VEC + i] = 0;
#endif
#if HAS_DB
            pb[c * VEC + i] = 0;
#endif
        }
    }
#endif

    for (i64 base = (i64)blockIdx.x * RPB; base < rows; base += (i64)gridDim.x * RPB) {
        const i64 row = base + group;
        const bool valid = row < rows;
        const ACC r = valid ? rstd[row] : (ACC)0;
        const ACC mu = (LAYER && valid) ? mean[row] : (ACC)0;
        ACC dot = 0, gsum = 0;  // sums of g*x̂ and (LayerNorm) of g
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
                unpack_elementwise<T_X, VEC>(xraw[k], xh);
                unpack_elementwise<T_DY, VEC>(draw[k], dv);
                weight_chunk(wraw, k, offset, wv);
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    dot += dv[i] * wv[i] * ((xh[i] - mu) * r);
                    gsum += dv[i] * wv[i];
                }
            }
        }
#else
        for (int c = lane; valid && c < nvec; c += TPR) {
            ACC xv[VEC], dv[VEC], wl[VEC];
            load_vec<T_X, VEC>(x + row * x_rs + c * VEC, xv);
            load_vec<T_DY, VEC>(dy + row * dy_rs + c * VEC, dv);
            weight_at(w, c, offset, wl);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                dot += dv[i] * wl[i] * ((xv[i] - mu) * r);
                gsum += dv[i] * wl[i];
            }
        }
#endif
        dot = group_sum<TPR>(dot, red);
#if LAYER
        gsum = group_sum<TPR>(gsum, red);
#endif
        if (!valid) continue;
        const ACC mean_gx = dot * inv_n;
        const ACC mean_g = LAYER ? gsum * inv_n : (ACC)0;
#if CHUNKS > 0
#pragma unroll
        for (int k = 0; k < CHUNKS; ++k) {
            const int c = lane + k * TPR;
            if (c < nvec) {
                ACC o[VEC], xh[VEC], dv[VEC], wv[VEC];
                unpack_elementwise<T_X, VEC>(xraw[k], xh);
                unpack_elementwise<T_DY, VEC>(draw[k], dv);
                weight_chunk(wraw, k, offset, wv);
#pragma unroll
                for (int i = 0; i < VEC; ++i) xh[i] = (xh[i] - mu) * r;
#if HAS_DRES
                ACC dr[VEC];
                load_vec<T_DR, VEC>(dres + row * dr_rs + c * VEC, dr);
#endif
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    o[i] = r * (dv[i] * wv[i] - mean_g - xh[i] * mean_gx);
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
#if HAS_DB
                    dbacc[k][i] += dv[i];
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
            weight_at(w, c, offset, wl);
#if HAS_DRES
            ACC dr[VEC];
            load_vec<T_DR, VEC>(dres + row * dr_rs + c * VEC, dr);
#endif
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const ACC h = (xv[i] - mu) * r;
                o[i] = r * (dv[i] * wl[i] - mean_g - h * mean_gx);
#if HAS_DRES
                o[i] += dr[i];
#endif
#if HAS_DW
#if CAST_BEFORE_W
                pw[c * VEC + i] += dv[i] * round_to<T_X>(h);
#else
                pw[c * VEC + i] += dv[i] * h;
#endif
#endif
#if HAS_DB
                pb[c * VEC + i] += dv[i];
#endif
            }
            store_vec<T_DX, VEC>(dx + row * dx_rs + c * VEC, o);
        }
#endif
    }

#if CHUNKS > 0 && (HAS_DW || HAS_DB)
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
        const int c = lane + k * TPR;
        if (c < nvec) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
#if HAS_DW
                pw[c * VEC + i] = dwacc[k][i];
#endif
#if HAS_DB
                pb[c * VEC + i] = dbacc[k][i];
#endif
            }
        }
    }
#endif
}

// out[col] = sum over p < P of partial[p][col]. Block: 32 columns x 16 slices of P.
extern "C" __global__ void __launch_bounds__(512) norm_col_reduce(const ACC* __restrict__ partial, int P, int cols,
                                                                  T_W* __restrict__ out) {
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
        out[col] = from_acc<T_W>(t);
    }
}
