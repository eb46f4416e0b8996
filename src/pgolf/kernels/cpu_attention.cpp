// Causal attention for bf16 on x86 CPUs with AMX, forward and backward, as PyTorch operators.
//
//   pgolf_cpu::causal_attention_forward(q, k, v, scale) -> (out, lse)
//   pgolf_cpu::causal_attention_backward(q, k, v, out, grad_out, lse, scale) -> (grad_q, grad_k, grad_v)
//
// Layout: q, out, grad_out (B, T, H, D); k, v (B, T, Hkv, D); all contiguous bf16, H a multiple of
// Hkv (query head h reads kv head h / (H / Hkv)); lse (B, H, T) fp32 contiguous, the natural
// log-sum-exp of the scaled scores (the convention of PyTorch's CPU flash forward, so either
// forward pairs with this backward). T a multiple of 128, D of 64. Every product runs through
// oneDNN's AMX brgemm ukernel (bf16 in, fp32 out) with N = 64, the widest B operand oneDNN packs;
// exponentials are base 2 with the scale folded in, through a cubic (exp2_approx).
//
// Forward: FlashAttention-2 on 128 x 128 tiles; one task per (batch, head, query block), K^T and V
// packed once per call. Per key block j <= i: S = Q_i K_j^T, online softmax (running row maxima and
// sums, output rows rescaled when the maximum grows), O_i += P V_j; finally O_i / l and lse.
//
// Backward: FlashAttention-2's backward on 128 x 128 tiles. Each (batch, kv head) is one task, so
// no two threads write the same rows: its keys and values are packed once, and its grad_k / grad_v
// accumulate in fp32 over the query heads of its group. Per tile pair (query block i, key block
// j <= i):
//   S = Q_i K_j^T, dP = dO_i V_j^T
//   P = exp(scale S - lse), 0 above the diagonal on the diagonal tile; dS' = P (dP - delta)
//   dV_j^T += dO_i^T P, dK_j^T += Q_i^T dS', dQ_i += dS' K_j   (dS = scale dS': scaled on the way out)
// grad_k and grad_v are accumulated transposed, so P and dS' are only ever needed as brgemm B
// operands (VNNI pairs of rows, written directly by the element-wise pass) and dS' also row-major:
// no tile is transposed inside the loop.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <fbgemm/Utils.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::BFloat16;
using Vec = at::vec::Vectorized<float>;
namespace cpublas = at::native::cpublas;

constexpr int64_t kTile = 128;  // query and key block
constexpr int64_t kChunk = 64;  // columns of one packed B operand (oneDNN packs N of 16..64)
constexpr int64_t kLanes = 16;  // floats per AVX-512 register
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// dst (cols x rows, leading dimension ld_dst) = src (rows x cols, ld_src) transposed (AVX-512,
// from the FBGEMM that libtorch_cpu carries).
inline void transpose(const BFloat16* src, int64_t ld_src, BFloat16* dst, int64_t ld_dst,
                      int64_t rows, int64_t cols) {
  fbgemm::transpose_simd<uint16_t>(rows, cols, reinterpret_cast<const uint16_t*>(src), ld_src,
                                   reinterpret_cast<uint16_t*>(dst), ld_dst);
}

// Pack a (rows x 64) bf16 matrix (leading dimension ld_src) as a brgemm B operand (VNNI pairs of
// rows). oneDNN's pack wants the input's leading dimension equal to N, hence the copy to `scratch`.
void pack_chunk(const BFloat16* src, int64_t ld_src, int64_t rows, BFloat16* scratch, BFloat16* dst) {
  const BFloat16* contiguous = src;
  if (ld_src != kChunk) {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(scratch + r * kChunk, src + r * ld_src, kChunk * sizeof(BFloat16));
    }
    contiguous = scratch;
  }
  cpublas::pack(rows, kChunk, kChunk, kChunk, at::kBFloat16, at::kBFloat16, contiguous, dst);
}

// C (M x 64 at c, leading dimension ld_c) = A (M x K, ld_a) x B (K x 64, packed) [+ C].
inline void product(int64_t m, int64_t depth, int64_t ld_a, int64_t ld_c, bool accumulate,
                    const BFloat16* a, const BFloat16* b_packed, float* c) {
  cpublas::brgemm(m, kChunk, depth, ld_a, kChunk, ld_c, accumulate, a, b_packed, c);
}

