// Reductions over flat float ranges: the sum (of the losses) and the sum of squares behind the
// global gradient norm; CPU twins: sum and sum_squares in src/backend/cpu/mod.rs.
//
// Deterministic in two launches: a fixed number of blocks (chosen by the launcher from n
// alone, never from the device) each write one partial sum, and one thread adds the partials
// in order, in double.

// partials[blockIdx.x] = Σ x[i] (or x[i]²) over the block's grid-stride share of the range.
template <bool SQUARES>
__device__ void sum_partial(float* partials, const float* x, i64 n) {
    __shared__ float scratch[WARP_SIZE];
    // Each thread's many terms in double, as the CPU sums; the block's 256 sums in float.
    double own = 0.0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        own += SQUARES ? (double)x[i] * x[i] : (double)x[i];
    }
    float sum = block_sum((float)own, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

extern "C" __global__ void sum_squares_partial(float* partials, const float* x, i64 n) {
    sum_partial<true>(partials, x, n);
}

extern "C" __global__ void sum_values_partial(float* partials, const float* x, i64 n) {
    sum_partial<false>(partials, x, n);
}

// total[0] = Σ partials, in order; launched as one thread.
extern "C" __global__ void sum_partials(double* total, const float* partials, int count) {
    double sum = 0.0;
    for (int b = 0; b < count; b++) sum += partials[b];
    total[0] = sum;
}
