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

// ---- Tensor-core path: T = bf16, D = 64 --------------------------------------------------
//
// The same three tiled kernels (forward, dK/dV, dQ; the backward's dvec comes from
// attention_backward_preprocess_bf16) with their products on tensor cores:
// mma.sync.m16n8k16 with bf16 operands and float accumulators, which sm_80 and sm_90 both run.
// Blocks of 4 warps own 64-row tiles (16 rows per warp, the mma's M) and stream 64-row tiles
// of the other side. Tiles live in shared memory as bf16, rows MMA_LD = 72 apart: a fragment
// load touches 8 rows at 4 consecutive words each, and the 36-word stride puts those 8 rows on
// 8 different groups of 4 banks. Operands needed as the mma's column-major B along the other
// axis (V in P·V, K in dS·K, Q and dO in dSᵀ·Q and Pᵀ·dO) are stored transposed as they are
// loaded. Probabilities and dS are rounded to bf16 to enter the second product (as
// FlashAttention-2 does); the softmax statistics, accumulators and all other arithmetic are
// float. The launcher picks these kernels for bf16 heads of 64 whose tensors are 4-byte aligned.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16), with g = lane / 4 and t = lane % 4:
// - A (16×16, row-major), 4 registers of 2 bf16: A[g][2t..2t+1], A[g+8][2t..2t+1],
//   A[g][2t+8..2t+9], A[g+8][2t+8..2t+9];
// - B (16×8, column-major), 2 registers: B[2t..2t+1][g], B[2t+8..2t+9][g];
// - C, D (16×8 float): C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1].
// So the accumulators of two adjacent n-tiles of a product are, packed in pairs, the A fragment
// of the next product's k-step, without going through shared memory.

#define MMA_D 64
#define MMA_TILE 64
#define MMA_LD 72
#define MMA_WARPS 4

// d += a·b for one m16n8k16 tile.
__device__ __forceinline__ void mma_bf16(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as bf16, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    return (u32)to_bf16(lo).bits | ((u32)to_bf16(hi).bits << 16);
}

// The two bf16 at (row, col) and (row, col + 1) of a shared tile; col is even.
__device__ __forceinline__ u32 tile_pair(const bf16* tile, int row, int col) {
    return *reinterpret_cast<const u32*>(tile + row * MMA_LD + col);
}

// The A fragment of rows [row, row + 16) and columns [col, col + 16) of a shared tile.
__device__ __forceinline__ void load_a(u32* a, const bf16* tile, int row, int col) {
    const int g = (threadIdx.x % WARP_SIZE) / 4;
    const int t = threadIdx.x % 4;
    a[0] = tile_pair(tile, row + g, col + 2 * t);
    a[1] = tile_pair(tile, row + g + 8, col + 2 * t);
    a[2] = tile_pair(tile, row + g, col + 2 * t + 8);
    a[3] = tile_pair(tile, row + g + 8, col + 2 * t + 8);
}

// d += A·B where B (16×8) is columns [k, k + 16) of rows [n, n + 8) of a shared tile, i.e. the
// tile holds Bᵀ row-major.
__device__ __forceinline__ void mma_tile(float* d, const u32* a, const bf16* tile, int n, int k) {
    const int g = (threadIdx.x % WARP_SIZE) / 4;
    const int t = threadIdx.x % 4;
    mma_bf16(d, a, tile_pair(tile, n + g, k + 2 * t), tile_pair(tile, n + g, k + 2 * t + 8));
}