// Rows [0, 128) of a (T, ld) matrix, packed as head_dim / 64 B operands of 128 x 64.
void pack_rows(const BFloat16* rows, int64_t ld, int64_t head_dim, BFloat16* scratch, BFloat16* dst) {
  for (int64_t c = 0; c < head_dim / kChunk; ++c) {
    pack_chunk(rows + c * kChunk, ld, kTile, scratch, dst + c * kTile * kChunk);
  }
}

// (Rows [0, 128) of a (T, ld) matrix)^T, packed as two (D x 64) B operands, one per 64 rows.
void pack_transposed_rows(const BFloat16* rows, int64_t ld, int64_t head_dim, BFloat16* transposed,
                          BFloat16* scratch, BFloat16* dst) {
  for (int64_t half = 0; half < kTile / kChunk; ++half) {
    transpose(rows + half * kChunk * ld, ld, transposed, kChunk, kChunk, head_dim);
    pack_chunk(transposed, kChunk, head_dim, scratch, dst + half * head_dim * kChunk);
  }
}

// 2^x to ~1e-4 relative error (plenty for probabilities that are rounded to bf16): 1 + f (a + f (b +
// f c)) on the fraction f, fitted for the least largest relative error with 2^0 and 2^1 exact (so
// that a running maximum that does not change rescales by exactly 1), times 2^floor(x) (scalef,
// which also takes very negative x to 0).
inline __m512 exp2_approx(__m512 x) {
  const __m512 whole = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, whole);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.07826796919107437f), f, _mm512_set1_ps(0.2263076901435852f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6954243183135986f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, whole);
}

// dst (rows x cols, leading dimension ld_dst) = bf16 of factor src (rows x cols, contiguous).
void store_scaled(const float* src, int64_t rows, int64_t cols, BFloat16* dst, int64_t ld_dst, float factor) {
  const Vec f(factor);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; c += kLanes) {
      const __m512 value = _mm512_mul_ps(_mm512_loadu_ps(src + r * cols + c), f);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + r * ld_dst + c),
                          reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(value)));
    }
  }
}

// The layout both operators take (see the top of this file), or an error saying what is wrong.
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (B, T, H, D)");
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->device().is_cpu(),
                "q, k, v must be contiguous bf16 CPU tensors");
  }
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "k and v must be (B, T, Hkv, D) matching q");
  TORCH_CHECK(q.size(2) % k.size(2) == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(q.size(1) % kTile == 0 && q.size(3) % kChunk == 0, "T must be a multiple of 128 and D of 64");
}

// ---------------------------------------------------------------- forward

// One 128 x 128 tile of scores S (fp32, row-major) -> P = 2^(S scale log2(e) - m) as bf16
// row-major (0 above the diagonal on the diagonal tile), with the running row maxima m (base 2),
// row sums l and accumulated output rows rescaled to the new maxima (FlashAttention-2's online
// softmax in base 2; the scale is positive, so the maximum of S scaled is the scaled maximum).
// Three passes over the rows, so that no row's horizontal reductions wait on the previous row's.
void online_softmax(const float* scores, float scale2, bool diagonal, float* row_max, float* row_sum,
                    float* acc, int64_t head_dim, bool first, BFloat16* probs) {
  const __m512 scale_vec = _mm512_set1_ps(scale2);
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  alignas(64) float new_max[kTile], tile_sum[kTile];
  for (int64_t r = 0; r < kTile; ++r) {
    const float* row = scores + r * kTile;
    const int64_t end = diagonal ? r + 1 : kTile;  // columns from `end` on are masked
    __m512 peak = minus_inf;
    for (int64_t col = 0; col < end; col += kLanes) {
      const __mmask16 kept = static_cast<__mmask16>(end - col >= kLanes ? 0xffffu : (1u << (end - col)) - 1u);
      peak = _mm512_mask_max_ps(peak, kept, peak, _mm512_loadu_ps(row + col));
    }
    new_max[r] = std::max(row_max[r], _mm512_reduce_max_ps(peak) * scale2);
  }
  for (int64_t r = 0; r < kTile; ++r) {
    const float* row = scores + r * kTile;
    const int64_t end = diagonal ? r + 1 : kTile;
    const __m512 max_vec = _mm512_set1_ps(new_max[r]);
    __m512 total = _mm512_setzero_ps();
    for (int64_t col = 0; col < kTile; col += kLanes) {
      __m512 p = exp2_approx(_mm512_fmsub_ps(_mm512_loadu_ps(row + col), scale_vec, max_vec));
      if (col + kLanes > end) {
        p = _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << std::max<int64_t>(0, end - col)) - 1u), p);
      }
      total = _mm512_add_ps(total, p);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(probs + r * kTile + col),
                          reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(p)));
    }
    tile_sum[r] = _mm512_reduce_add_ps(total);
  }
  for (int64_t r = 0; r < kTile; r += kLanes) {
    const __m512 fresh = _mm512_load_ps(new_max + r), sums = _mm512_load_ps(tile_sum + r);
    if (first) {
      _mm512_storeu_ps(row_sum + r, sums);
    } else {
      alignas(64) float alpha[kLanes];
      _mm512_store_ps(alpha, static_cast<__m512>(Vec(_mm512_sub_ps(_mm512_loadu_ps(row_max + r), fresh)).exp2()));
      _mm512_storeu_ps(row_sum + r, _mm512_fmadd_ps(_mm512_loadu_ps(row_sum + r), _mm512_load_ps(alpha), sums));
      for (int64_t i = 0; i < kLanes; ++i) {
        if (alpha[i] != 1.0f) {
          const __m512 factor = _mm512_set1_ps(alpha[i]);
          float* out_row = acc + (r + i) * head_dim;
          for (int64_t c = 0; c < head_dim; c += kLanes) {
            _mm512_storeu_ps(out_row + c, _mm512_mul_ps(_mm512_loadu_ps(out_row + c), factor));
          }
        }
      }
    }
    _mm512_storeu_ps(row_max + r, fresh);
  }
}

