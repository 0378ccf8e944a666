// The matrix preconditioners' helpers (Shampoo, SOAP): the grafted Adam direction, layer-wise
// norm matching, blocking matrices into tiles and back, the eigenvector scaling behind Shampoo's
// inverse roots, and the conversions and column permutations around the cuSOLVER calls
// (src/backend/cuda/solver.rs). CPU twins: adam_direction, match_norms, pack_blocks,
// unpack_blocks in src/backend/cpu/optim.rs; scale_eigenvectors, symmetric_eigen and
// orthonormalize in src/backend/cpu/linalg.rs. All matrices are row-major, as everywhere else;
// cuSOLVER reads and writes column-major, so the conversions here transpose where needed.

// out = m̂/(√v̂ + ε) after m ← β1·m + (1 − β1)·g, v ← β2·v + (1 − β2)·g², with the host's
// bias1 = 1 − β1ᵗ and bias2_sqrt = √(1 − β2ᵗ) computed in float as the CPU does; the division
// order is the CPU's: m / bias1 / (√v / bias2_sqrt + ε).
extern "C" __global__ void adam_direction(float* out, const float* grad, float* m, float* v, i64 n,
                                          float beta1, float beta2, float eps, float bias1,
                                          float bias2_sqrt) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        out[i] = mi / bias1 / (sqrtf(vi) / bias2_sqrt + eps);
    }
}

// x[p] ← x[p]·‖target[p]‖/(‖x[p]‖ + 1e-16) for each of the gridDim.x parts of `size` floats,
// one block per part (a zero part stays zero). Each thread's sums of squares in double, the
// block's in float, as reduce.cu and frobenius_normalize do; deterministic.
extern "C" __global__ void match_norms(float* x, const float* target, i64 size) {
    __shared__ float scratch[WARP_SIZE];
    float* part = x + blockIdx.x * size;
    const float* reference = target + blockIdx.x * size;
    double own_x = 0.0, own_target = 0.0;
    for (i64 i = threadIdx.x; i < size; i += blockDim.x) {
        own_x += (double)part[i] * part[i];
        own_target += (double)reference[i] * reference[i];
    }
    const float norm_x = sqrtf(block_sum((float)own_x, scratch));
    const float norm_target = sqrtf(block_sum((float)own_target, scratch));
    const float factor = norm_target / (norm_x + 1e-16f);
    for (i64 i = threadIdx.x; i < size; i += blockDim.x) part[i] *= factor;
}

// The element of `matrices` (count row-major rows × cols matrices) that element e of one tile
// set of the packed form holds (TileSet in src/backend/mod.rs): `tiles` tiles of
// tile_rows × tile_cols, row-major, back to back; tile t is tile (t % per_matrix) of matrix
// t / per_matrix in a grid_rows × grid_cols grid (row by row) starting at (row0, col0).
__device__ __forceinline__ i64 tile_source(i64 e, int rows, int cols, int tile_rows,
                                           int tile_cols, int grid_rows, int grid_cols, int row0,
                                           int col0) {
    const i64 tile_len = (i64)tile_rows * tile_cols;
    const i64 tile = e / tile_len;
    const int within = (int)(e % tile_len);
    const int r = within / tile_cols, c = within % tile_cols;
    const i64 per_matrix = (i64)grid_rows * grid_cols;
    const i64 matrix = tile / per_matrix;
    const int index = (int)(tile % per_matrix);
    const int row = row0 + index / grid_cols * tile_rows + r;
    const int col = col0 + index % grid_cols * tile_cols + c;
    return matrix * rows * cols + (i64)row * cols + col;
}

// blocks[e] ← matrices[source(e)] for the n elements of one tile set (`blocks` points at the
// set's offset).
extern "C" __global__ void pack_tiles(float* blocks, const float* matrices, i64 n, int rows,
                                      int cols, int tile_rows, int tile_cols, int grid_rows,
                                      int grid_cols, int row0, int col0) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        blocks[e] = matrices[tile_source(e, rows, cols, tile_rows, tile_cols, grid_rows,
                                         grid_cols, row0, col0)];
    }
}

