// Causal flash attention (FlashAttention-2 structure), forward and backward, and the attention
// of one new position over a key/value cache; CPU twin: src/backend/cpu/attention.rs.
//
// Layout (as on the CPU): qkv is (rows, 3·C) of T, rows = batch·seq, each row q | k | v, each of
// those split into H heads of D = C/H; out and dout are (rows, C); lse and the backward's
// scratch `dvec` are (batch, H, seq) of float. Scores are scale·q·k with scale = 1/√D; key j is
// visible from query i when j ≤ i.
//
// No seq×seq matrix exists anywhere: the forward pass walks the key tiles of each query tile
// with an online softmax and keeps only each row's log-sum-exp; the backward pass recomputes
// the probabilities tile by tile from it. Every sum is in a fixed order and no kernel uses
// atomics, so results are deterministic. All arithmetic is float; tiles are converted to float
// as they are loaded into shared memory.
//
// These are the SIMT kernels (plain FMAs from shared memory), for every T and every head width
// up to ATTN_MAX_HEAD_DIM. Threads own work in two ways:
// - a warp owns ATTN_ROWS_PER_WARP rows of the tile its block keeps for the whole kernel (query
//   rows in the forward and dQ kernels, keys in the dK/dV kernel), and its lanes take the 32
//   rows of the tile that streams by (one key or query each) to compute scores, one per lane
//   and owned row;
// - for the products that follow (P·V, dS·K, Pᵀ·dO, dSᵀ·Q) the lanes own head dimensions
//   instead, d = lane + 32·k for k < ATTN_DIMS_PER_LANE, and take each streamed row's
//   probability from the lane that computed it with a shuffle.
// A block has 2, 4 or 8 warps, chosen by the launcher (src/backend/cuda/attention.rs) as the
// most that fit 48 KiB of shared memory for the head width, so its owned tile has 8, 16 or 32
// rows: always a divisor of the 32-row streamed tile, which the causal bounds below rely on.
// Streamed tiles are read lane by lane along a row and are stored with a row stride of D + 1,
// so that the 32 lanes hit 32 different banks; owned tiles are read by all lanes at the same
// address (a broadcast) and need no padding.

#define ATTN_ROWS_PER_WARP 4
#define ATTN_TILE 32
#define ATTN_MAX_HEAD_DIM 128
#define ATTN_DIMS_PER_LANE (ATTN_MAX_HEAD_DIM / WARP_SIZE)

// Rows [first, first + count) of one head (D wide, rows `row_stride` apart in `src`) into
// `tile` as float, rows `tile_stride` apart; rows at or past `seq` are zero. All threads of
// the block take part; the caller synchronises.
template <typename T>
__device__ void attn_load_tile(float* tile, int tile_stride, const T* src, i64 row_stride,
                               int first, int count, int seq, int D) {
    for (int i = threadIdx.x; i < count * D; i += blockDim.x) {
        const int r = i / D;
        const int d = i - r * D;
        const int t = first + r;
        tile[r * tile_stride + d] = t < seq ? to_float(src[(i64)t * row_stride + d]) : 0.0f;
    }
}

// 1/√D, rounded as the CPU's 1/sqrt(D) (both IEEE-exact operations without fast math).
__device__ __forceinline__ float attn_scale(int D) { return 1.0f / sqrtf((float)D); }