std::tuple<at::Tensor, at::Tensor> causal_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, double scale) {
  check_attention_inputs(q, k, v);
  TORCH_CHECK(scale > 0, "scale must be positive");
  const int64_t batch = q.size(0), length = q.size(1), heads = q.size(2), head_dim = q.size(3);
  const int64_t kv_heads = k.size(2);

  auto out = at::empty_like(q);
  auto lse = at::empty({batch, heads, length}, q.options().dtype(at::kFloat));
  const int64_t group = heads / kv_heads, tiles = length / kTile, chunks = head_dim / kChunk;
  const int64_t q_row = heads * head_dim, kv_row = kv_heads * head_dim;
  const int64_t tile_matrix = kTile * head_dim, head_matrix = length * head_dim;
  const float scale2 = static_cast<float>(scale) * kLog2e;
  const BFloat16* q_data = q.const_data_ptr<BFloat16>();
  const BFloat16* k_data = k.const_data_ptr<BFloat16>();
  const BFloat16* v_data = v.const_data_ptr<BFloat16>();
  BFloat16* out_data = out.data_ptr<BFloat16>();
  float* lse_data = lse.data_ptr<float>();

  // K^T and V of every (batch, kv head, key tile), packed as brgemm B operands once.
  auto keys_t = at::empty({batch * kv_heads * head_matrix}, q.options());
  auto values = at::empty({batch * kv_heads * head_matrix}, q.options());
  BFloat16* keys_t_data = keys_t.data_ptr<BFloat16>();
  BFloat16* values_data = values.data_ptr<BFloat16>();
  at::parallel_for(0, batch * kv_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<BFloat16> transposed(head_dim * kChunk), scratch(std::max(head_dim, kTile) * kChunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (kv_heads * tiles), kv_head = task / tiles % kv_heads, j = task % tiles;
      const int64_t src = b * length * kv_row + j * kTile * kv_row + kv_head * head_dim;
      const int64_t dst = (b * kv_heads + kv_head) * head_matrix + j * tile_matrix;
      pack_transposed_rows(k_data + src, kv_row, head_dim, transposed.data(), scratch.data(), keys_t_data + dst);
      pack_rows(v_data + src, kv_row, head_dim, scratch.data(), values_data + dst);
    }
  });

  at::parallel_for(0, batch * heads * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(kTile * kTile), acc(kTile * head_dim), row_max(kTile), row_sum(kTile);
    std::vector<BFloat16> probs(kTile * kTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (heads * tiles), h = task / tiles % heads, i = task % tiles;
      const int64_t kv = (b * kv_heads + h / group) * head_matrix;
      const BFloat16* q_tile = q_data + b * length * q_row + i * kTile * q_row + h * head_dim;
      std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j <= i; ++j) {
        for (int64_t half = 0; half < kTile / kChunk; ++half) {
          product(kTile, head_dim, q_row, kTile, false, q_tile,
                  keys_t_data + kv + j * tile_matrix + half * head_dim * kChunk, scores.data() + half * kChunk);
        }
        online_softmax(scores.data(), scale2, i == j, row_max.data(), row_sum.data(), acc.data(), head_dim,
                       j == 0, probs.data());
        for (int64_t c = 0; c < chunks; ++c) {
          product(kTile, kTile, kTile, head_dim, j > 0, probs.data(),
                  values_data + kv + j * tile_matrix + c * kTile * kChunk, acc.data() + c * kChunk);
        }
      }
      BFloat16* out_tile = out_data + b * length * q_row + i * kTile * q_row + h * head_dim;
      float* lse_tile = lse_data + (b * heads + h) * length + i * kTile;
      for (int64_t r = 0; r < kTile; ++r) {
        store_scaled(acc.data() + r * head_dim, 1, head_dim, out_tile + r * q_row, q_row, 1.0f / row_sum[r]);
        lse_tile[r] = (row_max[r] + std::log2(row_sum[r])) * kLn2;
      }
    }
    cpublas::brgemm_release();
  });
  return {out, lse};
}

