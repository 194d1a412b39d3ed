// rope.cu — rotary position embedding, forward and backward (math in src/ops/rope.rs).
//
// One block walks tokens (b, s) grid-stride. Its threads form HPI groups of UNITS threads: in a
// group, thread u < R rotates VEC elements of the rotated part (half rotation: the VEC pairs
// (j, j + rot/2) starting at j = u·VEC; interleaved: VEC consecutive elements, VEC/2 pairs), and
// thread u ≥ R copies PV elements of the pass-through part (partial rotary, out of place only).
// Each thread loads its cos/sin values once per token and applies them to every head of q and k
// (group g takes heads g, g + HPI, ...). Loads are LV (x, out) and LVC (cos, sin) elements wide,
// as the alignment of each operand allows.
//
// Compile-time parameters (-D): T_X T_C ACC VEC LV LVC PV R UNITS HPI INTERLEAVED BWD HAS_POS.

typedef long long i64;

// N elements from p, W at a time (W divides N; p aligned to W elements).
template <class T, int N, int W> __device__ __forceinline__ void load_n(const T* __restrict__ p, ACC (&out)[N]) {
#pragma unroll
    for (int i = 0; i < N; i += W) {
        ACC a[W];
        load_vec<T, W>(p + i, a);
#pragma unroll
        for (int j = 0; j < W; ++j) out[i + j] = a[j];
    }
}

template <class T, int N, int W> __device__ __forceinline__ void store_n(T* __restrict__ p, const ACC (&in)[N]) {
#pragma unroll
    for (int i = 0; i < N; i += W) {
        ACC a[W];
#pragma unroll
        for (int j = 0; j < W; ++j) a[j] = in[i + j];
        store_vec<T, W>(p + i, a);
    }
}

struct Side {
    const T_X* x;
    T_X* out;
    i64 heads, xb, xh, xs, ob, oh, os;
};

extern "C" __global__ void __launch_bounds__(UNITS * HPI)
    rope_kernel(Side q, Side k, const T_C* __restrict__ cos, const T_C* __restrict__ sin, i64 cb, i64 cs,
                const int* __restrict__ pos, i64 pb, i64 ps, int table_rows, i64 batch, i64 seq, int rot) {
    const int unit = threadIdx.x % UNITS, group = threadIdx.x / UNITS;
    const int half = rot / 2;
    const i64 heads = q.heads + k.heads;
    for (i64 tok = blockIdx.x; tok < batch * seq; tok += gridDim.x) {
        const i64 b = tok / seq, s = tok - b * seq;
        if (unit < R) {
            i64 row;
#if HAS_POS
            int id = pos[b * pb + s * ps];
            id = id < 0 ? 0 : (id >= table_rows ? table_rows - 1 : id);
            row = (i64)id * cs;
#else
            row = b * cb + s * cs;
#endif
            const T_C* cr = cos + row;
            const T_C* sr = sin + row;
#if INTERLEAVED
            const int j = unit * VEC;
            ACC c[VEC], sn[VEC];
            load_n<T_C, VEC, LVC>(cr + j, c);
            load_n<T_C, VEC, LVC>(sr + j, sn);
#else
            const int j = unit * VEC;
            ACC c1[VEC], c2[VEC], s1[VEC], s2[VEC];
            load_n<T_C, VEC, LVC>(cr + j, c1);
            load_n<T_C, VEC, LVC>(cr + j + half, c2);
            load_n<T_C, VEC, LVC>(sr + j, s1);
            load_n<T_C, VEC, LVC>(sr + j + half, s2);
#endif
            for (i64 hh = group; hh < heads; hh += HPI) {
                const Side& t = hh < q.heads ? q : k;
                const i64 h = hh < q.heads ? hh : hh - q.heads;
                const T_X* xp = t.x + b * t.xb + h * t.xh + s * t.xs;
                T_X* op = t.out + b * t.ob + h * t.oh + s * t.os;
#if INTERLEAVED
                ACC x[VEC], y[VEC];
                load_n<T_X, VEC, LV>(xp + j, x);
#pragma unroll
                for (int i = 0; i < VEC; i += 2) {
#if BWD
                    y[i] = x[i] * c[i] + x[i + 1] * sn[i + 1];
                    y[i + 1] = x[i + 1] * c[i + 1] - x[i] * sn[i];
#else
                    y[i] = x[i] * c[i] - x[i + 1] * sn[i];
                    y[i + 1] = x[i + 1] * c[i + 1] + x[i] * sn[i + 1];
#endif
                }
                store_n<T_X, VEC, LV>(op + j, y);
#else
                ACC x1[VEC], x2[VEC], y1[VEC], y2[VEC];
                load_n<T_X, VEC, LV>(xp + j, x1);
                load_n<T_X, VEC, LV>(xp + j + half, x2);
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
#if BWD
                    y1[i] = x1[i] * c1[i] + x2[i] * s2[i];
                    y2[i] = x2[i] * c2[i] - x1[i] * s1[i];
#else
                    y1[i] = x1[i] * c1[i] - x2[i] * s1[i];
                    y2[i] = x2[i] * c2[i] + x1[i] * s2[i];
#endif
                }
                store_n<T_X, VEC, LV>(op + j, y1);
                store_n<T_X, VEC, LV>(op + j + half, y2);
#endif
            }
        } else {
            // Pass-through part (out of place only): a plain copy in the storage type.
            const int j = rot + (unit - R) * PV;
            for (i64 hh = group; hh < heads; hh += HPI) {
                const Side& t = hh < q.heads ? q : k;
                const i64 h = hh < q.heads ? hh : hh - q.heads;
                store_raw<T_X, PV>(t.out + b * t.ob + h * t.oh + s * t.os + j,
                                   load_raw<T_X, PV>(t.x + b * t.xb + h * t.xh + s * t.xs + j));
            }
        }
    }
}