// The inverse: matrices[source(e)] ← blocks[e].
extern "C" __global__ void unpack_tiles(float* matrices, const float* blocks, i64 n, int rows,
                                        int cols, int tile_rows, int tile_cols, int grid_rows,
                                        int grid_cols, int row0, int col0) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        matrices[tile_source(e, rows, cols, tile_rows, tile_cols, grid_rows, grid_cols, row0,
                             col0)] = blocks[e];
    }
}

// out[b, i, j] = vectors[b, i, j]·(max(λ[b, j], 0) + eps)^exponent for `count` row-major n × n
// matrices whose columns are eigenvectors (so column j is scaled by eigenvalue j's factor).
// fmaxf, like Rust's f32::max, takes 0 over a NaN eigenvalue.
extern "C" __global__ void scale_eigenvectors(float* out, const float* vectors,
                                              const float* values, int n, i64 count,
                                              float exponent, float eps) {
    const i64 total = count * n * n;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const i64 b = e / ((i64)n * n);
        const int j = (int)(e % n);
        const float scale = powf(fmaxf(values[b * n + j], 0.0f) + eps, exponent);
        out[e] = vectors[e] * scale;
    }
}

// out[e] = in[e] widened to double, for the n elements of one matrix: a row-major symmetric
// matrix is its own transpose, so cuSOLVER may read it as it lies (its upper triangle,
// column-major, is the lower triangle of the row-major matrix).
extern "C" __global__ void widen(double* out, const float* in, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        out[i] = (double)in[i];
    }
}

// out[e] = in[e] rounded to float (the eigenvalues).
extern "C" __global__ void narrow(float* out, const double* in, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        out[i] = (float)in[i];
    }
}

// Column-major n × n `in` (cuSOLVER's eigenvectors, one per column) to row-major float `out`
// with the same columns: out[i·n + j] = in[i + j·n], i.e. a transpose of the storage.
extern "C" __global__ void narrow_transposed(float* out, const double* in, int n) {
    const i64 total = (i64)n * n;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const int i = (int)(e / n), j = (int)(e % n);
        out[e] = (float)in[i + (i64)j * n];
    }
}

// The column-major double matrix cuSOLVER's QR factors, from row-major float `in` with its
// columns taken in `order` (null: in place): column k of out is column order[k] of in, so
// out[i + k·n] = in[i·n + order[k]].
extern "C" __global__ void gather_columns(double* out, const float* in, const int* order, int n) {
    const i64 total = (i64)n * n;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const int k = (int)(e / n), i = (int)(e % n);
        const int j = order != 0 ? order[k] : k;
        out[e] = (double)in[(i64)i * n + j];
    }
}

// The inverse of gather_columns for Q: column k of the column-major `in` back to column
// order[k] of row-major float `out`: out[i·n + order[k]] = in[i + k·n].
extern "C" __global__ void scatter_columns(float* out, const double* in, const int* order, int n) {
    const i64 total = (i64)n * n;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const int k = (int)(e / n), i = (int)(e % n);
        const int j = order != 0 ? order[k] : k;
        out[(i64)i * n + j] = (float)in[e];
    }
}

// scores[b·n + j] = Σ_i rank_by[b, i, j]·a[b, i, j] over `count` row-major n × n matrices, one
// thread per column, in the CPU's order (i ascending, from zero) with separate roundings
// (__fmul_rn, __fadd_rn: no fused multiply-add), so that the scores, and the order the host
// sorts them into, are the CPU's bit for bit.
extern "C" __global__ void column_scores(float* scores, const float* a, const float* rank_by,
                                         int n, i64 count) {
    const i64 total = count * n;
    for (i64 c = blockIdx.x * (i64)blockDim.x + threadIdx.x; c < total; c += (i64)gridDim.x * blockDim.x) {
        const i64 b = c / n;
        const int j = (int)(c % n);
        const float* x = a + b * n * n + j;
        const float* r = rank_by + b * n * n + j;
        float sum = 0.0f;
        for (int i = 0; i < n; i++) sum = __fadd_rn(sum, __fmul_rn(r[(i64)i * n], x[(i64)i * n]));
        scores[c] = sum;
    }
}