// The A fragment for k-step kk of a product whose left operand is the float accumulators
// acc[8j..8j+7 columns][4] of a previous one: n-tiles 2kk and 2kk + 1, rounded to bf16.
__device__ __forceinline__ void acc_to_a(u32* a, const float (*acc)[4], int kk) {
    a[0] = pack_bf16(acc[2 * kk][0], acc[2 * kk][1]);
    a[1] = pack_bf16(acc[2 * kk][2], acc[2 * kk][3]);
    a[2] = pack_bf16(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
    a[3] = pack_bf16(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// Rows [first, first + 64) of one head (64 wide, rows `row_stride` apart in src, 4-byte
// aligned) into `tile` (row-major) and/or `tile_t` (transposed: tile_t[d][r]), either may be
// null; rows at or past seq are zero. All threads take part; the caller synchronises.
__device__ void mma_load_tile(bf16* tile, bf16* tile_t, const bf16* src, i64 row_stride,
                              int first, int seq) {
    for (int i = threadIdx.x; i < MMA_TILE * MMA_D / 2; i += blockDim.x) {
        const int r = i / (MMA_D / 2);
        const int c = (i % (MMA_D / 2)) * 2;
        const int row = first + r;
        const u32 v = row < seq ? *reinterpret_cast<const u32*>(src + (i64)row * row_stride + c) : 0u;
        if (tile != nullptr) *reinterpret_cast<u32*>(tile + r * MMA_LD + c) = v;
        if (tile_t != nullptr) {
            tile_t[c * MMA_LD + r].bits = (unsigned short)(v & 0xffffu);
            tile_t[(c + 1) * MMA_LD + r].bits = (unsigned short)(v >> 16);
        }
    }
}

// Forward on tensor cores. Grid (query tiles of 64, batch·H), 128 threads; warp w owns query
// rows q0 + 16w .. + 16 (this thread: rows q0 + 16w + g and + 8), its Q fragments in registers.
// Per key tile of 64: S = Q·Kᵀ (K row-major is Kᵀ's column-major), scale and causal mask, the
// online softmax on each row (row max over the 4 threads of a quad; each thread keeps a partial
// row sum l, reduced over the quad at the end, which is valid because every rescaling factor
// is the same across the quad), O += P·V (V transposed). k0 ≤ q0 for every tile visited, so
// each row's maximum is finite from the first tile on. Static shared memory: Q (then unused),
// K and Vᵀ tiles, 27 KiB.
extern "C" __global__ void __launch_bounds__(MMA_WARPS * WARP_SIZE)
    attention_forward_mma(bf16* out, float* lse, const bf16* qkv, int seq, int H, int C) {
    __shared__ __align__(16) bf16 q_tile[MMA_TILE * MMA_LD];
    __shared__ __align__(16) bf16 k_tile[MMA_TILE * MMA_LD];
    __shared__ __align__(16) bf16 v_t[MMA_D * MMA_LD];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int t = lane % 4;
    const int bh = blockIdx.y;
    const int b = bh / H;
    const int h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * MMA_TILE;
    const i64 stride = 3 * (i64)C;
    const bf16* q_src = qkv + (i64)b * seq * stride + (i64)h * MMA_D;
    const float scale = attn_scale(MMA_D);

    mma_load_tile(q_tile, nullptr, q_src, stride, q0, seq);
    __syncthreads();
    u32 qf[MMA_D / 16][4];
#pragma unroll
    for (int kk = 0; kk < MMA_D / 16; kk++) load_a(qf[kk], q_tile, warp * 16, kk * 16);
    const int row[2] = {q0 + warp * 16 + lane / 4, q0 + warp * 16 + lane / 4 + 8};

    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    float o[MMA_D / 8][4];
#pragma unroll
    for (int j = 0; j < MMA_D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    const int last_key = min(seq, q0 + MMA_TILE) - 1;
    for (int k0 = 0; k0 <= last_key; k0 += MMA_TILE) {
        __syncthreads();  // the previous tiles are no longer read
        mma_load_tile(k_tile, nullptr, q_src + C, stride, k0, seq);
        mma_load_tile(nullptr, v_t, q_src + 2 * C, stride, k0, seq);
        __syncthreads();

        float s[MMA_TILE / 8][4];
#pragma unroll
        for (int j = 0; j < MMA_TILE / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < MMA_D / 16; kk++) {
#pragma unroll
            for (int j = 0; j < MMA_TILE / 8; j++) mma_tile(s[j], qf[kk], k_tile, 8 * j, 16 * kk);
        }
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < MMA_TILE / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + 8 * j + 2 * t + (e & 1);
                s[j][e] = key <= row[e / 2] ? s[j][e] * scale : NEG_INF;
                mx[e / 2] = fmaxf(mx[e / 2], s[j][e]);
            }
        }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
            const float m_new = fmaxf(m[r], mx[r]);
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;  // never taken (see above)
            alpha[r] = expf(m[r] - m_use);
            m[r] = m_new;
            mx[r] = m_use;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int j = 0; j < MMA_TILE / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = expf(s[j][e] - mx[e / 2]);
                l[e / 2] += s[j][e];
            }
        }
#pragma unroll
        for (int j = 0; j < MMA_D / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) o[j][e] *= alpha[e / 2];
        }
#pragma unroll
        for (int kk = 0; kk < MMA_TILE / 16; kk++) {
            u32 pa[4];
            acc_to_a(pa, s, kk);
#pragma unroll
            for (int j = 0; j < MMA_D / 8; j++) mma_tile(o[j], pa, v_t, 8 * j, 16 * kk);
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (row[r] >= seq) continue;
        bf16* y = out + ((i64)b * seq + row[r]) * C + (i64)h * MMA_D;
        const float inv = 1.0f / l[r];
#pragma unroll
        for (int j = 0; j < MMA_D / 8; j++) {
            y[8 * j + 2 * t] = to_bf16(o[j][2 * r] * inv);
            y[8 * j + 2 * t + 1] = to_bf16(o[j][2 * r + 1] * inv);
        }
        if (t == 0) lse[(i64)bh * seq + row[r]] = m[r] + logf(l[r]);
    }
}

