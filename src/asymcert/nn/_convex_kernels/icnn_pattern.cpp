// CPU kernel for the ReLU-pattern pass of the fast ICNN reference (asymcert/certify/icnn_pattern.py).
//
// Input: two tiles t̂₁, t̂₂ (n rows of stride ld ≥ w, raw bfloat16 bits, as PyTorch's bfloat16 matrix products
// return them; only the first w columns are read) whose sum estimates the pre-activations, and the pieces of a bound on the error of that sum:
//     bound[i, j] = beta[j] + Σ_{r<4} rows[i, r] · cols[r, j] + c8 · (|t̂₁| + |t̂₂|)     (every factor ≥ 0)
// Output, in one pass: with ŝ = fl₃₂(t̂₁ + t̂₂), pattern[i, j] = [ŝ > 0] (int8 0/1), and the candidates of row i,
// the columns j with not |ŝ|·(1 − 2⁻²⁰) > bound (so a NaN is a candidate; the factor covers the rounding of ŝ
// and of that product), in increasing order: the first `cap` of them in cand_cols[i, :] and their number
// (possibly above cap) in cand_count[i]. Returns the total number. The Python caller inflates rows, cols,
// beta and c8 by 1 + 10⁻³ before rounding them up to float32, which covers the float32 evaluation of the
// bound, a sum of seven nonnegative terms (relative error below 5·10⁻⁷, with or without FMA contraction).
// Build without -ffast-math (a NaN must compare false).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" int asymcert_icnn_pattern_abi_version() { return 4; }

namespace {

// pattern and candidate flags of one row (a loop the compiler vectorizes: __restrict, since the int8 stores
// could otherwise alias every load)
void classify_row(const uint16_t* __restrict t1, const uint16_t* __restrict t2, int64_t w, const float* r,
                  const float* cols, const float* __restrict beta, float c8, int8_t* __restrict pattern,
                  uint8_t* __restrict flag) {
  const float r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
  const float* __restrict c0 = cols;
  const float* __restrict c1 = cols + w;
  const float* __restrict c2 = cols + 2 * w;
  const float* __restrict c3 = cols + 3 * w;
  for (int64_t j = 0; j < w; ++j) {
    const float v1 = __builtin_bit_cast(float, (uint32_t)t1[j] << 16);  // bfloat16 → float32: exact
    const float v2 = __builtin_bit_cast(float, (uint32_t)t2[j] << 16);
    const float v = v1 + v2;
    const float bound = beta[j] + r0 * c0[j] + r1 * c1[j] + r2 * c2[j] + r3 * c3[j] + c8 * (std::fabs(v1) + std::fabs(v2));
    pattern[j] = v > 0.0f;
    flag[j] = !(std::fabs(v) * (1.0f - 0x1p-20f) > bound);
  }
}

// the flagged columns of one row, eight flags at a time (candidates are rare)
int64_t collect_row(const uint8_t* flag, int64_t w, int32_t* out, int64_t cap) {
  int64_t count = 0, j = 0;
  for (; j + 8 <= w; j += 8) {
    uint64_t word;
    std::memcpy(&word, flag + j, sizeof word);
    if (!word) continue;
    for (int64_t k = j; k < j + 8; ++k)
      if (flag[k]) {
        if (count < cap) out[count] = (int32_t)k;
        ++count;
      }
  }
  for (; j < w; ++j)
    if (flag[j]) {
      if (count < cap) out[count] = (int32_t)j;
      ++count;
    }
  return count;
}

}  // namespace

extern "C" int64_t asymcert_icnn_pattern_bf16(const uint16_t* t1, const uint16_t* t2, int64_t n, int64_t w, int64_t ld,
                                              const float* rows, const float* cols, const float* beta, float c8,
                                              int8_t* pattern, int32_t* cand_cols, int64_t* cand_count, int64_t cap,
                                              int threads) {
  int64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    std::vector<uint8_t> flag((size_t)w + 8, 0);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      classify_row(t1 + i * ld, t2 + i * ld, w, rows + 4 * i, cols, beta, c8, pattern + i * w, flag.data());
      cand_count[i] = collect_row(flag.data(), w, cand_cols + i * cap, cap);
      total += cand_count[i];
    }
  }
  return total;
}