// ---------------------------------------------------------------- backward

// Per-thread scratch for one (batch, kv head) task.
struct Workspace {
  int64_t length, head_dim;
  int64_t ld_t;  // leading dimension of the (D, T) matrices: T plus a cache line, so that their rows
                 // do not all fall into the same cache sets
  std::vector<BFloat16> keys_t, values_t, keys;  // packed B operands, per 128-key tile
  std::vector<BFloat16> queries_t, grad_outs_t;  // Q^T and dO^T of one query head: (D, T) row-major
  std::vector<BFloat16> transposed, scratch;
  std::vector<BFloat16> probs_packed, grad_scores_packed, grad_scores;  // one tile pair's P and dS
  std::vector<float> grad_keys_t, grad_values_t;  // (D, T) fp32 accumulators
  std::vector<float> grad_query, delta, lse2, scores, grad_probs, rows_out;

  Workspace(int64_t length_, int64_t head_dim_) : length(length_), head_dim(head_dim_), ld_t(length_ + 32) {
    const int64_t matrix = length * head_dim;
    const int64_t matrix_t = ld_t * head_dim;
    keys_t.resize(matrix);     // K^T per 64 keys: B of S = Q K^T
    values_t.resize(matrix);   // V^T per 64 keys: B of dP = dO V^T
    keys.resize(matrix);       // K per key tile and 64 columns: B of dQ += dS K
    queries_t.resize(matrix_t);
    grad_outs_t.resize(matrix_t);
    transposed.resize(head_dim * kChunk);
    scratch.resize(std::max(head_dim, kTile) * kChunk);
    probs_packed.resize(kTile * kTile);
    grad_scores_packed.resize(kTile * kTile);
    grad_scores.resize(kTile * kTile);
    grad_keys_t.resize(matrix_t);
    grad_values_t.resize(matrix_t);
    grad_query.resize(kTile * head_dim);
    delta.resize(length);
    lse2.resize(length);
    scores.resize(kTile * kTile);
    grad_probs.resize(kTile * kTile);
    rows_out.resize(matrix);
  }
};

// Two rows' worth of 16 floats each as 32 bf16 in VNNI order: a0 b0 a1 b1 ... a15 b15.
inline __m512i interleave_bf16(__m512 a, __m512 b) {
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));  // a in lanes 0-15
  return _mm512_permutexvar_epi16(order, both);
}