// dK and dV on tensor cores. Grid (key tiles of 64, batch·H), 128 threads; warp w owns keys
// k0 + 16w .. + 16, its K and V fragments in registers. Per query tile of 64 from k0 on, in two
// halves of 32 queries (to bound the registers): Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (Q and dO
// row-major), Pᵀ = exp(scale·Sᵀ − lse[query]) masked, dSᵀ = Pᵀ∘(dPᵀ − dvec[query]), then
// dV += Pᵀ·dO and dK += dSᵀ·Q (dO and Q transposed). Static shared memory: Q, Qᵀ, dO, dOᵀ
// tiles (the first two also stage K and V at the start) and the tile's lse and dvec, 37 KiB.
extern "C" __global__ void __launch_bounds__(MMA_WARPS * WARP_SIZE)
    attention_backward_dkv_mma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                               const float* dvec, int seq, int H, int C) {
    __shared__ __align__(16) bf16 q_tile[MMA_TILE * MMA_LD];
    __shared__ __align__(16) bf16 q_t[MMA_D * MMA_LD];
    __shared__ __align__(16) bf16 do_tile[MMA_TILE * MMA_LD];
    __shared__ __align__(16) bf16 do_t[MMA_D * MMA_LD];
    __shared__ float lse_tile[MMA_TILE];
    __shared__ float dvec_tile[MMA_TILE];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int t = lane % 4;
    const int bh = blockIdx.y;
    const int b = bh / H;
    const int h = bh % H;
    const int k0 = blockIdx.x * MMA_TILE;
    const i64 stride = 3 * (i64)C;
    const bf16* q_src = qkv + (i64)b * seq * stride + (i64)h * MMA_D;
    const bf16* do_src = dout + (i64)b * seq * C + (i64)h * MMA_D;
    const float scale = attn_scale(MMA_D);

    mma_load_tile(q_tile, nullptr, q_src + C, stride, k0, seq);
    mma_load_tile(do_tile, nullptr, q_src + 2 * C, stride, k0, seq);
    __syncthreads();
    u32 kf[MMA_D / 16][4], vf[MMA_D / 16][4];
#pragma unroll
    for (int kk = 0; kk < MMA_D / 16; kk++) {
        load_a(kf[kk], q_tile, warp * 16, kk * 16);
        load_a(vf[kk], do_tile, warp * 16, kk * 16);
    }
    const int key[2] = {k0 + warp * 16 + lane / 4, k0 + warp * 16 + lane / 4 + 8};

    float dk[MMA_D / 8][4], dv[MMA_D / 8][4];
#pragma unroll
    for (int j = 0; j < MMA_D / 8; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            dk[j][e] = 0.0f;
            dv[j][e] = 0.0f;
        }
    }
    for (int q_start = k0; q_start < seq; q_start += MMA_TILE) {
        __syncthreads();  // the previous tiles (or K and V) are no longer read
        mma_load_tile(q_tile, q_t, q_src, stride, q_start, seq);
        mma_load_tile(do_tile, do_t, do_src, (i64)C, q_start, seq);
        for (int i = threadIdx.x; i < MMA_TILE; i += blockDim.x) {
            const int q = q_start + i;
            lse_tile[i] = q < seq ? lse[(i64)bh * seq + q] : 0.0f;
            dvec_tile[i] = q < seq ? dvec[(i64)bh * seq + q] : 0.0f;
        }
        __syncthreads();

#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int base = half * (MMA_TILE / 2);
            float p[4][4], ds[4][4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    p[j][e] = 0.0f;
                    ds[j][e] = 0.0f;
                }
            }
