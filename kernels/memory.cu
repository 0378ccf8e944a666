// Filling, scaling and converting flat ranges: what the backend's fill, scale, copy and the
// bf16 copy of the weights need beyond cuMemset and cuMemcpy. CPU twins: fill, scale and copy
// in src/backend/cpu/mod.rs (the CPU has one precision, so converting is copying there).

template <typename T>
__device__ void fill(T* x, float value, i64 n) {
    const T stored = from_float<T>(value);
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        x[i] = stored;
    }
}

// x ← x·factor, computed in float.
template <typename T>
__device__ void scale(T* x, float factor, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        x[i] = from_float<T>(to_float(x[i]) * factor);
    }
}

// out ← in, from one storage type to another (rounding to nearest even into bf16).
template <typename In, typename Out>
__device__ void convert(Out* out, const In* in, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        out[i] = from_float<Out>(to_float(in[i]));
    }
}

#define MEMORY(T, S)                                                                        \
    extern "C" __global__ void fill_##S(T* x, float value, i64 n) { fill<T>(x, value, n); } \
    extern "C" __global__ void scale_##S(T* x, float factor, i64 n) { scale<T>(x, factor, n); }

MEMORY(float, f32)
MEMORY(bf16, bf16)

extern "C" __global__ void convert_f32_to_bf16(bf16* out, const float* in, i64 n) {
    convert<float, bf16>(out, in, n);
}

extern "C" __global__ void convert_bf16_to_f32(float* out, const bf16* in, i64 n) {
    convert<bf16, float>(out, in, n);
}