// From S and dP of one tile pair: P = exp(scale S - lse) (0 above the diagonal on the diagonal
// tile) and dS' = P (dP - delta), dS = scale dS' (the scale is applied to grad_q and grad_k at the
// end). Writes P and dS' as packed B operands (two 64-column chunks, VNNI pairs of query rows) and
// dS' row-major. `lse2` is lse log2(e).
void softmax_gradient(Workspace& w, const float* lse2, const float* delta, float scale, bool diagonal) {
  const __m512 scale_vec = _mm512_set1_ps(scale * kLog2e);
  for (int64_t r = 0; r < kTile; r += 2) {
    __m512 p[2][kTile / kLanes], ds[2][kTile / kLanes];
    for (int64_t row = 0; row < 2; ++row) {
      const float* score_row = w.scores.data() + (r + row) * kTile;
      const float* grad_row = w.grad_probs.data() + (r + row) * kTile;
      const __m512 row_lse = _mm512_set1_ps(lse2[r + row]);
      const __m512 row_delta = _mm512_set1_ps(delta[r + row]);
      const int64_t end = diagonal ? r + row + 1 : kTile;  // columns from `end` on are masked
      for (int64_t g = 0; g < kTile / kLanes; ++g) {
        const int64_t col = g * kLanes;
        __m512 value = exp2_approx(_mm512_fmsub_ps(_mm512_loadu_ps(score_row + col), scale_vec, row_lse));
        if (col + kLanes > end) {
          const int64_t kept = std::max<int64_t>(0, end - col);
          value = _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << kept) - 1u), value);
        }
        p[row][g] = value;
        ds[row][g] = _mm512_mul_ps(value, _mm512_sub_ps(_mm512_loadu_ps(grad_row + col), row_delta));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(w.grad_scores.data() + (r + row) * kTile + col),
                            reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(ds[row][g])));
      }
    }
    for (int64_t g = 0; g < kTile / kLanes; ++g) {
      const int64_t chunk = g * kLanes / kChunk, col = g * kLanes % kChunk;
      const int64_t offset = chunk * kTile * kChunk + (r / 2) * 2 * kChunk + 2 * col;
      _mm512_storeu_si512(w.probs_packed.data() + offset, interleave_bf16(p[0][g], p[1][g]));
      _mm512_storeu_si512(w.grad_scores_packed.data() + offset, interleave_bf16(ds[0][g], ds[1][g]));
    }
  }
}

