// Elementwise activations and the residual add; CPU twin: src/backend/cpu/activation.rs.
//
// Every kernel walks a flat range of n elements with a grid-stride loop and computes in float;
// the _f32 and _bf16 entry points store their tensors as float or bf16.

// √(2/π) and the cubic coefficient of the tanh approximation of GELU, as on the CPU.
#define GELU_SCALE 0.7978845608028654f
#define GELU_CUBIC 0.044715f

template <typename T>
__device__ void add(T* out, const T* a, const T* b, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
    }
}

template <typename T>
__device__ void gelu_forward(T* out, const T* inp, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float x = to_float(inp[i]);
        const float t = tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
        out[i] = from_float<T>(0.5f * x * (1.0f + t));
    }
}

// dinp = dout · GELU'(inp).
template <typename T>
__device__ void gelu_backward(T* dinp, const T* dout, const T* inp, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float x = to_float(inp[i]);
        const float t = tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
        const float sech2 = 1.0f - t * t;
        const float slope =
            0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x * x);
        dinp[i] = from_float<T>(to_float(dout[i]) * slope);
    }
}

template <typename T>
__device__ void relu2_forward(T* out, const T* inp, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float r = fmaxf(to_float(inp[i]), 0.0f);
        out[i] = from_float<T>(r * r);
    }
}

template <typename T>
__device__ void relu2_backward(T* dinp, const T* dout, const T* inp, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        dinp[i] = from_float<T>(to_float(dout[i]) * 2.0f * fmaxf(to_float(inp[i]), 0.0f));
    }
}

#define ACTIVATIONS(T, S)                                                                       \
    extern "C" __global__ void add_##S(T* out, const T* a, const T* b, i64 n) {                 \
        add<T>(out, a, b, n);                                                                   \
    }                                                                                           \
    extern "C" __global__ void gelu_forward_##S(T* out, const T* inp, i64 n) {                  \
        gelu_forward<T>(out, inp, n);                                                           \
    }                                                                                           \
    extern "C" __global__ void gelu_backward_##S(T* dinp, const T* dout, const T* inp, i64 n) { \
        gelu_backward<T>(dinp, dout, inp, n);                                                   \
    }                                                                                           \
    extern "C" __global__ void relu2_forward_##S(T* out, const T* inp, i64 n) {                 \
        relu2_forward<T>(out, inp, n);                                                          \
    }                                                                                           \
    extern "C" __global__ void relu2_backward_##S(T* dinp, const T* dout, const T* inp, i64 n) {\
        relu2_backward<T>(dinp, dout, inp, n);                                                  \
    }

ACTIVATIONS(float, f32)
ACTIVATIONS(bf16, bf16)