// Forward. Grid (query tiles, batch·H), blockDim = 32·warps; each block owns query rows
// [q0, q0 + rows), rows = 4·warps, and walks the key tiles of 32 from key 0 to the last key
// its last row sees. Shared memory (floats): Q tile rows×D | K tile 32×(D+1) | V tile 32×D.
//
// Per key tile, lane j scores key k0 + j against each of its warp's 4 query rows; the row's
// maximum and sum come from warp reductions, and the online softmax rescales the running sum l
// and the output accumulator by exp(m_old − m_new). Every tile a block visits starts at or
// before the block's first query (k0 ≤ q0, since rows divides 32), so each row has a visible
// key in every tile and its running maximum is finite after the first. Query rows past seq
// (the last tile's tail) compute on zero rows and are not written.
//
// Query tiles are taken in reverse order of blockIdx.x: the last ones have the most keys to
// visit, and starting them first shortens the tail of the launch.
template <typename T>
__device__ void attention_forward(T* out, float* lse, const T* qkv, int seq, int H, int C,
                                  int D) {
    extern __shared__ float shared[];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int rows = (blockDim.x / WARP_SIZE) * ATTN_ROWS_PER_WARP;
    float* q_tile = shared;
    float* k_tile = q_tile + rows * D;
    float* v_tile = k_tile + ATTN_TILE * (D + 1);

    const int bh = blockIdx.y;
    const int b = bh / H;
    const int h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * rows;
    const i64 stride = 3 * (i64)C;
    const T* q_src = qkv + (i64)b * seq * stride + (i64)h * D;
    const T* k_src = q_src + C;
    const T* v_src = q_src + 2 * C;
    const float scale = attn_scale(D);

    attn_load_tile(q_tile, D, q_src, stride, q0, rows, seq, D);

    float m[ATTN_ROWS_PER_WARP], l[ATTN_ROWS_PER_WARP];
    float acc[ATTN_ROWS_PER_WARP][ATTN_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) acc[i][k] = 0.0f;
    }
    const float* my_q = q_tile + warp * ATTN_ROWS_PER_WARP * D;
    const int last_key = min(seq, q0 + rows) - 1;
    for (int k0 = 0; k0 <= last_key; k0 += ATTN_TILE) {
        __syncthreads();  // the previous tile is no longer read (and Q is loaded)
        attn_load_tile(k_tile, D + 1, k_src, stride, k0, ATTN_TILE, seq, D);
        attn_load_tile(v_tile, D, v_src, stride, k0, ATTN_TILE, seq, D);
        __syncthreads();

        float s[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) s[i] = 0.0f;
        const float* my_k = k_tile + lane * (D + 1);
        for (int d = 0; d < D; d++) {
            const float kd = my_k[d];
#pragma unroll
            for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) s[i] = fmaf(my_q[i * D + d], kd, s[i]);
        }
        const int key = k0 + lane;
        float p[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
            const int q = q0 + warp * ATTN_ROWS_PER_WARP + i;
            const float score = key <= q ? s[i] * scale : NEG_INF;
            const float m_new = fmaxf(m[i], warp_max(score));
            // m_new is finite (see above); the guard only keeps a fully masked row at zero.
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;
            p[i] = expf(score - m_use);  // 0 for a masked key
            const float alpha = expf(m[i] - m_use);  // 0 on the first tile
            l[i] = l[i] * alpha + warp_sum(p[i]);
            m[i] = m_new;
#pragma unroll
            for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) acc[i][k] *= alpha;
        }
        // acc += P·V: key j's probability from lane j, dimension d = lane + 32k from V.
        for (int j = 0; j < ATTN_TILE; j++) {
            float pj[ATTN_ROWS_PER_WARP];
#pragma unroll
            for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) pj[i] = __shfl_sync(FULL_MASK, p[i], j);
#pragma unroll
            for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
                const int d = lane + k * WARP_SIZE;
                if (d < D) {
                    const float vd = v_tile[j * D + d];
#pragma unroll
                    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) acc[i][k] = fmaf(pj[i], vd, acc[i][k]);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
        const int q = q0 + warp * ATTN_ROWS_PER_WARP + i;
        if (q >= seq) continue;
        T* y = out + ((i64)b * seq + q) * C + (i64)h * D;
        const float inv = 1.0f / l[i];
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
            const int d = lane + k * WARP_SIZE;
            if (d < D) y[d] = from_float<T>(acc[i][k] * inv);
        }
        if (lane == 0) lse[(i64)bh * seq + q] = m[i] + logf(l[i]);
    }
}

