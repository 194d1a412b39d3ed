// adamw.cu — one AdamW step over up to MAXT parameters per launch (math in src/ops/adamw.rs).
//
// The launch's tensor table travels in the kernel parameters (__grid_constant__, read in place,
// no device workspace, capturable in a CUDA graph): per tensor the addresses of param, grad,
// exp_avg, exp_avg_sq, max_exp_avg_sq and master copy, its element count and its first chunk.
// Block b takes chunks b, b + grid, ... of CHUNK elements; a binary search over the first-chunk
// column finds the tensor. Each thread updates UNROLL elements per iteration, loads first.
//
// Compile-time parameters (-D): T_P (parameter/gradient) T_S (moments, master) ACC BLOCK CHUNK
// MAXT UNROLL AMSGRAD MASTER SR (bfloat16 stochastic rounding).

typedef long long i64;
typedef unsigned long long u64;

struct Table {
    i64 param[MAXT], grad[MAXT], m[MAXT], v[MAXT], vmax[MAXT], master[MAXT], numel[MAXT];
    i64 first[MAXT + 1];  // first[count] = total chunks
    int count;
};

// SplitMix64 finalizer of (seed, tensor, element): the same bits as the CPU backend.
__device__ __forceinline__ unsigned sr_bits(u64 seed, int item, i64 i) {
    u64 z = seed ^ ((u64)item << 40) ^ ((u64)i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (unsigned)(z ^ (z >> 31));
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    adamw_kernel(const __grid_constant__ Table t, ACC decay, ACC w1, ACC b2, ACC w2, ACC step_size, ACC bc2_sqrt,
                 ACC eps, ACC sign, u64 seed, int item_base) {
    const i64 total = t.first[t.count];
    for (i64 c = blockIdx.x; c < total; c += gridDim.x) {
        int lo = 0, hi = t.count - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (t.first[mid] <= c) lo = mid;
            else hi = mid - 1;
        }
        T_P* param = (T_P*)t.param[lo];
        const T_P* grad = (const T_P*)t.grad[lo];
        T_S* m = (T_S*)t.m[lo];
        T_S* v = (T_S*)t.v[lo];
        const i64 start = (c - t.first[lo]) * CHUNK;
        const i64 end = min(start + (i64)CHUNK, t.numel[lo]);
        for (i64 base = start + threadIdx.x; base < end; base += (i64)BLOCK * UNROLL) {
            ACC g[UNROLL], p[UNROLL], mi[UNROLL], vi[UNROLL], xi[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const i64 i = base + (i64)u * BLOCK;
                if (i < end) {
                    g[u] = sign * to_acc(grad[i]);
#if MASTER
                    p[u] = (ACC)((const T_S*)t.master[lo])[i];
#else
                    p[u] = to_acc(param[i]);
#endif
                    mi[u] = (ACC)m[i];
                    vi[u] = (ACC)v[i];
#if AMSGRAD
                    xi[u] = (ACC)((const T_S*)t.vmax[lo])[i];
#endif
                }
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const i64 i = base + (i64)u * BLOCK;
                if (i >= end) continue;
                mi[u] = mi[u] + w1 * (g[u] - mi[u]);
                vi[u] = vi[u] * b2 + w2 * g[u] * g[u];
#if AMSGRAD
                xi[u] = (vi[u] > xi[u] || vi[u] != vi[u]) ? vi[u] : xi[u];
                const ACC denom = sqrt(xi[u]) / bc2_sqrt + eps;
                ((T_S*)t.vmax[lo])[i] = (T_S)xi[u];
#else
                const ACC denom = sqrt(vi[u]) / bc2_sqrt + eps;
#endif
                const ACC np = p[u] * decay - step_size * (mi[u] / denom);
                m[i] = (T_S)mi[u];
                v[i] = (T_S)vi[u];
#if MASTER
                ((T_S*)t.master[lo])[i] = (T_S)np;
#endif
#if SR
                // bfloat16 by stochastic rounding: 16 random bits below the kept ones carry into them
                // with probability equal to the discarded fraction.
                const unsigned bits = __float_as_uint((float)np);
                bf16 out;
                out.bits = (np != np) ? (unsigned short)((bits >> 16) | 0x40)
                                      : (unsigned short)((bits + (sr_bits(seed, item_base + lo, i) & 0xFFFFu)) >> 16);
                param[i] = out;
#else
                param[i] = from_acc<T_P>(np);
#endif
            }
        }
    }
}