// dst rows (T x D, leading dimension ld_dst) = bf16 of src^T, src (D x T) fp32.
void store_transposed(Workspace& w, const float* src, BFloat16* dst, int64_t ld_dst, float factor) {
  fbgemm::transpose_simd<float>(w.head_dim, w.length, src, w.ld_t, w.rows_out.data(), w.head_dim);
  store_scaled(w.rows_out.data(), w.length, w.head_dim, dst, ld_dst, factor);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_attention_backward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& grad_out, const at::Tensor& lse, double scale) {
  check_attention_inputs(q, k, v);
  for (const auto* t : {&out, &grad_out}) {
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->sizes() == q.sizes(),
                "out and grad_out must be contiguous bf16 tensors shaped like q");
  }
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous(), "lse must be contiguous fp32 (B, H, T)");
  const int64_t batch = q.size(0), length = q.size(1), heads = q.size(2), head_dim = q.size(3);
  const int64_t kv_heads = k.size(2);
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == batch && lse.size(1) == heads && lse.size(2) == length,
              "lse must be (B, H, T)");

  auto grad_q = at::empty_like(q);
  auto grad_k = at::empty_like(k);
  auto grad_v = at::empty_like(v);
  const int64_t group = heads / kv_heads;
  const int64_t tiles = length / kTile;
  const int64_t chunks = head_dim / kChunk;
  const int64_t q_row = heads * head_dim, kv_row = kv_heads * head_dim;
  const int64_t tile_matrix = kTile * head_dim;  // elements of one packed 128-row block of K
  const float scale_f = static_cast<float>(scale);

  const BFloat16* q_data = q.const_data_ptr<BFloat16>();
  const BFloat16* k_data = k.const_data_ptr<BFloat16>();
  const BFloat16* v_data = v.const_data_ptr<BFloat16>();
  const BFloat16* o_data = out.const_data_ptr<BFloat16>();
  const BFloat16* do_data = grad_out.const_data_ptr<BFloat16>();
  const float* lse_data = lse.const_data_ptr<float>();
  BFloat16* dq_data = grad_q.data_ptr<BFloat16>();
  BFloat16* dk_data = grad_k.data_ptr<BFloat16>();
  BFloat16* dv_data = grad_v.data_ptr<BFloat16>();

  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    Workspace w(length, head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, kv_head = task % kv_heads;
      const int64_t kv_offset = b * length * kv_row + kv_head * head_dim;
      for (int64_t j = 0; j < tiles; ++j) {
        pack_transposed_rows(k_data + kv_offset + j * kTile * kv_row, kv_row, head_dim, w.transposed.data(),
                             w.scratch.data(), w.keys_t.data() + j * tile_matrix);
        pack_transposed_rows(v_data + kv_offset + j * kTile * kv_row, kv_row, head_dim, w.transposed.data(),
                             w.scratch.data(), w.values_t.data() + j * tile_matrix);
        pack_rows(k_data + kv_offset + j * kTile * kv_row, kv_row, head_dim, w.scratch.data(),
                  w.keys.data() + j * tile_matrix);
      }
      std::fill(w.grad_keys_t.begin(), w.grad_keys_t.end(), 0.0f);
      std::fill(w.grad_values_t.begin(), w.grad_values_t.end(), 0.0f);

      for (int64_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
        const int64_t head_offset = b * length * q_row + h * head_dim;
        const BFloat16* q_base = q_data + head_offset;
        const BFloat16* do_base = do_data + head_offset;
        const float* head_lse = lse_data + (b * heads + h) * length;
        for (int64_t t = 0; t < length; ++t) {
          w.lse2[t] = head_lse[t] * kLog2e;
        }
        transpose(q_base, q_row, w.queries_t.data(), w.ld_t, length, head_dim);
        transpose(do_base, q_row, w.grad_outs_t.data(), w.ld_t, length, head_dim);
        for (int64_t t = 0; t < length; ++t) {
          w.delta[t] = at::vec::map2_reduce_all<BFloat16>(
              [](Vec x, Vec y) { return x * y; }, [](Vec x, Vec y) { return x + y; },
              do_base + t * q_row, o_data + head_offset + t * q_row, head_dim);
        }
        for (int64_t i = 0; i < tiles; ++i) {
          const BFloat16* q_tile = q_base + i * kTile * q_row;
          const BFloat16* do_tile = do_base + i * kTile * q_row;
          for (int64_t j = 0; j <= i; ++j) {
            for (int64_t half = 0; half < kTile / kChunk; ++half) {
              const int64_t packed = j * tile_matrix + half * head_dim * kChunk;
              product(kTile, head_dim, q_row, kTile, false, q_tile, w.keys_t.data() + packed,
                      w.scores.data() + half * kChunk);
              product(kTile, head_dim, q_row, kTile, false, do_tile, w.values_t.data() + packed,
                      w.grad_probs.data() + half * kChunk);
            }
            softmax_gradient(w, w.lse2.data() + i * kTile, w.delta.data() + i * kTile, scale_f, i == j);
            for (int64_t half = 0; half < kTile / kChunk; ++half) {  // 64 keys of tile j at a time
              const int64_t packed = half * kTile * kChunk, column = j * kTile + half * kChunk;
              product(head_dim, kTile, w.ld_t, w.ld_t, true, w.grad_outs_t.data() + i * kTile,
                      w.probs_packed.data() + packed, w.grad_values_t.data() + column);
              product(head_dim, kTile, w.ld_t, w.ld_t, true, w.queries_t.data() + i * kTile,
                      w.grad_scores_packed.data() + packed, w.grad_keys_t.data() + column);
            }
            for (int64_t c = 0; c < chunks; ++c) {
              product(kTile, kTile, kTile, head_dim, j > 0, w.grad_scores.data(),
                      w.keys.data() + j * tile_matrix + c * kTile * kChunk, w.grad_query.data() + c * kChunk);
            }
          }
          store_scaled(w.grad_query.data(), kTile, head_dim, dq_data + head_offset + i * kTile * q_row, q_row, scale_f);
        }
      }
      store_transposed(w, w.grad_keys_t.data(), dk_data + kv_offset, kv_row, scale_f);
      store_transposed(w, w.grad_values_t.data(), dv_data + kv_offset, kv_row, 1.0f);
    }
    cpublas::brgemm_release();
  });
  return {grad_q, grad_k, grad_v};
}

bool supported() {
  return cpublas::could_pack(at::kBFloat16);
}

}  // namespace

TORCH_LIBRARY(pgolf_cpu, m) {
  m.def("causal_attention_backward(Tensor q, Tensor k, Tensor v, Tensor out, Tensor grad_out, Tensor lse, "
        "float scale) -> (Tensor, Tensor, Tensor)");
  m.def("causal_attention_forward(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");
  m.def("supported() -> bool", &supported);
}

TORCH_LIBRARY_IMPL(pgolf_cpu, CPU, m) {
  m.impl("causal_attention_backward", &causal_attention_backward);
  m.impl("causal_attention_forward", &causal_attention_forward);
}
