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

// The rules below follow ElementwiseRule's other variants term for term, in the CPU's order of
// operations, on f32 master weights and state; each takes the rule's scalars as they are (the
// host already decayed Adagrad's lr and knows SGD's first step). A null param_bf16 skips the
// bf16 copy of the new weights, as in adam_update.

// SGD (ElementwiseRule::Sgd), coupled decay: g ← g + wd·p; with a momentum buffer (non-null
// exactly when momentum ≠ 0) b ← g on the first step, else μ·b + (1 − dampening)·g, and
// p ← p − lr·(g + μ·b) with Nesterov, else p − lr·b; without one p ← p − lr·g.
extern "C" __global__ void sgd_update(float* param, const float* grad, float* momentum_buffer,
                                      bf16* param_bf16, i64 n, float lr, float momentum,
                                      float dampening, float weight_decay, int nesterov,
                                      int first_step) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float p = param[i];
        const float g = grad[i] + weight_decay * p;
        float updated;
        if (momentum_buffer != 0) {
            const float b = first_step ? g : momentum * momentum_buffer[i] + (1.0f - dampening) * g;
            momentum_buffer[i] = b;
            updated = p - lr * (nesterov ? g + momentum * b : b);
        } else {
            updated = p - lr * g;
        }
        param[i] = updated;
        if (param_bf16 != 0) param_bf16[i] = to_bf16(updated);
    }
}

// Adagrad (ElementwiseRule::Adagrad), coupled decay: s ← s + g²; p ← p − lr·g/(√s + ε).
extern "C" __global__ void adagrad_update(float* param, const float* grad, float* sum,
                                          bf16* param_bf16, i64 n, float lr, float eps,
                                          float weight_decay) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float p = param[i];
        const float g = grad[i] + weight_decay * p;
        const float s = sum[i] + g * g;
        const float updated = p - lr * g / (sqrtf(s) + eps);
        sum[i] = s;
        param[i] = updated;
        if (param_bf16 != 0) param_bf16[i] = to_bf16(updated);
    }
}

// RMSprop (ElementwiseRule::Rmsprop), coupled decay: v ← α·v + (1 − α)·g²; centered (grad_avg
// non-null): a ← α·a + (1 − α)·g and d = √(v − a²) + ε, else d = √v + ε; with a momentum buffer
// (non-null exactly when momentum ≠ 0) b ← μ·b + g/d and p ← p − lr·b, else p ← p − lr·g/d.
extern "C" __global__ void rmsprop_update(float* param, const float* grad, float* square_avg,
                                          float* grad_avg, float* momentum_buffer,
                                          bf16* param_bf16, i64 n, float lr, float alpha,
                                          float eps, float weight_decay, float momentum) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float p = param[i];
        const float g = grad[i] + weight_decay * p;
        const float v = alpha * square_avg[i] + (1.0f - alpha) * g * g;
        square_avg[i] = v;
        float mean_square = v;
        if (grad_avg != 0) {
            const float a = alpha * grad_avg[i] + (1.0f - alpha) * g;
            grad_avg[i] = a;
            mean_square = v - a * a;
        }
        float step = g / (sqrtf(mean_square) + eps);
        if (momentum_buffer != 0) {
            step = momentum * momentum_buffer[i] + step;
            momentum_buffer[i] = step;
        }
        const float updated = p - lr * step;
        param[i] = updated;
        if (param_bf16 != 0) param_bf16[i] = to_bf16(updated);
    }
}

// Adadelta (ElementwiseRule::Adadelta), coupled decay: v ← ρ·v + (1 − ρ)·g²;
// Δ = √(u + ε)/√(v + ε)·g; u ← ρ·u + (1 − ρ)·Δ²; p ← p − lr·Δ.
extern "C" __global__ void adadelta_update(float* param, const float* grad, float* square_avg,
                                           float* acc_delta, bf16* param_bf16, i64 n, float lr,
                                           float rho, float eps, float weight_decay) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float p = param[i];
        const float g = grad[i] + weight_decay * p;
        const float v = rho * square_avg[i] + (1.0f - rho) * g * g;
        const float delta = sqrtf(acc_delta[i] + eps) / sqrtf(v + eps) * g;
        square_avg[i] = v;
        acc_delta[i] = rho * acc_delta[i] + (1.0f - rho) * delta * delta;
        const float updated = p - lr * delta;
        param[i] = updated;
        if (param_bf16 != 0) param_bf16[i] = to_bf16(updated);
    }
}

// Schedule-Free AdamW (ElementwiseRule::ScheduleFree) on the weights y where gradients are taken,
// with z and v as state, term for term as the CPU: v ← β2·v + (1 − β2)·g²;
// d = g/(√(v/bias2) + ε) + wd·y; y ← y + c·(z − y) + y_step·d; z ← z − lr·d, where the host
// passes y_step = lr·(β1·(1 − c) − 1), computed in float as the CPU does.
extern "C" __global__ void schedule_free_update(float* param, const float* grad, float* z,
                                                float* v, bf16* param_bf16, i64 n, float lr,
                                                float beta2, float eps, float weight_decay,
                                                float averaging, float bias2, float y_step) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float y = param[i];
        const float zi = z[i];
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        const float d = g / (sqrtf(vi / bias2) + eps) + weight_decay * y;
        const float updated = y + averaging * (zi - y) + y_step * d;
        v[i] = vi;
        z[i] = zi - lr * d;
        param[i] = updated;
        if (param_bf16 != 0) param_bf16[i] = to_bf16(updated);
    }
}

// x ← x + weight·(end − x) (Schedule-Free's switch between y and x).
extern "C" __global__ void lerp(float* x, const float* end, i64 n, float weight) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        x[i] += weight * (end[i] - x[i]);
    }
}

// Muon's momentum: m ← β·m + (1 − β)·g; update ← (1 − β)·g + β·m with Nesterov, else m.
extern "C" __global__ void muon_momentum(float* update, float* momentum, const float* grad,
                                         i64 n, float beta, int nesterov) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float m = beta * momentum[i] + (1.0f - beta) * g;
        momentum[i] = m;
        update[i] = nesterov ? (1.0f - beta) * g + beta * m : m;
    }
}

// param ← param·keep − step_size·update, with keep = 1 − decay from the host (as the CPU).
extern "C" __global__ void apply_update(float* param, const float* update, i64 n,
                                        float step_size, float keep) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        param[i] = param[i] * keep - step_size * update[i];
    }
}
