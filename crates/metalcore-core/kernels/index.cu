// index.cu — gather, scatter-add and sorted index-add over (outer, n, inner) views (math in
// src/ops/index.rs): rows (O, J, I), table (O, N, I), index (O, J, I), any strides.
//   gather:      rows[o, j, i] = table[o, index[o, j, i], i]
//   scatter-add: table[o, index[o, j, i], i] += rows[o, j, i]
//   sorted add:  table[o, n, i] += sum_{k0 <= k < k1} rows[o, perm[k], i] for each run [k0, k1) of
//                sorted keys equal to n (key[k] = index[0, k, 0])
// The semantics of torch.gather, torch.scatter_add and torch.index_select/index_add
// (https://pytorch.org/docs/stable/generated/torch.gather.html and .../torch.Tensor.scatter_add_.html).
//
// MODE 0 (gather) and 1 (scatter-add): one thread per VEC consecutive elements of rows,
// grid-stride, position e -> (o, j, c) by two divisions in POS arithmetic (32-bit unless the launch
// is huge). VEC > 1 only where the index is constant along i and rows and table have unit inner
// stride (index_select). Gather moves raw elements (bit-exact) and writes NaN where the index lies
// outside [0, N). Scatter-add adds into a float/double table with atomicAdd: the order of the
// additions, and so the last bits of a sum, varies from run to run.
// MODE 2 (sorted add): LANES threads per sorted position k. The group whose k starts a run of equal
// keys n sums rows[o, perm[r], i] over the run, in order, in ACC, and adds the sum to
// table[o, n, i] (one rounding). Each table row is written by one group and no atomics are used,
// so the result is bit-identical run to run.
// Indices outside [0, N) and permutation entries outside [0, J) are never dereferenced.
//
// Compile-time parameters (-D): T_X (rows), T_T (table), ACC, IDX, POS, VEC, MODE, LANES, BLOCK.

typedef long long i64;

// One operand: address and strides in elements (the layout of `KStrided` on the Rust side).
struct Strided {
    unsigned long long ptr;
    i64 s[3];
};

__device__ __forceinline__ i64 at(const Strided& t, i64 a, i64 b, i64 c) { return a * t.s[0] + b * t.s[1] + c * t.s[2]; }

__device__ __forceinline__ bool in_range(i64 v, i64 len) { return (unsigned long long)v < (unsigned long long)len; }

extern "C" __global__ void __launch_bounds__(BLOCK)
    index_kernel(Strided table, Strided rows, Strided index, const i64* __restrict__ perm, unsigned long long outer_,
                 unsigned long long j_, unsigned long long iv_, i64 N) {
    T_T* tab = (T_T*)table.ptr;
    T_X* row = (T_X*)rows.ptr;
    const IDX* idx = (const IDX*)index.ptr;
    const POS outer = (POS)outer_, J = (POS)j_, IV = (POS)iv_;
#if MODE < 2
    const POS total = outer * J * IV;
    for (POS e = (POS)blockIdx.x * BLOCK + threadIdx.x; e < total; e += (POS)gridDim.x * BLOCK) {
        const POS r = IV == 1 ? e : e / IV;
        const POS o = r / J, j = r - o * J;
        const i64 i = (i64)(e - r * IV) * VEC;
        const i64 n = (i64)idx[at(index, o, j, i)];
        T_X* dst = row + at(rows, o, j, i);
#if MODE == 0
        Vec<T_X, VEC> v;
        if (in_range(n, N)) {
            v = load_raw<T_X, VEC>(tab + at(table, o, n, i));
        } else {
#pragma unroll
            for (int q = 0; q < VEC; ++q) v.v[q] = from_acc<T_X>((ACC)__int_as_float(0x7fc00000));
        }
        store_raw<T_X, VEC>(dst, v);
#else
        if (in_range(n, N)) {
            ACC v[VEC];
            load_vec<T_X, VEC>(dst, v);
            T_T* t = tab + at(table, o, n, i);
#pragma unroll
            for (int q = 0; q < VEC; ++q) atomicAdd(t + q, v[q]);
        }
#endif
    }
#else
    constexpr int GROUPS = BLOCK / LANES;
    const int lane = threadIdx.x % LANES;
    const POS W = outer * IV;
    for (POS k = (POS)blockIdx.x * GROUPS + threadIdx.x / LANES; k < J; k += (POS)gridDim.x * GROUPS) {
        const i64 n = (i64)idx[k * index.s[1]];
        if (k > 0 && (i64)idx[(k - 1) * index.s[1]] == n) continue;  // not the start of a run
        if (!in_range(n, N)) continue;
        POS end = k + 1;
        while (end < J && (i64)idx[end * index.s[1]] == n) ++end;
        for (POS w = lane; w < W; w += LANES) {
            const POS o = IV == 1 ? w : w / IV;
            const i64 i = (i64)(w - o * IV) * VEC;
            ACC acc[VEC];
#pragma unroll
            for (int q = 0; q < VEC; ++q) acc[q] = 0;
            for (POS r = k; r < end; ++r) {
                const i64 p = perm[r];
                if (!in_range(p, J)) continue;
                ACC v[VEC];
                load_vec<T_X, VEC>(row + at(rows, o, p, i), v);
#pragma unroll
                for (int q = 0; q < VEC; ++q) acc[q] += v[q];
            }
            T_T* t = tab + at(table, o, n, i);
            ACC cur[VEC];
            load_vec<T_T, VEC>(t, cur);
#pragma unroll
            for (int q = 0; q < VEC; ++q) cur[q] += acc[q];
            store_vec<T_T, VEC>(t, cur);
        }
    }
#endif
}
