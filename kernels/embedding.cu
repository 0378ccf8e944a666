// Token (and learned position) embeddings; CPU twin: src/backend/cpu/embedding.rs.
//
// The tables and their gradients are float; the activations (rows = batch·seq_len, C) are T.
// The backward pass is deterministic without atomics: the host sorts the rows by token (a
// stable counting sort, src/backend/cuda/launch.rs), and each thread owns one channel of one
// token's table row and adds that token's rows in row order.

// out[row, :] = table[tokens[row], :] (+ positions[row % seq_len, :]). positions may be null.
// A token outside the vocabulary makes its row NaN rather than reading outside the table.
template <typename T>
__device__ void embedding_forward(T* out, const u32* tokens, const float* table,
                                  const float* positions, int vocab, int seq_len, i64 rows,
                                  int C) {
    const i64 n = rows * C;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 row = i / C;
        const int c = (int)(i % C);
        const u32 token = tokens[row];
        float v = token < (u32)vocab ? table[(i64)token * C + c] : __int_as_float(0x7fc00000);
        if (positions != 0) v += positions[(row % seq_len) * C + c];
        out[i] = from_float<T>(v);
    }
}

// dtable[bucket_token[b], c] += Σ dout[order[k], c] for k in bucket_start[b]..bucket_start[b+1].
// Grid: (buckets, ⌈C / blockDim.x⌉).
template <typename T>
__device__ void embedding_backward_table(float* dtable, const T* dout, const int* order,
                                         const int* bucket_start, const u32* bucket_token,
                                         int C) {
    const int b = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int k = bucket_start[b]; k < bucket_start[b + 1]; k++) {
        sum += to_float(dout[(i64)order[k] * C + c]);
    }
    dtable[(i64)bucket_token[b] * C + c] += sum;
}

// dpositions[t, c] += Σ_b dout[b·seq_len + t, c], one thread per (t, c).
template <typename T>
__device__ void embedding_backward_positions(float* dpositions, const T* dout, int batch,
                                             int seq_len, int C) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= (i64)seq_len * C) return;
    float sum = 0.0f;
    for (int b = 0; b < batch; b++) sum += to_float(dout[(i64)b * seq_len * C + i]);
    dpositions[i] += sum;
}

#define EMBEDDING(T, S)                                                                          \
    extern "C" __global__ void embedding_forward_##S(T* out, const u32* tokens,                  \
                                                     const float* table, const float* positions, \
                                                     int vocab, int seq_len, i64 rows, int C) {  \
        embedding_forward<T>(out, tokens, table, positions, vocab, seq_len, rows, C);            \
    }                                                                                            \
    extern "C" __global__ void embedding_backward_table_##S(                                     \
        float* dtable, const T* dout, const int* order, const int* bucket_start,                 \
        const u32* bucket_token, int C) {                                                        \
        embedding_backward_table<T>(dtable, dout, order, bucket_start, bucket_token, C);         \
    }                                                                                            \
    extern "C" __global__ void embedding_backward_positions_##S(float* dpositions, const T* dout, \
                                                                int batch, int seq_len, int C) { \
        embedding_backward_positions<T>(dpositions, dout, batch, seq_len, C);                    \
    }

EMBEDDING(float, f32)
EMBEDDING(bf16, bf16)
