// Fused soft-capped softmax cross-entropy; CPU twin: src/backend/cpu/loss.rs.
//
// One block per row of padded_vocab logits (T). The logits are capped on the fly,
// z = cap·tanh(logit/cap) (no cap when cap is 0), the row's log-sum-exp over the first vocab
// is found in one pass with a running maximum, and the loss lse − z[target] goes to losses[row]
// (float). With write_grad the row is then overwritten in place with
// grad_scale·(softmax(z) − onehot(target))·(1 − (z/cap)²), and the padding with zeros; without
// it the first vocab logits are overwritten with their capped values (as the CPU does), for
// callers that read the logits of an evaluation pass.
// A target of 0xffffffff (IGNORE_TARGET) gives loss 0 and a zero row; any other target
// outside the vocabulary gives a NaN loss (the launcher checks targets before it launches).

#define IGNORE_TARGET 0xffffffffu

__device__ __forceinline__ float capped(float z, float cap) {
    return cap > 0.0f ? cap * tanhf(z / cap) : z;
}

template <typename T>
__device__ void softmax_cross_entropy(T* logits, float* losses, const u32* targets, int vocab,
                                      int padded_vocab, float cap, float grad_scale,
                                      int write_grad) {
    __shared__ float scratch[WARP_SIZE];
    const int row = blockIdx.x;
    T* z = logits + (i64)row * padded_vocab;
    const u32 target = targets[row];
    if (target == IGNORE_TARGET || target >= (u32)vocab) {
        if (threadIdx.x == 0) losses[row] = target == IGNORE_TARGET ? 0.0f : __int_as_float(0x7fc00000);
        if (write_grad) {
            for (int j = threadIdx.x; j < padded_vocab; j += blockDim.x) z[j] = from_float<T>(0.0f);
        }
        return;
    }
    // Read before any thread overwrites the row with gradients.
    const float z_target = capped(to_float(z[target]), cap);

    // Each thread's running maximum and sum of exp(z − maximum) over its strided elements.
    float max = NEG_INF;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = capped(to_float(z[j]), cap);
        if (v > max) {
            sum = sum * expf(max - v) + 1.0f;
            max = v;
        } else {
            sum += expf(v - max);
        }
    }
    const float row_max = block_max(max, scratch);
    // A thread that saw no element has sum 0, and expf(−inf) is 0: it adds nothing.
    const float row_sum = block_sum(sum * expf(max - row_max), scratch);
    const float lse = row_max + logf(row_sum);
    if (threadIdx.x == 0) losses[row] = lse - z_target;
    // Every thread has read the row (the block reductions end in barriers), and each writes
    // only the elements it reads.
    if (!write_grad) {
        if (cap > 0.0f) {
            for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
                z[j] = from_float<T>(capped(to_float(z[j]), cap));
            }
        }
        return;
    }
    for (int j = threadIdx.x; j < padded_vocab; j += blockDim.x) {
        float g = 0.0f;
        if (j < vocab) {
            const float v = capped(to_float(z[j]), cap);
            const float p = expf(v - lse);
            const float slope = cap > 0.0f ? 1.0f - (v / cap) * (v / cap) : 1.0f;
            g = grad_scale * (p - (j == (int)target ? 1.0f : 0.0f)) * slope;
        }
        z[j] = from_float<T>(g);
    }
}

#define LOSS(T, S)                                                                               \
    extern "C" __global__ void __launch_bounds__(1024)                                           \
        softmax_cross_entropy_##S(T* logits, float* losses,                                      \
                                                         const u32* targets, int vocab,          \
                                                         int padded_vocab, float cap,            \
                                                         float grad_scale, int write_grad) {     \
        softmax_cross_entropy<T>(logits, losses, targets, vocab, padded_vocab, cap, grad_scale,  \
                                 write_grad);                                                    \
    }

LOSS(float, f32)
LOSS(bf16, bf16)
