// LayerNorm, RMSNorm and QK-norm, forward and backward; CPU twin: src/backend/cpu/norm.rs.
//
// Activations are (rows, C) row-major, stored as T (float or bf16); weights, biases, their
// gradients and the saved per-row statistics are float. The LayerNorm and RMSNorm forward
// passes and the RMSNorm backward give each row to one warp (8 rows per 256-thread block),
// QK-norm each head of a row. The LayerNorm backward gives each block block_rows
// consecutive rows and writes its partial weight and bias gradients to a scratch buffer that a
// second kernel adds up in block order, so the result does not depend on scheduling.

#define LAYERNORM_EPS 1e-5f
#define RMSNORM_EPS 1e-6f

template <typename T>
__device__ void layernorm_forward(T* out, float* mean, float* rstd, const T* inp,
                                  const float* weight, const float* bias, int rows, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= rows) return;
    const T* x = inp + (i64)row * C;
    float sum = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) sum += to_float(x[i]);
    const float mu = warp_sum(sum) / C;
    // The variance from the centred values, as on the CPU (not E[x²] − μ², which cancels).
    float sq = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) {
        const float d = to_float(x[i]) - mu;
        sq += d * d;
    }
    const float r = rsqrtf(warp_sum(sq) / C + LAYERNORM_EPS);
    T* y = out + (i64)row * C;
    for (int i = lane; i < C; i += WARP_SIZE) {
        y[i] = from_float<T>((to_float(x[i]) - mu) * r * weight[i] + bias[i]);
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// dinp += ∂L/∂inp; partials[block] = [Σ dout·x̂ | Σ dout] over the block's rows (2·C floats).
// Shared memory: 2·C floats, each channel owned by one thread, plus 32 floats of scratch.
template <typename T>
__device__ void layernorm_backward(T* dinp, float* partials, const T* dout, const T* inp,
                                   const float* weight, const float* mean, const float* rstd,
                                   int rows, int block_rows, int C) {
    extern __shared__ float shared[];
    float* dweight = shared;
    float* dbias = shared + C;
    float* scratch = shared + 2 * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        dweight[i] = 0.0f;
        dbias[i] = 0.0f;
    }
    const int first = blockIdx.x * block_rows;
    const int last = min(first + block_rows, rows);
    for (int row = first; row < last; row++) {
        const T* x = inp + (i64)row * C;
        const T* dy = dout + (i64)row * C;
        const float mu = mean[row];
        const float r = rstd[row];
        float dnorm_sum = 0.0f;
        float dnorm_xhat_sum = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const float xhat = (to_float(x[i]) - mu) * r;
            const float g = to_float(dy[i]);
            const float dnorm = g * weight[i];
            dnorm_sum += dnorm;
            dnorm_xhat_sum += dnorm * xhat;
            dweight[i] += g * xhat;
            dbias[i] += g;
        }
        const float dnorm_mean = block_sum(dnorm_sum, scratch) / C;
        const float dnorm_xhat_mean = block_sum(dnorm_xhat_sum, scratch) / C;
        T* dx = dinp + (i64)row * C;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const float xhat = (to_float(x[i]) - mu) * r;
            const float dnorm = to_float(dy[i]) * weight[i];
            const float g = r * (dnorm - dnorm_mean - xhat * dnorm_xhat_mean);
            dx[i] = from_float<T>(to_float(dx[i]) + g);
        }
    }
    float* partial = partials + (i64)blockIdx.x * 2 * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        partial[i] = dweight[i];
        partial[C + i] = dbias[i];
    }
}

// dweight += Σ_b partials[b][0..C], dbias += Σ_b partials[b][C..2C], in block order.
extern "C" __global__ void layernorm_backward_reduce(float* dweight, float* dbias,
                                                     const float* partials, int blocks, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 2 * C) return;
    float sum = 0.0f;
    for (int b = 0; b < blocks; b++) sum += partials[(i64)b * 2 * C + i];
    if (i < C) {
        dweight[i] += sum;
    } else {
        dbias[i - C] += sum;
    }
}

template <typename T>
__device__ void rmsnorm_forward(T* out, float* rstd, const T* inp, int rows, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= rows) return;
    const T* x = inp + (i64)row * C;
    float sq = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) {
        const float v = to_float(x[i]);
        sq += v * v;
    }
    const float r = rsqrtf(warp_sum(sq) / C + RMSNORM_EPS);
    T* y = out + (i64)row * C;
    for (int i = lane; i < C; i += WARP_SIZE) y[i] = from_float<T>(to_float(x[i]) * r);
    if (lane == 0) rstd[row] = r;
}

// dinp += rstd·(dy − y·mean(dy·y)) with y = x·rstd.
template <typename T>
__device__ void rmsnorm_backward(T* dinp, const T* dout, const T* inp, const float* rstd,
                                 int rows, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= rows) return;
    const T* x = inp + (i64)row * C;
    const T* dy = dout + (i64)row * C;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) dot += to_float(dy[i]) * to_float(x[i]) * r;
    const float dy_dot_y = warp_sum(dot) / C;
    T* dx = dinp + (i64)row * C;
    for (int i = lane; i < C; i += WARP_SIZE) {
        const float g = r * (to_float(dy[i]) - to_float(x[i]) * r * dy_dot_y);
        dx[i] = from_float<T>(to_float(dx[i]) + g);
    }
}

