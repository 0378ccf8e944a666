// Rotary position embedding, in place on the q and k parts of qkv; CPU twin: rope in
// src/backend/cpu/attention.rs.
//
// qkv is (rows, 3·C) of T, rows = batch·seq_len, q | k | v each split into heads of head_dim.
// Dimension i of a head pairs with i + head_dim/2 and turns by the angle t·θ_i of its position
// t = row % seq_len: table (float) holds per position head_dim values, cos(t·θ_i) for
// i < head_dim/2, then sin(t·θ_i). With inverse the rotation is reversed (the backward pass,
// on the gradient). One thread per pair: rows · C threads in all (2·heads heads of head_dim/2
// pairs per row).
template <typename T>
__device__ void rope(T* qkv, const float* table, i64 rows, int seq_len, int C, int head_dim,
                     int inverse) {
    const int half = head_dim / 2;
    const i64 n = rows * C;
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < n; idx += (i64)gridDim.x * blockDim.x) {
        const i64 row = idx / C;
        const int pair = (int)(idx % C);
        const int head = pair / half;
        const int i = pair % half;
        const float* angles = table + (row % seq_len) * head_dim;
        const float cos_t = angles[i];
        const float sin_t = inverse ? -angles[half + i] : angles[half + i];
        T* x = qkv + row * 3 * C + (i64)head * head_dim;
        const float a = to_float(x[i]);
        const float b = to_float(x[half + i]);
        x[i] = from_float<T>(a * cos_t + b * sin_t);
        x[half + i] = from_float<T>(b * cos_t - a * sin_t);
    }
}

#define ROPE(T, S)                                                                               \
    extern "C" __global__ void rope_##S(T* qkv, const float* table, i64 rows, int seq_len,     \
                                        int C, int head_dim, int inverse) {                      \
        rope<T>(qkv, table, rows, seq_len, C, head_dim, inverse);                                \
    }

ROPE(float, f32)
ROPE(bf16, bf16)
