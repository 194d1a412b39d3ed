// common.cuh — shared by every metalcore kernel. Prepended to each kernel source by the Rust side.
//
// Storage types are plain 16-bit structs with conversions by PTX `cvt` (round to nearest even), so
// kernels need none of the CUDA headers and compile with NVRTC alone. `ACC` (float or double) is
// the accumulation type, set by the launcher with -DACC=...
#ifndef METALCORE_COMMON_CUH
#define METALCORE_COMMON_CUH

struct bf16 { unsigned short bits; };
struct f16 { unsigned short bits; };

__device__ __forceinline__ float bf16_to_float(bf16 v) { return __uint_as_float(((unsigned)v.bits) << 16); }
__device__ __forceinline__ float f16_to_float(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

__device__ __forceinline__ ACC to_acc(float v) { return (ACC)v; }
__device__ __forceinline__ ACC to_acc(double v) { return (ACC)v; }
__device__ __forceinline__ ACC to_acc(bf16 v) { return (ACC)bf16_to_float(v); }
__device__ __forceinline__ ACC to_acc(f16 v) { return (ACC)f16_to_float(v); }

template <class T> __device__ __forceinline__ T from_acc(ACC v);
template <> __device__ __forceinline__ float from_acc<float>(ACC v) { return (float)v; }
template <> __device__ __forceinline__ double from_acc<double>(ACC v) { return (double)v; }
template <> __device__ __forceinline__ bf16 from_acc<bf16>(ACC v) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"((float)v));
    return r;
}
template <> __device__ __forceinline__ f16 from_acc<f16>(ACC v) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"((float)v));
    return r;
}

// Rounds an accumulator value to the nearest value of storage type T.
template <class T> __device__ __forceinline__ ACC round_to(ACC v) { return to_acc(from_acc<T>(v)); }

// N consecutive elements moved as one aligned access (16 bytes per instruction where N allows).
template <class T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

// Raw access keeps values in their storage type (half the registers of ACC for 16-bit types);
// unpack/pack convert between a raw vector and ACC values.
template <class T, int N> __device__ __forceinline__ Vec<T, N> load_raw(const T* __restrict__ p) {
    return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <class T, int N> __device__ __forceinline__ void store_raw(T* __restrict__ p, const Vec<T, N>& t) {
    *reinterpret_cast<Vec<T, N>*>(p) = t;
}

template <class T> struct is_bf16 { static constexpr bool value = false; };
template <> struct is_bf16<bf16> { static constexpr bool value = true; };

// One conversion per element. norm_bwd keeps this form: with its rows of 8192 under a 32-register
// cap, the word-wise bf16 form below spilled at worse places (H200: 279 -> 342 us).
template <class T, int N> __device__ __forceinline__ void unpack_elementwise(const Vec<T, N>& t, ACC (&out)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_acc(t.v[i]);
}

template <class T, int N> __device__ __forceinline__ void unpack(const Vec<T, N>& t, ACC (&out)[N]) {
    if constexpr (is_bf16<T>::value && N % 2 == 0) {
        // bf16 pairs straight from their 32-bit words: one shift or one mask per value (the
        // per-element 16-bit extraction cost the compiler two or three integer instructions).
        unsigned w[N / 2];
        memcpy(w, &t, sizeof(t));
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
            out[2 * i] = (ACC)__uint_as_float(w[i] << 16);
            out[2 * i + 1] = (ACC)__uint_as_float(w[i] & 0xffff0000u);
        }
    } else {
        unpack_elementwise<T, N>(t, out);
    }
}

// Two values rounded to a 16-bit type and packed in one register (element `lo` at the lower
// address), by one paired `cvt` instead of two.
template <class T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<bf16>(float lo, float hi) {
    unsigned d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
template <> __device__ __forceinline__ unsigned pack2<f16>(float lo, float hi) {
    unsigned d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

template <class T> struct is_half16 { static constexpr bool value = false; };
template <> struct is_half16<bf16> { static constexpr bool value = true; };
template <> struct is_half16<f16> { static constexpr bool value = true; };

template <class T, int N> __device__ __forceinline__ Vec<T, N> pack(const ACC (&in)[N]) {
    Vec<T, N> t;
    if constexpr (is_half16<T>::value && N % 2 == 0) {
        unsigned w[N / 2];
#pragma unroll
        for (int i = 0; i < N / 2; ++i) w[i] = pack2<T>((float)in[2 * i], (float)in[2 * i + 1]);
        memcpy(&t, w, sizeof(t));
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) t.v[i] = from_acc<T>(in[i]);
    }
    return t;
}

// Rounds N accumulator values to storage type T in place. 16-bit types go two at a time through
// the paired `cvt` (the scalar f32 -> bf16 conversion is a slow F2F instruction on sm_90; the
// paired one is not).
template <class T, int N> __device__ __forceinline__ void round_vec(ACC (&v)[N]) {
    if constexpr (is_half16<T>::value && N % 2 == 0) {
        unpack<T, N>(pack<T, N>(v), v);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = round_to<T>(v[i]);
    }
}

template <class T, int N> __device__ __forceinline__ void load_vec(const T* __restrict__ p, ACC (&out)[N]) {
    unpack<T, N>(load_raw<T, N>(p), out);
}

template <class T, int N> __device__ __forceinline__ void store_vec(T* __restrict__ p, const ACC (&in)[N]) {
    store_raw<T, N>(p, pack<T, N>(in));
}

__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }
// -inf in ACC (NVRTC has no <cmath> INFINITY).
#define NEG_INF_ACC (-(ACC)__int_as_float(0x7f800000))
__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
// exp in kernels compiled with -DFAST=1 (16-bit data): the hardware exp2 (__expf), whose few-ulp
// float error vanishes in the output's rounding to 8 or 11 bits (and is exact at 0: e^0 = 1);
// otherwise the accurate expf/exp.
__device__ __forceinline__ float exp_io(float v) {
#if defined(FAST) && FAST
    return __expf(v);
#else
    return expf(v);
#endif
}
__device__ __forceinline__ double exp_io(double v) { return exp(v); }

struct SumOp {
    __device__ __forceinline__ ACC operator()(ACC a, ACC b) const { return a + b; }
};
struct MaxOp {
    // NaN-propagating max (fmax would drop a NaN): a NaN anywhere in the row wins.
    __device__ __forceinline__ ACC operator()(ACC a, ACC b) const { return (a > b || a != a) ? a : b; }
};

// Reduction by OP over a group of GROUP consecutive threads (a multiple of 32 dividing the block).
// Every thread of the block must call it: it synchronizes the block when GROUP > 32.
template <int GROUP, class OP> __device__ __forceinline__ ACC group_reduce(ACC v, ACC* red, OP op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (GROUP == 32) return v;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr int WPG = GROUP / 32;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    const int first = (warp / WPG) * WPG;
    ACC s = red[first];
#pragma unroll
    for (int i = 1; i < WPG; ++i) s = op(s, red[first + i]);
    __syncthreads();  // `red` is reused by the next call
    return s;
}

template <int GROUP> __device__ __forceinline__ ACC group_sum(ACC v, ACC* red) { return group_reduce<GROUP>(v, red, SumOp{}); }
template <int GROUP> __device__ __forceinline__ ACC group_max(ACC v, ACC* red) { return group_reduce<GROUP>(v, red, MaxOp{}); }

#endif
