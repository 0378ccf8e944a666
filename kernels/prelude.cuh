// Prepended to every kernels/*.cu before NVRTC compiles it (src/backend/cuda/kernels.rs), so
// that no kernel needs a CUDA header or an include path at run time.
//
// - bf16: the storage type of activations, with conversions written out here instead of
//   cuda_bf16.h (which NVRTC does not ship).
// - Warp and block reductions over float, in a fixed order so results are deterministic.
// - The types every launcher passes: element counts are `long long`, token ids `unsigned int`.

typedef unsigned int u32;
typedef long long i64;

// bfloat16 as its 16 bits: the top half of an IEEE float.
struct bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float to_float(float x) { return x; }

__device__ __forceinline__ float to_float(bf16 x) {
    return __uint_as_float(((unsigned int)x.bits) << 16);
}

// Round to nearest, ties to even (the hardware's cvt.rn, sm_80 and newer), as half::bf16::from_f32.
__device__ __forceinline__ bf16 to_bf16(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}

// Stores a float as T: the identity for float, rounding for bf16.
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return to_bf16(x); }

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu
// -infinity, without math.h.
#define NEG_INF __int_as_float(0xff800000)

// Butterfly sum over the 32 lanes of a warp; every lane gets the same total.
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        x += __shfl_xor_sync(FULL_MASK, x, offset);
    }
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, offset));
    }
    return x;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets
// the total. `scratch` holds 32 floats of shared memory; the call ends with a barrier, so it
// may be called again with the same scratch.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    x = warp_sum(x);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_max(float x, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    x = warp_max(x);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : NEG_INF;
    total = warp_max(total);
    __syncthreads();
    return total;
}