#pragma unroll
            for (int kk = 0; kk < MMA_D / 16; kk++) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    mma_tile(p[j], kf[kk], q_tile, base + 8 * j, 16 * kk);
                    mma_tile(ds[j], vf[kk], do_tile, base + 8 * j, 16 * kk);
                }
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int ql = base + 8 * j + 2 * t + (e & 1);
                    const int q = q_start + ql;
                    const float prob = q < seq && key[e / 2] <= q
                                           ? expf(p[j][e] * scale - lse_tile[ql])
                                           : 0.0f;
                    p[j][e] = prob;
                    ds[j][e] = prob * (ds[j][e] - dvec_tile[ql]);
                }
            }
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
                u32 pa[4], dsa[4];
                acc_to_a(pa, p, kk);
                acc_to_a(dsa, ds, kk);
#pragma unroll
                for (int j = 0; j < MMA_D / 8; j++) {
                    mma_tile(dv[j], pa, do_t, 8 * j, base + 16 * kk);
                    mma_tile(dk[j], dsa, q_t, 8 * j, base + 16 * kk);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (key[r] >= seq) continue;
        bf16* dk_row = dqkv + ((i64)b * seq + key[r]) * stride + C + (i64)h * MMA_D;
        bf16* dv_row = dk_row + C;
#pragma unroll
        for (int j = 0; j < MMA_D / 8; j++) {
            dk_row[8 * j + 2 * t] = to_bf16(dk[j][2 * r] * scale);
            dk_row[8 * j + 2 * t + 1] = to_bf16(dk[j][2 * r + 1] * scale);
            dv_row[8 * j + 2 * t] = to_bf16(dv[j][2 * r]);
            dv_row[8 * j + 2 * t + 1] = to_bf16(dv[j][2 * r + 1]);
        }
    }
}