// QK-norm: each q head and each k head of qkv (rows, 3·C) RMS-normalised without weights
// (eps 1e-6), v copied; rstd (rows, 2·heads) keeps 1/rms of each q and k head. One warp per head
// of a row, 3·heads warps per row, the last heads of which copy v.
template <typename T>
__device__ void qk_norm_forward(T* out, float* rstd, const T* qkv, int rows, int heads, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const i64 warp = blockIdx.x * (i64)(blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (warp >= (i64)rows * 3 * heads) return;
    const int head_dim = C / heads;
    const i64 row = warp / (3 * heads);
    const int head = (int)(warp % (3 * heads));
    const i64 offset = row * 3 * C + (i64)head * head_dim;
    const T* x = qkv + offset;
    T* y = out + offset;
    if (head >= 2 * heads) {
        for (int i = lane; i < head_dim; i += WARP_SIZE) y[i] = x[i];
        return;
    }
    float sq = 0.0f;
    for (int i = lane; i < head_dim; i += WARP_SIZE) {
        const float v = to_float(x[i]);
        sq += v * v;
    }
    const float r = rsqrtf(warp_sum(sq) / head_dim + RMSNORM_EPS);
    for (int i = lane; i < head_dim; i += WARP_SIZE) y[i] = from_float<T>(to_float(x[i]) * r);
    if (lane == 0) rstd[row * 2 * heads + head] = r;
}

// dqkv = the input gradient, overwritten: rstd·(dy − y·mean(dy·y)) per q and k head, dout's v.
template <typename T>
__device__ void qk_norm_backward(T* dqkv, const T* dout, const T* qkv, const float* rstd,
                                 int rows, int heads, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const i64 warp = blockIdx.x * (i64)(blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (warp >= (i64)rows * 3 * heads) return;
    const int head_dim = C / heads;
    const i64 row = warp / (3 * heads);
    const int head = (int)(warp % (3 * heads));
    const i64 offset = row * 3 * C + (i64)head * head_dim;
    const T* x = qkv + offset;
    const T* dy = dout + offset;
    T* dx = dqkv + offset;
    if (head >= 2 * heads) {
        for (int i = lane; i < head_dim; i += WARP_SIZE) dx[i] = dy[i];
        return;
    }
    const float r = rstd[row * 2 * heads + head];
    float dot = 0.0f;
    for (int i = lane; i < head_dim; i += WARP_SIZE) dot += to_float(dy[i]) * to_float(x[i]) * r;
    const float dy_dot_y = warp_sum(dot) / head_dim;
    for (int i = lane; i < head_dim; i += WARP_SIZE) {
        dx[i] = from_float<T>(r * (to_float(dy[i]) - to_float(x[i]) * r * dy_dot_y));
    }
}

#define NORMS(T, S)                                                                              \
    extern "C" __global__ void layernorm_forward_##S(T* out, float* mean, float* rstd,           \
                                                     const T* inp, const float* weight,          \
                                                     const float* bias, int rows, int C) {       \
        layernorm_forward<T>(out, mean, rstd, inp, weight, bias, rows, C);                       \
    }                                                                                            \
    extern "C" __global__ void layernorm_backward_##S(                                           \
        T* dinp, float* partials, const T* dout, const T* inp, const float* weight,              \
        const float* mean, const float* rstd, int rows, int block_rows, int C) {                 \
        layernorm_backward<T>(dinp, partials, dout, inp, weight, mean, rstd, rows, block_rows,   \
                              C);                                                                \
    }                                                                                            \
    extern "C" __global__ void rmsnorm_forward_##S(T* out, float* rstd, const T* inp, int rows,  \
                                                   int C) {                                      \
        rmsnorm_forward<T>(out, rstd, inp, rows, C);                                             \
    }                                                                                            \
    extern "C" __global__ void rmsnorm_backward_##S(T* dinp, const T* dout, const T* inp,        \
                                                    const float* rstd, int rows, int C) {        \
        rmsnorm_backward<T>(dinp, dout, inp, rstd, rows, C);                                     \
    }                                                                                            \
    extern "C" __global__ void qk_norm_forward_##S(T* out, float* rstd, const T* qkv, int rows,  \
                                                   int heads, int C) {                           \
        qk_norm_forward<T>(out, rstd, qkv, rows, heads, C);                                      \
    }                                                                                            \
    extern "C" __global__ void qk_norm_backward_##S(T* dqkv, const T* dout, const T* qkv,        \
                                                    const float* rstd, int rows, int heads,      \
                                                    int C) {                                     \
        qk_norm_backward<T>(dqkv, dout, qkv, rstd, rows, heads, C);                              \
    }

NORMS(float, f32)
NORMS(bf16, bf16)