// Backward, step 1: dvec[b, h, t] = Σ_d dout·out over head h of row (b, t), the term the
// softmax backward subtracts (dS = P∘(dP − dvec)). One warp per (b, h, t), 8 per block of 256;
// `count` = batch·H·seq.
template <typename T>
__device__ void attention_backward_preprocess(float* dvec, const T* dout, const T* out,
                                              int count, int seq, int H, int C, int D) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int w = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (w >= count) return;
    const int t = w % seq;
    const int bh = w / seq;
    const int b = bh / H;
    const int h = bh % H;
    const i64 offset = ((i64)b * seq + t) * C + (i64)h * D;
    float sum = 0.0f;
    for (int d = lane; d < D; d += WARP_SIZE) {
        sum += to_float(dout[offset + d]) * to_float(out[offset + d]);
    }
    sum = warp_sum(sum);
    if (lane == 0) dvec[w] = sum;
}

// Backward, step 2: dK and dV. Grid (key tiles, batch·H), blockDim = 32·warps; each block owns
// keys [k0, k0 + keys), keys = 4·warps, and walks the query tiles of 32 from the one holding k0
// to the end of the sequence (earlier queries see none of its keys). Shared memory (floats):
// K keys×D | V keys×D | Q tile 32×(D+1) | dO tile 32×(D+1).
//
// Per query tile, lane r takes query q = q_start + r and, for each of its warp's 4 keys,
// recomputes P = exp(scale·q·k − lse[q]) (0 where the key is in q's future or q is past the
// sequence) and dP = dO·v, so dS = P∘(dP − dvec[q]); then dV += Pᵀ·dO and dK += dSᵀ·Q with
// lanes over head dimensions. dK is scaled once at the end. Writes the k and v parts of dqkv
// for the block's keys, whole (overwrites).
template <typename T>
__device__ void attention_backward_dkv(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                       const float* dvec, int seq, int H, int C, int D) {
    extern __shared__ float shared[];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int keys = (blockDim.x / WARP_SIZE) * ATTN_ROWS_PER_WARP;
    float* k_tile = shared;
    float* v_tile = k_tile + keys * D;
    float* q_tile = v_tile + keys * D;
    float* do_tile = q_tile + ATTN_TILE * (D + 1);

    const int bh = blockIdx.y;
    const int b = bh / H;
    const int h = bh % H;
    const int k0 = blockIdx.x * keys;
    const i64 stride = 3 * (i64)C;
    const T* q_src = qkv + (i64)b * seq * stride + (i64)h * D;
    const T* do_src = dout + (i64)b * seq * C + (i64)h * D;
    const float* row_lse = lse + (i64)bh * seq;
    const float* row_dvec = dvec + (i64)bh * seq;
    const float scale = attn_scale(D);

    attn_load_tile(k_tile, D, q_src + C, stride, k0, keys, seq, D);
    attn_load_tile(v_tile, D, q_src + 2 * C, stride, k0, keys, seq, D);

    float dk[ATTN_ROWS_PER_WARP][ATTN_DIMS_PER_LANE], dv[ATTN_ROWS_PER_WARP][ATTN_DIMS_PER_LANE];
#pragma unroll
    for (int c = 0; c < ATTN_ROWS_PER_WARP; c++) {
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
            dk[c][k] = 0.0f;
            dv[c][k] = 0.0f;
        }
    }
    const float* my_k = k_tile + warp * ATTN_ROWS_PER_WARP * D;
    const float* my_v = v_tile + warp * ATTN_ROWS_PER_WARP * D;
    for (int q_start = (k0 / ATTN_TILE) * ATTN_TILE; q_start < seq; q_start += ATTN_TILE) {
        __syncthreads();  // the previous tile is no longer read (and K, V are loaded)
        attn_load_tile(q_tile, D + 1, q_src, stride, q_start, ATTN_TILE, seq, D);
        attn_load_tile(do_tile, D + 1, do_src, (i64)C, q_start, ATTN_TILE, seq, D);
        __syncthreads();

        const int q = q_start + lane;
        const bool valid = q < seq;
        const float q_lse = valid ? row_lse[q] : 0.0f;
        const float q_dvec = valid ? row_dvec[q] : 0.0f;
        float s[ATTN_ROWS_PER_WARP], dp[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int c = 0; c < ATTN_ROWS_PER_WARP; c++) {
            s[c] = 0.0f;
            dp[c] = 0.0f;
        }
        const float* my_qrow = q_tile + lane * (D + 1);
        const float* my_dorow = do_tile + lane * (D + 1);
        for (int d = 0; d < D; d++) {
            const float qd = my_qrow[d];
            const float dod = my_dorow[d];
#pragma unroll
            for (int c = 0; c < ATTN_ROWS_PER_WARP; c++) {
                s[c] = fmaf(qd, my_k[c * D + d], s[c]);
                dp[c] = fmaf(dod, my_v[c * D + d], dp[c]);
            }
        }
        float p[ATTN_ROWS_PER_WARP], ds[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int c = 0; c < ATTN_ROWS_PER_WARP; c++) {
            const int key = k0 + warp * ATTN_ROWS_PER_WARP + c;
            p[c] = valid && key <= q ? expf(s[c] * scale - q_lse) : 0.0f;
            ds[c] = p[c] * (dp[c] - q_dvec);
        }
        // dV += Pᵀ·dO, dK += dSᵀ·Q: query r's values from lane r, dimension d = lane + 32k.
        for (int r = 0; r < ATTN_TILE; r++) {
            float pr[ATTN_ROWS_PER_WARP], dsr[ATTN_ROWS_PER_WARP];
#pragma unroll
            for (int c = 0; c < ATTN_ROWS_PER_WARP; c++) {
                pr[c] = __shfl_sync(FULL_MASK, p[c], r);
                dsr[c] = __shfl_sync(FULL_MASK, ds[c], r);
            }
#pragma unroll
            for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
                const int d = lane + k * WARP_SIZE;
                if (d < D) {
                    const float dod = do_tile[r * (D + 1) + d];
                    const float qd = q_tile[r * (D + 1) + d];
#pragma unroll
                    for (int c = 0; c < ATTN_ROWS_PER_WARP; c++) {
                        dv[c][k] = fmaf(pr[c], dod, dv[c][k]);
                        dk[c][k] = fmaf(dsr[c], qd, dk[c][k]);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int c = 0; c < ATTN_ROWS_PER_WARP; c++) {
        const int key = k0 + warp * ATTN_ROWS_PER_WARP + c;
        if (key >= seq) continue;
        T* dk_row = dqkv + ((i64)b * seq + key) * stride + C + (i64)h * D;
        T* dv_row = dk_row + C;
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
            const int d = lane + k * WARP_SIZE;
            if (d < D) {
                dk_row[d] = from_float<T>(dk[c][k] * scale);
                dv_row[d] = from_float<T>(dv[c][k]);
            }
        }
    }
}

// Backward, step 3: dQ. Grid (query tiles, batch·H), blockDim = 32·warps; each block owns query
// rows [q0, q0 + rows), rows = 4·warps, and walks the key tiles of 32 up to its last row's
// diagonal, as the forward pass does. Shared memory (floats): Q rows×D | dO rows×D |
// K tile 32×(D+1) | V tile 32×(D+1).
//
// Per key tile, lane j takes key k0 + j and, for each of its warp's 4 query rows, recomputes
// P and dP, so dS = P∘(dP − dvec); then dQ += dS·K with lanes over head dimensions, scaled once
// at the end. Writes the q part of dqkv for the block's rows, whole (overwrites). Reverse tile
// order, as the forward pass.
template <typename T>
__device__ void attention_backward_dq(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                      const float* dvec, int seq, int H, int C, int D) {
    extern __shared__ float shared[];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int rows = (blockDim.x / WARP_SIZE) * ATTN_ROWS_PER_WARP;
    float* q_tile = shared;
    float* do_tile = q_tile + rows * D;
    float* k_tile = do_tile + rows * D;
    float* v_tile = k_tile + ATTN_TILE * (D + 1);

    const int bh = blockIdx.y;
    const int b = bh / H;
    const int h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * rows;
    const i64 stride = 3 * (i64)C;
    const T* q_src = qkv + (i64)b * seq * stride + (i64)h * D;
    const T* do_src = dout + (i64)b * seq * C + (i64)h * D;
    const float scale = attn_scale(D);

    attn_load_tile(q_tile, D, q_src, stride, q0, rows, seq, D);
    attn_load_tile(do_tile, D, do_src, (i64)C, q0, rows, seq, D);
    float q_lse[ATTN_ROWS_PER_WARP], q_dvec[ATTN_ROWS_PER_WARP];
    float acc[ATTN_ROWS_PER_WARP][ATTN_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
        const int q = q0 + warp * ATTN_ROWS_PER_WARP + i;
        q_lse[i] = q < seq ? lse[(i64)bh * seq + q] : 0.0f;
        q_dvec[i] = q < seq ? dvec[(i64)bh * seq + q] : 0.0f;
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) acc[i][k] = 0.0f;
    }
    const float* my_q = q_tile + warp * ATTN_ROWS_PER_WARP * D;
    const float* my_do = do_tile + warp * ATTN_ROWS_PER_WARP * D;
    const int last_key = min(seq, q0 + rows) - 1;
    for (int k0 = 0; k0 <= last_key; k0 += ATTN_TILE) {
        __syncthreads();  // the previous tile is no longer read (and Q, dO are loaded)
        attn_load_tile(k_tile, D + 1, q_src + C, stride, k0, ATTN_TILE, seq, D);
        attn_load_tile(v_tile, D + 1, q_src + 2 * C, stride, k0, ATTN_TILE, seq, D);
        __syncthreads();

        float s[ATTN_ROWS_PER_WARP], dp[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
            s[i] = 0.0f;
            dp[i] = 0.0f;
        }
        const float* my_krow = k_tile + lane * (D + 1);
        const float* my_vrow = v_tile + lane * (D + 1);
        for (int d = 0; d < D; d++) {
            const float kd = my_krow[d];
            const float vd = my_vrow[d];
#pragma unroll
            for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
                s[i] = fmaf(my_q[i * D + d], kd, s[i]);
                dp[i] = fmaf(my_do[i * D + d], vd, dp[i]);
            }
        }
        const int key = k0 + lane;
        float ds[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
            const int q = q0 + warp * ATTN_ROWS_PER_WARP + i;
            const float p = q < seq && key <= q ? expf(s[i] * scale - q_lse[i]) : 0.0f;
            ds[i] = p * (dp[i] - q_dvec[i]);
        }
        // dQ += dS·K: key j's dS from lane j, dimension d = lane + 32k from K.
        for (int j = 0; j < ATTN_TILE; j++) {
            float dsj[ATTN_ROWS_PER_WARP];
#pragma unroll
            for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) dsj[i] = __shfl_sync(FULL_MASK, ds[i], j);
#pragma unroll
            for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
                const int d = lane + k * WARP_SIZE;
                if (d < D) {
                    const float kd = k_tile[j * (D + 1) + d];
#pragma unroll
                    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) acc[i][k] = fmaf(dsj[i], kd, acc[i][k]);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
        const int q = q0 + warp * ATTN_ROWS_PER_WARP + i;
        if (q >= seq) continue;
        T* dq_row = dqkv + ((i64)b * seq + q) * stride + (i64)h * D;
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
            const int d = lane + k * WARP_SIZE;
            if (d < D) dq_row[d] = from_float<T>(acc[i][k] * scale);
        }
    }
}