// dQ on tensor cores. Grid (query tiles of 64, batch·H), 128 threads; warp w owns query rows
// q0 + 16w .. + 16, its Q and dO fragments in registers. Per key tile of 64 up to the
// diagonal: S = Q·Kᵀ and dP = dO·Vᵀ (K and V row-major), P = exp(scale·S − lse) masked,
// dS = P∘(dP − dvec), dQ += dS·K (K transposed). Static shared memory: K, Kᵀ and V tiles (the
// first and last also stage Q and dO at the start), 27 KiB. Reverse tile order, as the
// forward pass.
extern "C" __global__ void __launch_bounds__(MMA_WARPS * WARP_SIZE)
    attention_backward_dq_mma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                              const float* dvec, int seq, int H, int C) {
    __shared__ __align__(16) bf16 k_tile[MMA_TILE * MMA_LD];
    __shared__ __align__(16) bf16 k_t[MMA_D * MMA_LD];
    __shared__ __align__(16) bf16 v_tile[MMA_TILE * MMA_LD];
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int t = lane % 4;
    const int bh = blockIdx.y;
    const int b = bh / H;
    const int h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * MMA_TILE;
    const i64 stride = 3 * (i64)C;
    const bf16* q_src = qkv + (i64)b * seq * stride + (i64)h * MMA_D;
    const bf16* do_src = dout + (i64)b * seq * C + (i64)h * MMA_D;
    const float scale = attn_scale(MMA_D);

    mma_load_tile(k_tile, nullptr, q_src, stride, q0, seq);
    mma_load_tile(v_tile, nullptr, do_src, (i64)C, q0, seq);
    __syncthreads();
    u32 qf[MMA_D / 16][4], dof[MMA_D / 16][4];
#pragma unroll
    for (int kk = 0; kk < MMA_D / 16; kk++) {
        load_a(qf[kk], k_tile, warp * 16, kk * 16);
        load_a(dof[kk], v_tile, warp * 16, kk * 16);
    }
    const int row[2] = {q0 + warp * 16 + lane / 4, q0 + warp * 16 + lane / 4 + 8};
    float row_lse[2], row_dvec[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        row_lse[r] = row[r] < seq ? lse[(i64)bh * seq + row[r]] : 0.0f;
        row_dvec[r] = row[r] < seq ? dvec[(i64)bh * seq + row[r]] : 0.0f;
    }

    float dq[MMA_D / 8][4];
#pragma unroll
    for (int j = 0; j < MMA_D / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
    const int last_key = min(seq, q0 + MMA_TILE) - 1;
    for (int k0 = 0; k0 <= last_key; k0 += MMA_TILE) {
        __syncthreads();  // the previous tiles (or Q and dO) are no longer read
        mma_load_tile(k_tile, k_t, q_src + C, stride, k0, seq);
        mma_load_tile(v_tile, nullptr, q_src + 2 * C, stride, k0, seq);
        __syncthreads();

        float s[MMA_TILE / 8][4], ds[MMA_TILE / 8][4];
#pragma unroll
        for (int j = 0; j < MMA_TILE / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = 0.0f;
                ds[j][e] = 0.0f;
            }
        }
#pragma unroll
        for (int kk = 0; kk < MMA_D / 16; kk++) {
#pragma unroll
            for (int j = 0; j < MMA_TILE / 8; j++) {
                mma_tile(s[j], qf[kk], k_tile, 8 * j, 16 * kk);
                mma_tile(ds[j], dof[kk], v_tile, 8 * j, 16 * kk);
            }
        }
#pragma unroll
        for (int j = 0; j < MMA_TILE / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + 8 * j + 2 * t + (e & 1);
                const int r = e / 2;
                const float prob = row[r] < seq && key <= row[r]
                                       ? expf(s[j][e] * scale - row_lse[r])
                                       : 0.0f;
                ds[j][e] = prob * (ds[j][e] - row_dvec[r]);
            }
        }
#pragma unroll
        for (int kk = 0; kk < MMA_TILE / 16; kk++) {
            u32 dsa[4];
            acc_to_a(dsa, ds, kk);
#pragma unroll
            for (int j = 0; j < MMA_D / 8; j++) mma_tile(dq[j], dsa, k_t, 8 * j, 16 * kk);
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (row[r] >= seq) continue;
        bf16* dq_row = dqkv + ((i64)b * seq + row[r]) * stride + (i64)h * MMA_D;
#pragma unroll
        for (int j = 0; j < MMA_D / 8; j++) {
            dq_row[8 * j + 2 * t] = to_bf16(dq[j][2 * r] * scale);
            dq_row[8 * j + 2 * t + 1] = to_bf16(dq[j][2 * r + 1] * scale);
        }
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
