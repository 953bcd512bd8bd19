// CPU kernel for the fast feature-convex certificate of the convex conv net (asymcert.nn.ConvexConvNet).
//
// For every image it computes, in float32 or float64 (with float64 readout sums), the score and the
// feature gradient of h_P (the net with its ReLU pattern P fixed as the pass chooses it) together with
// elementwise upper bounds on their rounding error; see asymcert/certify/bounded_convex.py for the
// argument and the PyTorch reference implementation of the same bounds. The bound constants
// (γ factors) are computed in Python and passed in `prm`, so the math lives in one place.
//
// Arithmetic: every convolution output is one sequential sum (bias first, then the products in a
// fixed order), so the standard bound |fl(Σ) − Σ| ≤ γ_n Σ|terms| holds; build without
// -ffast-math / -fassociative-math (contraction into FMA only tightens the bound).
//
// Layout: images (N, C, H, W) contiguous; padded planes use a row stride Wp = W + 2p and carry a
// few slack elements so that "padded-width" loops can read past the last row.
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <algorithm>

namespace {

// out[co] (H rows of stride Wp) = bias[co] + Σ_{ci,ky,kx} w[co,ci,ky,kx] · in[ci] shifted by (ky, kx),
// summed in exactly that order (one sequential sum per output). Columns x ≥ W of `out` are junk.
// `in` planes are zero-padded with row stride Wp and plane stride `ps` (≥ Hp·Wp + K).
template <typename T, int K>
void conv_k(const T* in, int Cin, size_t ps, const T* w, const T* bias, int Cout, int H, int Wp, T* out) {
  const int L = H * Wp;
  for (int co = 0; co < Cout; ++co) {
    T* o = out + (size_t)co * L;
    const T b = bias ? bias[co] : T(0);
    for (int i = 0; i < L; ++i) o[i] = b;
    for (int ci = 0; ci < Cin; ++ci) {
      T wr[K * K];
      for (int t = 0; t < K * K; ++t) wr[t] = w[((size_t)co * Cin + ci) * K * K + t];
      const T* src = in + (size_t)ci * ps;
      for (int i = 0; i < L; ++i) {
        T acc = o[i];
        for (int ky = 0; ky < K; ++ky)
          for (int kx = 0; kx < K; ++kx) acc += wr[ky * K + kx] * src[i + ky * Wp + kx];
        o[i] = acc;
      }
    }
  }
}

template <typename T>
void conv_any(const T* in, int Cin, size_t ps, const T* w, const T* bias, int Cout, int K, int H, int Wp, T* out) {
  const int L = H * Wp;
  for (int co = 0; co < Cout; ++co) {
    T* o = out + (size_t)co * L;
    const T b = bias ? bias[co] : T(0);
    for (int i = 0; i < L; ++i) o[i] = b;
    for (int ci = 0; ci < Cin; ++ci)
      for (int i = 0; i < L; ++i) {
        T acc = o[i];
        for (int ky = 0; ky < K; ++ky)
          for (int kx = 0; kx < K; ++kx)
            acc += w[(((size_t)co * Cin + ci) * K + ky) * K + kx] * in[(size_t)ci * ps + i + ky * Wp + kx];
        o[i] = acc;
      }
  }
}

template <typename T>
void conv(const T* in, int Cin, size_t ps, const T* w, const T* bias, int Cout, int K, int H, int Wp, T* out) {
  switch (K) {
    case 1: conv_k<T, 1>(in, Cin, ps, w, bias, Cout, H, Wp, out); break;
    case 3: conv_k<T, 3>(in, Cin, ps, w, bias, Cout, H, Wp, out); break;
    case 5: conv_k<T, 5>(in, Cin, ps, w, bias, Cout, H, Wp, out); break;
    case 7: conv_k<T, 7>(in, Cin, ps, w, bias, Cout, H, Wp, out); break;
    default: conv_any<T>(in, Cin, ps, w, bias, Cout, K, H, Wp, out);
  }
}

// The transposed convolution as a convolution: wt[ci, co, ky, kx] = w[co, ci, K−1−ky, K−1−kx].
template <typename T>
std::vector<T> flip_transpose(const T* w, int Cout, int Cin, int K, bool absolute) {
  std::vector<T> wt((size_t)Cout * Cin * K * K);
  for (int co = 0; co < Cout; ++co)
    for (int ci = 0; ci < Cin; ++ci)
      for (int ky = 0; ky < K; ++ky)
        for (int kx = 0; kx < K; ++kx) {
          const T v = w[(((size_t)co * Cin + ci) * K + ky) * K + kx];
          wt[(((size_t)ci * Cout + co) * K + (K - 1 - ky)) * K + (K - 1 - kx)] = absolute ? std::fabs(v) : v;
        }
  return wt;
}

// f (N, Cin, H, W); w0 (C, Cin, K0, K0), b0 (C); wb (B, C, C, 3, 3), bb (B, C); ab, cb (B, C) the eval
// batch-norm scale (> 0) and shift before each block conv; wa (C, H, W) float64 readout folded with
// the output batch norm, wa32 its rounding to T; cst the score's constant (float64).
// prm = [u, stem_factor, grad_factor, (alpha, beta, gamma_n) per block, uniform, readout_factor]. With
// uniform ≠ 0 the error maps are bounded by per-image constants (max row sums times max values)
// instead of the error convolutions: about a third less work, looser bounds (fine in float64).
// readout_factor bounds the float64 readout sum's rounding per unit of Σ|wa·z| + |cst| (magnitudes,
// never |score|: the score is often a cancellation); the error of cst itself is added by the caller.
// Outputs: score, score_err (N) float64; grad, grad_err (N, Cin, H, W); uncertain (N): 1 when some
// pre-activation is within its error bound of 0 (the pattern may differ from the exact one).
template <typename T>
void certify(const T* f, int64_t N, int Cin, int H, int W, int C, int K0, int B, const T* w0, const T* b0,
             const T* wb, const T* bb, const T* ab, const T* cb, const double* wa, const T* wa32, double cst,
             const double* prm, double* score, double* score_err, T* grad, T* grad_err, uint8_t* uncertain,
             int threads) {
  const int p0 = K0 / 2, Wp0 = W + 2 * p0, Hp0 = H + 2 * p0;
  const int Wp = W + 2, Hp = H + 2;
  const int HW = H * W;
  const size_t ps0 = (size_t)Hp0 * Wp0 + K0 + 1;
  const size_t ps1 = (size_t)Hp * Wp + 4;
  const T u = (T)prm[0];
  const T stem_factor = (T)prm[1], grad_factor = (T)prm[2];
  const bool uniform = prm[3 + 3 * B] != 0.0;
  const double readout_factor = prm[4 + 3 * B];
  std::vector<T> w0abs((size_t)C * Cin * K0 * K0), b0abs(C);
  for (size_t i = 0; i < w0abs.size(); ++i) w0abs[i] = std::fabs(w0[i]);
  for (int c = 0; c < C; ++c) b0abs[c] = std::fabs(b0[c]);
  std::vector<T> bbabs((size_t)B * C);  // γ_n·|bias| per block
  for (int k = 0; k < B; ++k)
    for (int c = 0; c < C; ++c) bbabs[(size_t)k * C + c] = (T)prm[3 + 3 * k + 2] * std::fabs(bb[(size_t)k * C + c]);
  // the backward passes are convolutions with flipped, transposed kernels
  std::vector<T> wflip((size_t)B * C * C * 9);
  for (int k = 0; k < B; ++k) {
    const std::vector<T> t = flip_transpose(wb + (size_t)k * C * C * 9, C, C, 3, false);
    std::copy(t.begin(), t.end(), wflip.begin() + (size_t)k * C * C * 9);
  }
  const std::vector<T> w0flip = flip_transpose(w0, C, Cin, K0, false);
  const std::vector<T> w0flipabs = flip_transpose(w0, C, Cin, K0, true);
  // uniform mode: W·v ≤ (max row sum of W)·max v for W, v ≥ 0 replaces the error convolutions
  T s0 = 0, s0t = 0, maxb0 = 0;
  for (int co = 0; co < C; ++co) {
    T row = 0;
    for (int t = 0; t < Cin * K0 * K0; ++t) row += w0abs[(size_t)co * Cin * K0 * K0 + t];
    s0 = std::max(s0, row);
    maxb0 = std::max(maxb0, b0abs[co]);
  }
  for (int ci = 0; ci < Cin; ++ci) {
    T col = 0;
    for (int t = 0; t < C * K0 * K0; ++t) col += w0flipabs[(size_t)ci * C * K0 * K0 + t];
    s0t = std::max(s0t, col);
  }
  std::vector<T> sk(B, T(0)), gbk(B, T(0)), maxa(B, T(0)), maxc(B, T(0));
  for (int k = 0; k < B; ++k)
    for (int co = 0; co < C; ++co) {
      T row = 0;
      for (int t = 0; t < C * 9; ++t) row += wb[(size_t)k * C * C * 9 + (size_t)co * C * 9 + t];
      sk[k] = std::max(sk[k], row);
      gbk[k] = std::max(gbk[k], bbabs[(size_t)k * C + co]);
      maxa[k] = std::max(maxa[k], ab[(size_t)k * C + co]);
      maxc[k] = std::max(maxc[k], (T)std::fabs(cb[(size_t)k * C + co]));
    }

#pragma omp parallel num_threads(threads)
  {
    std::vector<T> fpad((size_t)Cin * ps0), fabsp((size_t)Cin * ps0);
    std::vector<T> out0((size_t)C * H * Wp0), mag0((size_t)C * H * Wp0);
    std::vector<T> z((size_t)C * HW), e((size_t)C * HW), masks((size_t)(B + 1) * C * HW);
    std::vector<T> ypad((size_t)C * ps1), vpad((size_t)C * ps1);
    std::vector<T> out1((size_t)C * H * Wp), mag1((size_t)C * H * Wp);
    std::vector<T> g((size_t)C * HW), gpad((size_t)C * ps1), gpad0((size_t)C * ps0);
    std::vector<T> gf((size_t)Cin * H * Wp0), gfe((size_t)Cin * H * Wp0);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      bool unsure = false;
      // ---- stem: value and magnitude (|W0|·|f| + |b0|) convolutions
      std::fill(fpad.begin(), fpad.end(), T(0));
      if (!uniform) std::fill(fabsp.begin(), fabsp.end(), T(0));
      T maxf = 0;
      for (int ci = 0; ci < Cin; ++ci)
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x) {
            const T v = f[(((size_t)n * Cin + ci) * H + y) * W + x];
            fpad[ci * ps0 + (size_t)(y + p0) * Wp0 + x + p0] = v;
            if (!uniform) fabsp[ci * ps0 + (size_t)(y + p0) * Wp0 + x + p0] = std::fabs(v);
            maxf = std::max(maxf, (T)std::fabs(v));
          }
      conv(fpad.data(), Cin, ps0, w0, b0, C, K0, H, Wp0, out0.data());
      if (!uniform) conv(fabsp.data(), Cin, ps0, w0abs.data(), b0abs.data(), C, K0, H, Wp0, mag0.data());
      const T err0 = stem_factor * (s0 * maxf + maxb0);
      for (int c = 0; c < C; ++c)
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x) {
            const T t = out0[((size_t)c * H + y) * Wp0 + x];
            const T err = uniform ? err0 : stem_factor * mag0[((size_t)c * H + y) * Wp0 + x];
            const size_t j = (size_t)c * HW + y * W + x;
            const bool on = t > T(0);
            unsure |= std::fabs(t) <= err;
            masks[j] = on ? T(1) : T(0);
            z[j] = on ? t : T(0);
            e[j] = on ? err : T(0);
          }
      // ---- residual blocks: r = z + W(a z + c) + bias; error conv on a(α z + β e) + α|c|
      for (int k = 0; k < B; ++k) {
        const T alpha = (T)prm[3 + 3 * k], beta = (T)prm[3 + 3 * k + 1];
        const T* a = ab + (size_t)k * C;
        const T* cc = cb + (size_t)k * C;
        std::fill(ypad.begin(), ypad.end(), T(0));
        if (!uniform) std::fill(vpad.begin(), vpad.end(), T(0));
        T maxz = 0, maxe = 0;
        for (int c = 0; c < C; ++c) {
          const T ac = a[c], cv = cc[c], ca = std::fabs(cv) * alpha, aa = ac * alpha, ratio = beta / alpha;
          for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x) {
              const size_t j = (size_t)c * HW + y * W + x;
              const size_t q = c * ps1 + (size_t)(y + 1) * Wp + x + 1;
              ypad[q] = ac * z[j] + cv;
              if (uniform) {
                maxz = std::max(maxz, z[j]);
                maxe = std::max(maxe, e[j]);
              } else {
                vpad[q] = aa * (z[j] + ratio * e[j]) + ca;
              }
            }
        }
        const T* wk = wb + (size_t)k * C * C * 9;
        conv(ypad.data(), C, ps1, wk, bb + (size_t)k * C, C, 3, H, Wp, out1.data());
        if (!uniform) conv(vpad.data(), C, ps1, wk, bbabs.data() + (size_t)k * C, C, 3, H, Wp, mag1.data());
        // uniform: the error conv's input a(α z + β e) + α|c| is at most maxa(α maxz + β maxe) + α maxc
        const T errt = sk[k] * (maxa[k] * (alpha * maxz + beta * maxe) + alpha * maxc[k]) + gbk[k];
        T* mk = masks.data() + (size_t)(k + 1) * C * HW;
        for (int c = 0; c < C; ++c)
          for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x) {
              const size_t j = (size_t)c * HW + y * W + x;
              const size_t q = ((size_t)c * H + y) * Wp + x;
              const T r = out1[q] + z[j];
              const T err = e[j] + (uniform ? errt : mag1[q]) + u * std::fabs(r);
              const bool on = r > T(0);
              unsure |= std::fabs(r) <= err;
              mk[j] = on ? T(1) : T(0);
              z[j] = on ? r : T(0);
              e[j] = on ? err : T(0);
            }
      }
      // ---- readout in float64
      double s = cst, se = 0.0, sm = std::fabs(cst);
      for (int j = 0; j < C * HW; ++j) {
        s += wa[j] * (double)z[j];
        se += std::fabs(wa[j]) * (double)e[j];
        sm += std::fabs(wa[j] * (double)z[j]);
      }
      score[n] = s;
      score_err[n] = se + readout_factor * sm;
      uncertain[n] = unsure ? 1 : 0;
      // ---- backward with the pattern fixed: g = ∂h_P/∂z (compact C×H×W), nonnegative until the stem
      {
        const T* mk = masks.data() + (size_t)B * C * HW;
        for (int j = 0; j < C * HW; ++j) g[j] = wa32[j] * mk[j];
      }
      for (int k = B - 1; k >= 0; --k) {
        std::fill(gpad.begin(), gpad.end(), T(0));
        for (int c = 0; c < C; ++c)
          for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x) gpad[c * ps1 + (size_t)(y + 1) * Wp + x + 1] = g[(size_t)c * HW + y * W + x];
        conv(gpad.data(), C, ps1, wflip.data() + (size_t)k * C * C * 9, (const T*)nullptr, C, 3, H, Wp, out1.data());
        const T* a = ab + (size_t)k * C;
        const T* mk = masks.data() + (size_t)k * C * HW;
        for (int c = 0; c < C; ++c)
          for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x) {
              const size_t j = (size_t)c * HW + y * W + x;
              g[j] = (g[j] + a[c] * out1[((size_t)c * H + y) * Wp + x]) * mk[j];
            }
      }
      // stem: the gradient and its error bound, with W0 and |W0|
      std::fill(gpad0.begin(), gpad0.end(), T(0));
      T maxg = 0;
      for (int c = 0; c < C; ++c)
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x) {
            const T v = g[(size_t)c * HW + y * W + x];
            gpad0[c * ps0 + (size_t)(y + p0) * Wp0 + x + p0] = v;
            maxg = std::max(maxg, v);
          }
      conv(gpad0.data(), C, ps0, w0flip.data(), (const T*)nullptr, Cin, K0, H, Wp0, gf.data());
      if (!uniform) conv(gpad0.data(), C, ps0, w0flipabs.data(), (const T*)nullptr, Cin, K0, H, Wp0, gfe.data());
      const T gerr = grad_factor * s0t * maxg;
      for (int ci = 0; ci < Cin; ++ci)
        for (int y = 0; y < H; ++y)
          for (int x = 0; x < W; ++x) {
            const size_t q = ((size_t)ci * H + y) * Wp0 + x;
            const size_t o = (((size_t)n * Cin + ci) * H + y) * W + x;
            grad[o] = gf[q];
            grad_err[o] = uniform ? gerr : grad_factor * gfe[q];
          }
    }
  }
}


}  // namespace

extern "C" {

int asymcert_convex_conv_abi_version() { return 4; }

#define ASYMCERT_CERTIFY(SFX, T)                                                                          \
  void asymcert_convex_conv_certify_##SFX(const T* f, int64_t N, int Cin, int H, int W, int C, int K0,    \
                                         int B, const T* w0, const T* b0, const T* wb, const T* bb,       \
                                         const T* ab, const T* cb, const double* wa, const T* wa32,       \
                                         double cst, const double* prm, double* score, double* score_err, \
                                         T* grad, T* grad_err, uint8_t* uncertain, int threads) {         \
    certify<T>(f, N, Cin, H, W, C, K0, B, w0, b0, wb, bb, ab, cb, wa, wa32, cst, prm, score, score_err,   \
               grad, grad_err, uncertain, threads);                                                       \
  }
ASYMCERT_CERTIFY(f32, float)
ASYMCERT_CERTIFY(f64, double)

}  // extern "C"
