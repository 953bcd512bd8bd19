// CPU kernel for steps 3–4 of the fast ICNN reference (asymcert/certify/bounded_icnn.py): the gradient assembled
// from the integer products, and the sums the score and its error bound are made of, in one pass over each row.
//
// Input, for n rows: parts (n, S·m) int32, the integer products P q_s (slice s in columns s·m … (s+1)·m − 1, m = d + 1);
// col_scale (m) the power of two 2^(−k_i − 7(S−1)); u1 (d) U₁; resid (m) r; f, e (n, d) f̂₆₄ and its error bound.
// Output per row i:
//     pu_k = (Σ_s 2^(7(S−1−s))·parts[i, s·m + k]) · col_scale_k       exact: an integer below 2⁵³, then a power of two
//     grad[i, k] = pu_k + u1_k (one rounding),  grad_err[i, k] = resid_k + c·|grad[i, k]|      (k < d)
//     sums[i] = (ĝ·f̂₆₄, |ĝ|·|f̂₆₄|, |f̂₆₄|·r, |ĝ|·e, e·r, pu_d, Σ_k G_k, Σ_k G_k², max_k G_k)   G_k = |ĝ_k| + grad_err[i, k]
// (G is what the radii's dual norms are taken of, added as PyTorch adds it; the max propagates a NaN).
// The integer sum is exact in int64 (|parts| < 2³¹, S ≤ 5 slices of 7 bits: below 2⁵⁹) and below 2⁵³ for the
// caller's widths (W < 2²², |q| ≤ 64: 2^(7·3 + 6 + 22) = 2⁴⁹), so its conversion to double is exact. The five dot
// products are summed in four interleaved lanes, then the lanes; the caller's bounds hold for any order of the
// sums (γ_{d+3} for ĝ·f̂₆₄; the nonnegative ones are inflated by 1 + 10⁻³). Build without -ffast-math.
#include <cmath>
#include <cstdint>

extern "C" int asymcert_icnn_gradient_abi_version() { return 2; }

namespace {

constexpr int LANES = 4;
constexpr int64_t SUMS = 9;  // per row: the five dot products, pu_d, ΣG, ΣG², max G

// pu_k of the module comment (exact)
inline double exact_column(const int32_t* __restrict parts, int64_t slices, int64_t m, int64_t k, double scale) {
  int64_t v = 0;
  for (int64_t s = 0; s < slices; ++s) v = v * 128 + (int64_t)parts[s * m + k];
  return (double)v * scale;
}

void assemble_row(const int32_t* __restrict parts, int64_t slices, int64_t d, const double* __restrict col_scale,
                  const double* __restrict u1, const double* __restrict resid, double c, const double* __restrict f,
                  const double* __restrict e, double* __restrict grad, double* __restrict grad_err,
                  double* __restrict sums) {
  const int64_t m = d + 1;
  double acc[7][LANES] = {};  // ĝ·f, |ĝ|·|f|, |f|·r, |ĝ|·e, e·r, ΣG, ΣG²: lane l sums the k ≡ l (mod LANES)
  double top = 0.0;
  for (int64_t k0 = 0; k0 < d; k0 += LANES) {
    for (int64_t l = 0; l < LANES && k0 + l < d; ++l) {
      const int64_t k = k0 + l;
      const double g = exact_column(parts, slices, m, k, col_scale[k]) + u1[k];
      const double ga = std::fabs(g), fa = std::fabs(f[k]);
      const double err = resid[k] + c * ga;
      const double big = ga + err;
      grad[k] = g;
      grad_err[k] = err;
      acc[0][l] += g * f[k];
      acc[1][l] += ga * fa;
      acc[2][l] += fa * resid[k];
      acc[3][l] += ga * e[k];
      acc[4][l] += e[k] * resid[k];
      acc[5][l] += big;
      acc[6][l] += big * big;
      top = (big > top || big != big) && top == top ? big : top;
    }
  }
  for (int q = 0; q < 5; ++q) sums[q] = (acc[q][0] + acc[q][1]) + (acc[q][2] + acc[q][3]);
  sums[5] = exact_column(parts, slices, m, d, col_scale[d]);
  for (int q = 5; q < 7; ++q) sums[q + 1] = (acc[q][0] + acc[q][1]) + (acc[q][2] + acc[q][3]);
  sums[8] = top;
}

}  // namespace

extern "C" void asymcert_icnn_gradient(const int32_t* parts, int64_t n, int64_t d, int64_t slices,
                                       const double* col_scale, const double* u1, const double* resid, double c,
                                       const double* f, const double* e, double* grad, double* grad_err, double* sums,
                                       int threads) {
  const int64_t m = d + 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    assemble_row(parts + i * slices * m, slices, d, col_scale, u1, resid, c, f + i * d, e + i * d, grad + i * d,
                 grad_err + i * d, sums + SUMS * i);
}
