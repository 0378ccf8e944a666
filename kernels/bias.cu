// The bias of a linear layer: adding it to every row in the forward pass and summing the output
// gradient's rows into its gradient in the backward pass. CPU twin: the bias parts of
// src/backend/cpu/matmul.rs. Biases and their gradients are f32; the rows are T.

// out[r, c] += bias[c] for `rows` rows of `cols`, one thread per element (grid-stride).
template <typename T>
__device__ void add_bias(T* out, const float* bias, i64 rows, int cols) {
    const i64 n = rows * cols;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        out[i] = from_float<T>(to_float(out[i]) + bias[i % cols]);
    }
}

// partials[chunk, c] = Σ dout[r, c] over the rows r of chunk blockIdx.y (`chunk_rows` rows
// each, the last one shorter); one thread per column, blockIdx.x picks the block of columns.
// Adjacent threads read adjacent columns of a row, so the reads are coalesced.
template <typename T>
__device__ void bias_backward_partial(float* partials, const T* dout, int rows, int cols,
                                      int chunk_rows) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int first = blockIdx.y * chunk_rows;
    const int last = min(first + chunk_rows, rows);
    float sum = 0.0f;
    for (int r = first; r < last; r++) sum += to_float(dout[(i64)r * cols + c]);
    partials[(i64)blockIdx.y * cols + c] = sum;
}

#define BIAS(T, S)                                                                               \
    extern "C" __global__ void add_bias_##S(T* out, const float* bias, i64 rows, int cols) {     \
        add_bias<T>(out, bias, rows, cols);                                                      \
    }                                                                                            \
    extern "C" __global__ void bias_backward_partial_##S(float* partials, const T* dout,         \
                                                         int rows, int cols, int chunk_rows) {   \
        bias_backward_partial<T>(partials, dout, rows, cols, chunk_rows);                        \
    }

BIAS(float, f32)
BIAS(bf16, bf16)

// dbias[c] += Σ partials[chunk, c] over the `chunks` chunks, in chunk order (deterministic).
extern "C" __global__ void bias_backward_reduce(float* dbias, const float* partials, int chunks,
                                                int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float sum = 0.0f;
    for (int k = 0; k < chunks; k++) sum += partials[(i64)k * cols + c];
    dbias[c] += sum;
}