// Decode: the q part of one qkv row (head h at qkv[h·D..]) against `len` cached keys and
// values ((len, C) rows, the new position's last; no mask: every cached key is visible).
// Grid (H), blockDim = 32·warps: warp w takes keys w, w + warps, ..., each scored with a warp
// sum, with an online softmax per warp over the dimensions its lanes own; then the warps'
// (max, sum, accumulator) are combined in warp order through shared memory, warps×(D + 2)
// floats. Writes the C-wide out's head h.
template <typename T>
__device__ void attention_decode(T* out, const T* qkv, const T* keys, const T* values, int len,
                                 int C, int D) {
    extern __shared__ float shared[];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    const int h = blockIdx.x;
    const float scale = attn_scale(D);

    float qr[ATTN_DIMS_PER_LANE], acc[ATTN_DIMS_PER_LANE];
#pragma unroll
    for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
        const int d = lane + k * WARP_SIZE;
        qr[k] = d < D ? to_float(qkv[(i64)h * D + d]) : 0.0f;
        acc[k] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int j = warp; j < len; j += warps) {
        const T* key = keys + (i64)j * C + (i64)h * D;
        const T* value = values + (i64)j * C + (i64)h * D;
        float partial = 0.0f;
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
            const int d = lane + k * WARP_SIZE;
            if (d < D) partial = fmaf(qr[k], to_float(key[d]), partial);
        }
        const float s = warp_sum(partial) * scale;
        const float m_new = fmaxf(m, s);
        const float alpha = expf(m - m_new);  // 0 for the warp's first key
        const float p = expf(s - m_new);
        l = l * alpha + p;
