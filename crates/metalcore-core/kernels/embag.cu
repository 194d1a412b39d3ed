// embag.cu — EmbeddingBag forward and backward to the weight (math in src/ops/embag.rs).
//
// Forward: one block per bag (grid-stride); thread t owns columns [t·VEC, t·VEC + VEC) of each
// group of BLOCK·VEC columns and walks the bag's entries, loading VEC elements of each row.
// Backward: one block per sorted position; a block whose position starts a run of equal indices
// sums the run (in sorted order: deterministic) and writes that index's row of grad_weight.
// Index reads are clamped to the table (the Python layer reports out-of-range indices).
//
// Compile-time parameters (-D): T_X ACC VEC BLOCK MODE (0 sum, 1 mean, 2 max) PSW BWD.

typedef long long i64;

__device__ __forceinline__ int bag_of(const int* __restrict__ offsets, int bags, int pos) {
    int lo = 0, hi = bags - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= pos) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

extern "C" __global__ void __launch_bounds__(BLOCK)
    embag_kernel(T_X* table, i64 t_rs, T_X* bag_rows, i64 b_rs, const int* __restrict__ indices,
                 const int* __restrict__ offsets, const T_X* __restrict__ psw, const int* __restrict__ sorted,
                 int* argmax, i64 a_rs, int num, int dim, int bags, int n, int padding_idx) {
#if !BWD
    for (int b = blockIdx.x; b < bags; b += gridDim.x) {
        // Offsets are clamped into [0, n] and made non-decreasing: malformed offsets (reported by
        // the Python layer, unchecked under graph capture) read no index outside the tensor.
        const int s = min(max(offsets[b], 0), n), e = min(max(offsets[b + 1], s), n);
        for (int c0 = threadIdx.x * VEC; c0 < dim; c0 += BLOCK * VEC) {
            ACC acc[VEC];
            int arg[VEC];
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                acc[j] = 0;
                arg[j] = -1;
            }
            int cnt = 0;
            for (int q = s; q < e; ++q) {
                int i = indices[q];
                if (i == padding_idx) continue;
                i = i < 0 ? 0 : (i >= num ? num - 1 : i);
                ++cnt;
                ACC r[VEC];
                load_vec<T_X, VEC>(table + (i64)i * t_rs + c0, r);
#if MODE == 2
#pragma unroll
                for (int j = 0; j < VEC; ++j)
                    if (arg[j] < 0 || r[j] > acc[j]) {
                        acc[j] = r[j];
                        arg[j] = q;
                    }
#else
                const ACC w = PSW ? to_acc(psw[q]) : (ACC)1;
#pragma unroll
                for (int j = 0; j < VEC; ++j) acc[j] += w * r[j];
#endif
            }
#if MODE == 1
            if (cnt > 0) {
                const ACC inv = (ACC)1 / (ACC)cnt;
#pragma unroll
                for (int j = 0; j < VEC; ++j) acc[j] *= inv;
            }
#endif
            store_vec<T_X, VEC>(bag_rows + (i64)b * b_rs + c0, acc);
#if MODE == 2
#pragma unroll
            for (int j = 0; j < VEC; ++j) argmax[(i64)b * a_rs + c0 + j] = arg[j];
#endif
        }
    }
#else
    for (int k = blockIdx.x; k < n; k += gridDim.x) {
        const int i = indices[sorted[k]];
        if (k > 0 && indices[sorted[k - 1]] == i) continue;  // not the start of a run
        if (i == padding_idx || i < 0 || i >= num) continue;
        int end = k + 1;
        while (end < n && indices[sorted[end]] == i) ++end;
        for (int c0 = threadIdx.x * VEC; c0 < dim; c0 += BLOCK * VEC) {
            ACC acc[VEC];
#pragma unroll
            for (int j = 0; j < VEC; ++j) acc[j] = 0;
            for (int r = k; r < end; ++r) {
                const int q = sorted[r];
                const int b = bag_of(offsets, bags, q);
                ACC g[VEC];
                load_vec<T_X, VEC>(bag_rows + (i64)b * b_rs + c0, g);
#if MODE == 2
#pragma unroll
                for (int j = 0; j < VEC; ++j)
                    if (argmax[(i64)b * a_rs + c0 + j] == q) acc[j] += g[j];
#else
                ACC w = PSW ? to_acc(psw[q]) : (ACC)1;
#if MODE == 1
                int cnt = 0;
                const int t0 = min(max(offsets[b], 0), n), t1 = min(max(offsets[b + 1], t0), n);
                for (int t = t0; t < t1; ++t) cnt += indices[t] != padding_idx;
                w /= (ACC)(cnt > 0 ? cnt : 1);
#endif
#pragma unroll
                for (int j = 0; j < VEC; ++j) acc[j] += w * g[j];
#endif
            }
            store_vec<T_X, VEC>(table + (i64)i * t_rs + c0, acc);
        }
    }
#endif
}
