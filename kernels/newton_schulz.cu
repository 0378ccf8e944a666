// Newton–Schulz for Muon; CPU twin: newton_schulz in src/optim/muon.rs (the matrix products go
// through cuBLASLt, src/backend/cuda/matmul.rs). Only what the products cannot do is here.

// x[m] ← (x[m]/(‖x[m]‖_F + eps))·scale for each of the gridDim.x matrices of `size` floats,
// back to back, one block per matrix. The CPU divides and then scales, in float; so does this.
// Each thread's sum of squares in double, the block's in float, as reduce.cu does.
extern "C" __global__ void frobenius_normalize(float* x, i64 size, float eps, float scale) {
    __shared__ float scratch[WARP_SIZE];
    float* m = x + blockIdx.x * size;
    double own = 0.0;
    for (i64 i = threadIdx.x; i < size; i += blockDim.x) own += (double)m[i] * m[i];
    const float norm = sqrtf(block_sum((float)own, scratch));
    const float factor = 1.0f / (norm + eps);
    for (i64 i = threadIdx.x; i < size; i += blockDim.x) m[i] = m[i] * factor * scale;
}