#pragma unroll
        for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
            const int d = lane + k * WARP_SIZE;
            acc[k] = acc[k] * alpha + (d < D ? p * to_float(value[d]) : 0.0f);
        }
        m = m_new;
    }
    // A warp that got no key (len < warps) leaves m = −∞ and l = 0, which weigh nothing below.
    float* mine = shared + warp * (D + 2);
    if (lane == 0) {
        mine[0] = m;
        mine[1] = l;
    }
#pragma unroll
    for (int k = 0; k < ATTN_DIMS_PER_LANE; k++) {
        const int d = lane + k * WARP_SIZE;
        if (d < D) mine[2 + d] = acc[k];
    }
    __syncthreads();
    float m_all = NEG_INF;
    for (int w = 0; w < warps; w++) m_all = fmaxf(m_all, shared[w * (D + 2)]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < warps; w++) {
            const float* theirs = shared + w * (D + 2);
            const float weight = expf(theirs[0] - m_all);
            num += weight * theirs[2 + d];
            den += weight * theirs[1];
        }
        out[(i64)h * D + d] = from_float<T>(num / den);
    }
}

#define ATTENTION(T, S)                                                                          \
    extern "C" __global__ void attention_forward_##S(T* out, float* lse, const T* qkv, int seq,  \
                                                     int H, int C, int D) {                      \
        attention_forward<T>(out, lse, qkv, seq, H, C, D);                                       \
    }                                                                                            \
    extern "C" __global__ void attention_backward_preprocess_##S(                                \
        float* dvec, const T* dout, const T* out, int count, int seq, int H, int C, int D) {     \
        attention_backward_preprocess<T>(dvec, dout, out, count, seq, H, C, D);                  \
    }                                                                                            \
    extern "C" __global__ void attention_backward_dkv_##S(T* dqkv, const T* dout, const T* qkv,  \
                                                          const float* lse, const float* dvec,   \
                                                          int seq, int H, int C, int D) {        \
        attention_backward_dkv<T>(dqkv, dout, qkv, lse, dvec, seq, H, C, D);                     \
    }                                                                                            \
    extern "C" __global__ void attention_backward_dq_##S(T* dqkv, const T* dout, const T* qkv,   \
                                                         const float* lse, const float* dvec,    \
                                                         int seq, int H, int C, int D) {         \
        attention_backward_dq<T>(dqkv, dout, qkv, lse, dvec, seq, H, C, D);                      \
    }                                                                                            \
    extern "C" __global__ void attention_decode_##S(T* out, const T* qkv, const T* keys,         \
                                                    const T* values, int len, int C, int D) {    \
        attention_decode<T>(out, qkv, keys, values, len, C, D);                                  \
    }

ATTENTION(float, f32)
ATTENTION(bf16, bf16)
