// adamw.cu — one AdamW step over up to MAXT parameters per launch (math in src/ops/adamw.rs).
//
// The launch's tensor table travels in the kernel parameters (__grid_constant__, read in place,
// no device workspace, capturable in a CUDA graph): per tensor the addresses of param, grad,
// exp_avg, exp_avg_sq, max_exp_avg_sq and master copy, its element count and its first chunk.
// Block b takes chunks b, b + grid, ... of CHUNK elements; a binary search over the first-chunk
// column finds the tensor. Each thread updates VEC consecutive elements per access (16-byte loads
// of float32 states) where the tensor's addresses are aligned for it, single elements otherwise.
//
// Compile-time parameters (-D): T_P (parameter/gradient) T_S (moments, master) ACC BLOCK CHUNK
// MAXT VEC AMSGRAD MASTER SR (bfloat16 stochastic rounding).

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

// The step's scalars, in ACC.
struct Hyper {
    ACC decay, w1, b2, w2, step_size, bc2_sqrt, eps, sign;
};

// One tensor's addresses (vmax and master are read only when compiled in).
struct Item {
    T_P* param;
    const T_P* grad;
    T_S* m;
    T_S* v;
    T_S* vmax;
    T_S* master;
};

// Updates the N elements from i0 (N-wide aligned accesses when N > 1).
template <int N>
__device__ __forceinline__ void step_at(const Item& it, i64 i0, const Hyper& h, u64 seed, int item) {
    ACC g[N], p[N], mi[N], vi[N];
    load_vec<T_P, N>(it.grad + i0, g);
#if MASTER
    load_vec<T_S, N>(it.master + i0, p);
#else
    load_vec<T_P, N>(it.param + i0, p);
#endif
    load_vec<T_S, N>(it.m + i0, mi);
    load_vec<T_S, N>(it.v + i0, vi);
#if AMSGRAD
    ACC xi[N];
    load_vec<T_S, N>(it.vmax + i0, xi);
#endif
#pragma unroll
    for (int u = 0; u < N; ++u) {
        const ACC gu = h.sign * g[u];
        mi[u] = mi[u] + h.w1 * (gu - mi[u]);
        vi[u] = vi[u] * h.b2 + h.w2 * gu * gu;
#if AMSGRAD
        xi[u] = (vi[u] > xi[u] || vi[u] != vi[u]) ? vi[u] : xi[u];
        const ACC denom = sqrt(xi[u]) / h.bc2_sqrt + h.eps;
#else
        const ACC denom = sqrt(vi[u]) / h.bc2_sqrt + h.eps;
#endif
        p[u] = p[u] * h.decay - h.step_size * (mi[u] / denom);
    }
    store_vec<T_S, N>(it.m + i0, mi);
    store_vec<T_S, N>(it.v + i0, vi);
#if AMSGRAD
    store_vec<T_S, N>(it.vmax + i0, xi);
#endif
#if MASTER
    store_vec<T_S, N>(it.master + i0, p);
#endif
#if SR
    // bfloat16 by stochastic rounding: 16 random bits below the kept ones carry into them with
    // probability equal to the discarded fraction.
    Vec<T_P, N> out;
#pragma unroll
    for (int u = 0; u < N; ++u) {
        const unsigned bits = __float_as_uint((float)p[u]);
        out.v[u].bits = (p[u] != p[u]) ? (unsigned short)((bits >> 16) | 0x40)
                                       : (unsigned short)((bits + (sr_bits(seed, item, i0 + u) & 0xFFFFu)) >> 16);
    }
    store_raw<T_P, N>(it.param + i0, out);
#else
    store_vec<T_P, N>(it.param + i0, p);
#endif
}

__device__ __forceinline__ bool aligned(const void* a, int bytes) { return ((u64)a & (u64)(bytes - 1)) == 0; }

extern "C" __global__ void __launch_bounds__(BLOCK)
    adamw_kernel(const __grid_constant__ Table t, ACC decay, ACC w1, ACC b2, ACC w2, ACC step_size, ACC bc2_sqrt,
                 ACC eps, ACC sign, u64 seed, int item_base) {
    const Hyper h{decay, w1, b2, w2, step_size, bc2_sqrt, eps, sign};
    const i64 total = t.first[t.count];
    for (i64 c = blockIdx.x; c < total; c += gridDim.x) {
        int lo = 0, hi = t.count - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (t.first[mid] <= c) lo = mid;
            else hi = mid - 1;
        }
        const Item it{(T_P*)t.param[lo], (const T_P*)t.grad[lo], (T_S*)t.m[lo], (T_S*)t.v[lo], (T_S*)t.vmax[lo],
                      (T_S*)t.master[lo]};
        const int item = item_base + lo;
        const i64 start = (c - t.first[lo]) * CHUNK;  // CHUNK is a multiple of VEC
        const i64 end = min(start + (i64)CHUNK, t.numel[lo]);
        // VEC elements per access where every address allows it (torch's allocations do), one
        // otherwise and for the chunk's tail.
        const int pb = VEC * (int)sizeof(T_P), sb = VEC * (int)sizeof(T_S);
        const bool vec = aligned(it.param, pb) && aligned(it.grad, pb) && aligned(it.m, sb) && aligned(it.v, sb) &&
                         (!AMSGRAD || aligned(it.vmax, sb)) && (!MASTER || aligned(it.master, sb));
        i64 i = start;
        if (vec) {
            const i64 vend = start + (end - start) / VEC * VEC;
            for (i64 i0 = start + (i64)threadIdx.x * VEC; i0 < vend; i0 += (i64)BLOCK * VEC) step_at<VEC>(it, i0, h, seed, item);
            i = vend;
        }
        for (i64 i0 = i + threadIdx.x; i0 < end; i0 += BLOCK) step_at<1>(it, i0, h, seed, item);
    }
}
