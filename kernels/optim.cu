// Element-wise optimizer updates over a flat float range; CPU twin: src/backend/cpu/optim.rs.

// One Adam-family step (ElementwiseRule::Adam in src/backend/mod.rs), in place on param, m, v:
//   g ← g + coupled_decay·p                 (Adam's L2; 0 for AdamW and NAdamW)
//   m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
//   n = β1·m + (1 − β1)·g with Nesterov (NAdamW), else m
//   p ← p·keep − step_size·n/(√v/bias2_sqrt + ε)
// where the host passes keep = 1 − lr·wd (decoupled decay, else 1), step_size = lr/(1 − β1ᵗ)
// and bias2_sqrt = √(1 − β2ᵗ), computed in float exactly as the CPU rule does. With a non-null
// param_bf16 the new weights are also written there, as the bf16 copy the matrix products read.
extern "C" __global__ void adam_update(float* param, const float* grad, float* m, float* v,
                                       bf16* param_bf16, i64 n, float beta1, float beta2,
                                       float eps, float coupled_decay, float keep,
                                       float step_size, float bias2_sqrt, int nesterov) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float p = param[i];
        const float g = grad[i] + coupled_decay * p;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        const float numerator = nesterov ? beta1 * mi + (1.0f - beta1) * g : mi;
        const float updated = p * keep - step_size * numerator / (sqrtf(vi) / bias2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = updated;
        if (param_bf16 != 0) param_bf16[i] = to_bf16(updated);
    }
}
