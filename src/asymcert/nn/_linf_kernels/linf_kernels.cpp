// CPU kernels for ℓp-distance layers: y[b,o] = ‖x[b,:] − w[o,:]‖_p.
//
// Plain C++17 with GCC/Clang vector extensions and OpenMP; no torch headers, so it compiles in
// a few seconds. Built on first use by asymcert/nn/linf_dist.py (ctypes), cached on disk.
// Every entry point takes raw contiguous row-major buffers; padding is done by the caller:
//   x  (B, K)            inputs
//   w  (O, K)            weights (row-major, for the argmax scan and the backward)
//   wP (O/PW, K, PW)     weights packed in panels of PW = asymcert_panel(dtype) outputs (zero-padded):
//                        wP[o / PW, k, o % PW] = w[o, k]; a panel is contiguous, so the tile streams it
// Tiles: the forward vectorises over outputs o (broadcasting x[b,k]), the finite-p backward
// vectorises over k and is parallel over k-chunks (no write conflicts, no atomics).
#include <cstdint>
#include <cstring>
#include <cmath>
#include <algorithm>
#include <limits>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int VBYTES = 64;  // one AVX-512 register; the compiler splits it on narrower ISAs
// Tile shapes (registers: AVX-512 has 32 vector registers).
constexpr int F_RB = 4, F_NV = 4;     // p = ∞ forward, 4 rows × 4 vectors (64 float outputs)
constexpr int A_RB = 2;               // p = ∞ forward with argmax: fewer rows, no register spills
constexpr int P_RB = 4, P_NV = 2;     // finite p forward
constexpr int B_RB = 2, B_RO = 4, B_KV = 2;  // finite p backward
// Exponent codes of the finite-p kernels: E >= 0 a compile-time integer power; GEN any real power;
// SKIP any real power, skipping whole vectors of negligible terms (pays off at large exponents
// only, where most |t|/m are far below 1; the branch would cost more than it saves at p < ~40).
constexpr int GEN = -1, SKIP = -2;
#ifndef SKIP_ABOVE
#define SKIP_ABOVE 50
#endif
// Smaller tiles for the general (exp/log) power, whose temporaries would otherwise spill;
// they must divide the ones above (the caller pads to those).
#ifndef G_FWD_RB
#define G_FWD_RB 2
#endif
#ifndef G_FWD_NV
#define G_FWD_NV 1
#endif
#ifndef G_BWD_RB
#define G_BWD_RB 1
#endif
#ifndef G_BWD_RO
#define G_BWD_RO 2
#endif
#ifndef G_BWD_KV
#define G_BWD_KV 1
#endif

template <typename T> struct VT;
template <> struct VT<float> {
  typedef float V __attribute__((vector_size(VBYTES)));
  typedef int32_t I __attribute__((vector_size(VBYTES)));
  static constexpr int L = VBYTES / 4;
  static constexpr int32_t SIGN = INT32_MIN;
  static constexpr int32_t ABS = INT32_MAX;
};
template <> struct VT<double> {
  typedef double V __attribute__((vector_size(VBYTES)));
  typedef int64_t I __attribute__((vector_size(VBYTES)));
  static constexpr int L = VBYTES / 8;
  static constexpr int64_t SIGN = INT64_MIN;
  static constexpr int64_t ABS = INT64_MAX;
};

template <typename V> inline V vload(const void* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V> inline void vstore(void* p, V v) { std::memcpy(p, &v, sizeof(V)); }

template <typename T> inline typename VT<T>::V vabs(typename VT<T>::V v) {
  typedef typename VT<T>::V V; typedef typename VT<T>::I I;
  return (V)((I)v & VT<T>::ABS);
}

// ---- r^e for r in [0, 1+eps]: integer exponents by multiplication, general ones by exp(e log r).
template <typename T, int E> struct IPow {
  static inline typename VT<T>::V f(typename VT<T>::V r) {
    typedef typename VT<T>::V V;
    if constexpr (E == 0) { return (r > 0) ? V{} + 1 : V{}; }  // 0^0 := 0 here (sign(0) = 0)
    else if constexpr (E == 1) { return r; }
    else if constexpr (E % 2 == 0) { auto h = IPow<T, E / 2>::f(r); return h * h; }
    else { auto h = IPow<T, E - 1>::f(r); return h * r; }
  }
};

// Cephes-style float log/exp polynomials, vectorised. Accurate to a few ulp on (0, 1].
inline VT<float>::V vlogf(VT<float>::V x) {
  typedef VT<float>::V V; typedef VT<float>::I I;
  x = (x < 1.17549435e-38f) ? V{} + 1.17549435e-38f : x;
  I bits = (I)x;
  I e = ((bits >> 23) & 0xff) - 126;
  V m = (V)((bits & 0x807fffff) | 0x3f000000);  // m in [0.5, 1)
  I small = m < 0.707106781186547524f;
  e = e + small;  // small is -1 where true
  V ef = __builtin_convertvector(e, V);
  m = small ? m + m - 1.0f : m - 1.0f;
  V z = m * m;
  V y = V{} + 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + ef * 0.693359375f;
}

inline VT<float>::V vexpf_neg(VT<float>::V x) {  // x <= ~0; returns 0 below -87
  typedef VT<float>::V V; typedef VT<float>::I I;
  I under = x < -87.0f;
  x = under ? V{} - 87.0f : x;
  x = (x > 0.0f) ? V{} : x;
  V fx = x * 1.44269504088896341f + 0.5f;
  I n = __builtin_convertvector(fx, I);
  V nf = __builtin_convertvector(n, V);
  nf = (nf > fx) ? nf - 1.0f : nf;  // floor
  n = __builtin_convertvector(nf, I);
  x = x - nf * 0.693359375f;
  x = x - nf * -2.12194440e-4f;
  V z = x * x;
  V y = V{} + 1.9875691500E-4f;
  y = y * x + 1.3981999507E-3f;
  y = y * x + 8.3334519073E-3f;
  y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f;
  y = y * x + 5.0000001201E-1f;
  y = y * z + x + 1.0f;
  V p2 = (V)((n + 127) << 23);
  y = y * p2;
  return under ? V{} : y;
}

// General power r^e for r in [0, 1 + ulp], e > 0, as one object per call (the per-call constants
// are built once and live in registers): Pow<T, E>(e).f(r).
//
// float with AVX-512 (the training path): r^e = 2^X, X = e·log2 r, all in float, 22 vector ops
// per 16 terms (the Cephes path below took ~45, plus spills):
//   log2 r = k + log2 m (getexp / getmant, m in [1, 2)); the top 4 mantissa bits select a table
//   entry c_j ≈ 1/m (vpermps), x = m·c_j − 1 in [−1/32, 1/16], log2 m = −log2 c_j + x·P4(x).
//   The c_j are chosen (Gal's accurate tables) so that −log2 c_j is a float to ~1e−11; c_0 = 1
//   and c_15 = 1/2 make X exactly 0 at r = 1 and tiny near it (the terms that dominate the sums).
//   X = e·(k + l_j + x·P4(x)): k + l_j is exact (or rounded relative to itself), so X carries
//   only relative rounding errors; folding e into l_j instead would add an absolute error of
//   e·2^−24 (≈ 3e−7 relative at p = 8.5 for the terms near 1).
//   2^X: X = n + f, n = floor(X), f in [0, 1) (vreduceps), 2^f by a degree-6 polynomial, then
//   scalef (which applies 2^floor(X) itself, exactly). getexp/getmant ignore the sign, so the
//   caller passes t/m and saves the |·|.
//   Terms with X ≤ −64 (and r = 0, where X = −inf) are returned as exactly 0: they are invisible
//   next to the largest term of every sum (1 in the forward, ≥ 1/K in the backward), and letting
//   them through would create subnormal floats, which cost ~100× on x86 (p ≈ 20–40).
//   Relative error of a term ≲ 1e−7·(1 + |X|) (the float rounding of X; measured: ≤ 1e−7 for the
//   terms near 1, ≤ 3.7e−6 at X = −40), i.e. of the order of rounding r to float before an exact
//   pow (which amplifies by e); the forward's 1/e-th root divides it by e again.
// float without AVX-512 (or with -DASYMCERT_CEPHES_POW: the pre-fix path, which the benchmark
//   builds for its before/after rows): Cephes-style log/exp in portable GCC vector code, ~3× slower.
// double: libm pow lane by lane (exact; float64 is for tests and gradchecks, not speed).
template <typename T, int E> struct Pow {  // E >= 0: compile-time integer exponent
  static constexpr bool kSignFree = false;  // f(−r) == f(r): the caller may skip |·|
  explicit Pow(T) {}
  inline typename VT<T>::V f(typename VT<T>::V r) const { return IPow<T, E>::f(r); }
};

#if defined(__AVX512F__) && !defined(ASYMCERT_CEPHES_POW)  // the macro: old path, for benchmarks
// log2(1 + x)/x on [−1/31.5, 1/15.9], relative error 2.4e−9; 2^f on [0, 1], 1.9e−9.
constexpr float LOG2_P[5] = {1.442695022e+00f, -7.213475704e-01f, 4.809192717e-01f, -3.607814610e-01f,
                             2.711552978e-01f};
constexpr float EXP2_P[7] = {1.000000000e+00f, 6.931470037e-01f, 2.402298301e-01f, 5.548334122e-02f,
                             9.678839706e-03f, 1.243969542e-03f, 2.170223161e-04f};
// c_j ≈ 1/(1 + (j + 1/2)/16) and l_j = −log2 c_j (exact to ~1e−11), j = 0..15.
alignas(64) constexpr float LOG2_RC[16] = {
    1.000000000e+00f, 9.141801000e-01f, 8.646962047e-01f, 8.205010295e-01f, 7.804515362e-01f, 7.441802621e-01f,
    7.112435699e-01f, 6.807578206e-01f, 6.530516148e-01f, 6.274859309e-01f, 6.039491892e-01f, 5.819737911e-01f,
    5.612552166e-01f, 5.425108671e-01f, 5.245746970e-01f, 5.000000000e-01f};
alignas(64) constexpr float LOG2_L[16] = {
    0.000000000e+00f, 1.294496804e-01f, 2.097347379e-01f, 2.854229510e-01f, 3.576190472e-01f, 4.262759686e-01f,
    4.915843904e-01f, 5.547864437e-01f, 6.147310734e-01f, 6.723449826e-01f, 7.275009155e-01f, 7.809739113e-01f,
    8.332711458e-01f, 8.822760582e-01f, 9.307798743e-01f, 1.000000000e+00f};

template <> struct Pow<float, GEN> {
  static constexpr bool kSignFree = true;
  __m512 rc, lt, ev, lp[5], cut;
  explicit Pow(float e) {
    rc = _mm512_load_ps(LOG2_RC);
    lt = _mm512_load_ps(LOG2_L);
    ev = _mm512_set1_ps(e);
    for (int i = 0; i < 5; ++i) lp[i] = _mm512_set1_ps(LOG2_P[i]);
    cut = _mm512_set1_ps(-64.0f);
  }
  inline VT<float>::V f(VT<float>::V rv) const {
    __m512 r;
    std::memcpy(&r, &rv, sizeof(r));
    const __m512 k = _mm512_getexp_ps(r);                                   // floor(log2 r), −inf at 0
    const __m512 m = _mm512_getmant_ps(r, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);  // [1, 2)
    const __m512i j = _mm512_srli_epi32(_mm512_castps_si512(m), 19);        // low 4 bits: table index
    const __m512 x = _mm512_fmsub_ps(m, _mm512_permutexvar_ps(j, rc), _mm512_set1_ps(1.0f));
    __m512 q = _mm512_fmadd_ps(lp[4], x, lp[3]);
    q = _mm512_fmadd_ps(q, x, lp[2]);
    q = _mm512_fmadd_ps(q, x, lp[1]);
    q = _mm512_fmadd_ps(q, x, lp[0]);
    const __m512 kl = _mm512_add_ps(k, _mm512_permutexvar_ps(j, lt));       // k + l_j
    const __m512 X = _mm512_mul_ps(_mm512_fmadd_ps(x, q, kl), ev);          // e·log2 r
    const __mmask16 keep = _mm512_cmp_ps_mask(X, cut, _CMP_GT_OQ);          // false at −inf / NaN
#if defined(__AVX512DQ__)
    const __m512 fr = _mm512_reduce_ps(X, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // X − floor(X)
#else
    const __m512 fr = _mm512_sub_ps(X, _mm512_roundscale_ps(X, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
#endif
    __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(EXP2_P[6]), fr, _mm512_set1_ps(EXP2_P[5]));
    y = _mm512_fmadd_ps(y, fr, _mm512_set1_ps(EXP2_P[4]));
    y = _mm512_fmadd_ps(y, fr, _mm512_set1_ps(EXP2_P[3]));
    y = _mm512_fmadd_ps(y, fr, _mm512_set1_ps(EXP2_P[2]));
    y = _mm512_fmadd_ps(y, fr, _mm512_set1_ps(EXP2_P[1]));
    y = _mm512_fmadd_ps(y, fr, _mm512_set1_ps(EXP2_P[0]));
    y = _mm512_maskz_scalef_ps(keep, y, X);  // y·2^floor(X)
    VT<float>::V out;
    std::memcpy(&out, &y, sizeof(out));
    return out;
  }
};
#else
template <> struct Pow<float, GEN> {
  static constexpr bool kSignFree = false;
  float e;
  explicit Pow(float e_) : e(e_) {}
  inline VT<float>::V f(VT<float>::V r) const {
    VT<float>::V v = vexpf_neg(vlogf(r) * e);
    return (r > 0.0f) ? v : VT<float>::V{};
  }
};
#endif

template <> struct Pow<double, GEN> {
  static constexpr bool kSignFree = false;
  double e;
  explicit Pow(double e_) : e(e_) {}
  inline VT<double>::V f(VT<double>::V r) const {
    VT<double>::V out;
    for (int l = 0; l < VT<double>::L; ++l) out[l] = r[l] > 0 ? std::pow(r[l], e) : 0.0;
    return out;
  }
};
template <typename T> struct Pow<T, SKIP> : Pow<T, GEN> {
  static constexpr bool kSignFree = false;  // any_above needs |t|/m
  using Pow<T, GEN>::Pow;
};

// Terms r^e with r below skip_below(e) are < 2^-40 (float) / 2^-60 (double) and are skipped in
// whole vectors by the general-power kernels (they would not change a float sum whose largest
// term is 1). Only where a cheap "any lane" test exists (AVX-512); elsewhere nothing is skipped.
template <typename T> inline T skip_below(T e) {
  return e > 0 ? std::exp2((std::is_same<T, float>::value ? T(-40) : T(-60)) / e) : T(0);
}
template <typename T> inline bool any_above(typename VT<T>::V r, T thr) {
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    __m512 v; std::memcpy(&v, &r, sizeof(v));
    return _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr), _CMP_GT_OQ) != 0;
  } else {
    __m512d v; std::memcpy(&v, &r, sizeof(v));
    return _mm512_cmp_pd_mask(v, _mm512_set1_pd(thr), _CMP_GT_OQ) != 0;
  }
#else
  (void)r; (void)thr;
  return true;
#endif
}

// ---- p = ∞ forward: y = max_k |x − w|, optionally first argmax and sign of (x − w) there.
constexpr int KB = 16;  // argmax bookkeeping block along k
constexpr int SB = 64;  // finite-p forward: partial sums over blocks of SB terms

// First k in [k0, k1) with |x[k] − w[k]| == y (bitwise the same arithmetic as the forward);
// writes the sign of x − w there. Returns k0 when there is none (NaN inputs only).
template <typename T>
inline int64_t first_hit(const T* xb, const T* wo, int64_t k0, int64_t k1, T yv, T* s) {
  int64_t k = k0;
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    const __m512 yy = _mm512_set1_ps(yv);
    for (; k + 16 <= k1; k += 16) {
      const __m512 t = _mm512_sub_ps(_mm512_loadu_ps(xb + k), _mm512_loadu_ps(wo + k));
      const __mmask16 m = _mm512_cmp_ps_mask(_mm512_abs_ps(t), yy, _CMP_EQ_OQ);
      if (m) { k += __builtin_ctz((unsigned)m); break; }
    }
  } else {
    const __m512d yy = _mm512_set1_pd(yv);
    for (; k + 8 <= k1; k += 8) {
      const __m512d t = _mm512_sub_pd(_mm512_loadu_pd(xb + k), _mm512_loadu_pd(wo + k));
      const __mmask8 m = _mm512_cmp_pd_mask(_mm512_abs_pd(t), yy, _CMP_EQ_OQ);
      if (m) { k += __builtin_ctz((unsigned)m); break; }
    }
  }
#endif
  for (; k < k1; ++k) {
    const T t = xb[k] - wo[k];
    if (std::fabs(t) == yv) {
      *s = (t > 0) ? T(1) : ((t < 0) ? T(-1) : T(0));
      return k;
    }
  }
  *s = T(0);
  return k0;
}

template <typename T, int RB, int NV, bool ARG>
void linf_fwd(const T* x, const T* w, const T* wP, int64_t B, int64_t K, int64_t O,
              T* y, int64_t* idx, T* sgn, int nthreads) {
  typedef typename VT<T>::V V; typedef typename VT<T>::I I;
  constexpr int L = VT<T>::L, OT = NV * L;
  const int64_t nbt = (B + RB - 1) / RB, nots = (O + OT - 1) / OT;
#pragma omp parallel for collapse(2) schedule(dynamic, 4) num_threads(nthreads)
  for (int64_t ot = 0; ot < nots; ++ot) {
    for (int64_t bt = 0; bt < nbt; ++bt) {
      const int64_t o0 = ot * OT, b0 = bt * RB;
      const T* xr[RB];
      for (int i = 0; i < RB; ++i) xr[i] = x + std::min<int64_t>(b0 + i, B - 1) * K;
      const T* wpan = wP + ot * K * OT;
      V acc[RB][NV];
      I blk[RB][NV];
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < NV; ++j) { acc[i][j] = V{} - 1; blk[i][j] = I{}; }
      for (int64_t kb = 0; kb < K; kb += KB) {
        const int64_t ke = std::min<int64_t>(K, kb + KB);
        V prev[RB][NV];
        if constexpr (ARG) {
          for (int i = 0; i < RB; ++i)
            for (int j = 0; j < NV; ++j) prev[i][j] = acc[i][j];
        }
        for (int64_t k = kb; k < ke; ++k) {
          const T* wk = wpan + k * OT;
          V wv[NV];
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) wv[j] = vload<V>(wk + j * L);
#pragma GCC unroll 8
          for (int i = 0; i < RB; ++i) {
            const T xs = xr[i][k];
#pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) {
              V t = vabs<T>(xs - wv[j]);
              acc[i][j] = (t > acc[i][j]) ? t : acc[i][j];
            }
          }
        }
        if constexpr (ARG) {
          const I kbv = I{} + (int)(kb / KB);
          for (int i = 0; i < RB; ++i)
            for (int j = 0; j < NV; ++j) blk[i][j] = (acc[i][j] > prev[i][j]) ? kbv : blk[i][j];
        }
      }
      for (int i = 0; i < RB; ++i) {
        const int64_t b = b0 + i;
        if (b >= B) break;
        for (int j = 0; j < NV; ++j) {
          for (int l = 0; l < L; ++l) {
            const int64_t o = o0 + j * L + l;
            if (o >= O) break;
            const T yv = acc[i][j][l];
            y[b * O + o] = yv;
            if constexpr (ARG) {
              const int64_t k0 = (int64_t)blk[i][j][l] * KB, k1 = std::min<int64_t>(K, k0 + KB);
              T s;
              idx[b * O + o] = first_hit<T>(x + b * K, w + o * K, k0, k1, yv, &s);
              sgn[b * O + o] = s;
            }
          }
        }
      }
    }
  }
}

// ---- finite p forward, second pass: y = m · (Σ_k (|x − w| / m)^p)^{1/p}, m = max_k |x − w|.
// m comes in y (B, O) from linf_fwd and is overwritten with the result.
template <typename T, int RB, int NV, int E, int PW>
void lp_fwd(const T* x, const T* wP, int64_t B, int64_t K, int64_t O, T p, T* y, int nthreads) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L, OT = NV * L;
  const int64_t nbt = (B + RB - 1) / RB, nots = (O + OT - 1) / OT;
  const T thr = skip_below<T>(p);
  const Pow<T, E> pw(p);
#pragma omp parallel for collapse(2) schedule(dynamic, 4) num_threads(nthreads)
  for (int64_t ot = 0; ot < nots; ++ot) {
    for (int64_t bt = 0; bt < nbt; ++bt) {
      const int64_t o0 = ot * OT, b0 = bt * RB;
      const T* xr[RB];
      int64_t br[RB];
      V inv[RB][NV], acc[RB][NV];
      for (int i = 0; i < RB; ++i) {
        br[i] = std::min<int64_t>(b0 + i, B - 1);
        xr[i] = x + br[i] * K;
        for (int j = 0; j < NV; ++j) {
          V m;
          for (int l = 0; l < L; ++l) {
            const int64_t o = std::min<int64_t>(o0 + j * L + l, O - 1);
            m[l] = y[br[i] * O + o];
          }
          inv[i][j] = (m > 0) ? T(1) / m : V{};
          acc[i][j] = V{};
        }
      }
      // two-level sum (blocks of SB terms): rounding error ~(SB + K/SB)·eps instead of K·eps
      for (int64_t kb = 0; kb < K; kb += SB) {
      V part[RB][NV];
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < NV; ++j) part[i][j] = V{};
      const int64_t ke = std::min<int64_t>(K, kb + SB);
      for (int64_t k = kb; k < ke; ++k) {
        const T* wk = wP + (o0 / PW) * K * PW + k * PW + (o0 % PW);
        V wv[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) wv[j] = vload<V>(wk + j * L);
        // fully unrolled: the RB·NV power evaluations are independent chains the core overlaps
#pragma GCC unroll 8
        for (int i = 0; i < RB; ++i) {
          const T xs = xr[i][k];
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) {
            V r;
            if constexpr (Pow<T, E>::kSignFree) r = (xs - wv[j]) * inv[i][j];
            else r = vabs<T>(xs - wv[j]) * inv[i][j];
            if constexpr (E == SKIP) {
              if (any_above<T>(r, thr)) part[i][j] += pw.f(r);
            } else {
              part[i][j] += pw.f(r);
            }
          }
        }
      }
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < NV; ++j) acc[i][j] += part[i][j];
      }
      const T ip = T(1) / p;
      for (int i = 0; i < RB; ++i) {
        const int64_t b = b0 + i;
        if (b >= B) break;
        for (int j = 0; j < NV; ++j)
          for (int l = 0; l < L; ++l) {
            const int64_t o = o0 + j * L + l;
            if (o >= O) break;
            const T m = y[b * O + o];
            y[b * O + o] = (m > 0) ? m * std::pow(acc[i][j][l], ip) : T(0);
          }
      }
    }
  }
}

// ---- finite p backward: c = g · sign(t) · (|t| / y)^{p−1}, t = x − w;
// gx[b,k] = Σ_o c, gw[o,k] = −Σ_b c. Caller pads K to a multiple of KV·L and B, O to multiples of
// RB, RO with zeros (zero g / inv rows contribute nothing); inv = 1/y where y > 0 else 0.
// gx (B, K) and gw (O, K) are overwritten.
template <typename T, int RB, int RO, int KV, int E>
void lp_bwd(const T* x, const T* w, const T* inv, const T* g, int64_t B, int64_t K, int64_t O, T pm1,
            T* gx, T* gw, int nthreads) {
  typedef typename VT<T>::V V; typedef typename VT<T>::I I;
  constexpr int L = VT<T>::L, KC = KV * L;
  const int64_t nkc = K / KC;
  const T thr = skip_below<T>(pm1);
  const Pow<T, E> pw(pm1);
#pragma omp parallel num_threads(nthreads)
  {
    // Per-thread contiguous copies of one k-chunk of x, w and their gradients: rows of the
    // global arrays are K apart, which would alias in the caches when K is a power of two.
    T* buf = new T[(size_t)2 * (B + O) * KC];
    T* xc = buf;
    T* wc = xc + B * KC;
    T* gxc = wc + O * KC;
    T* gwc = gxc + B * KC;
#pragma omp for schedule(dynamic, 1)
    for (int64_t kc = 0; kc < nkc; ++kc) {
      const int64_t k0 = kc * KC;
      for (int64_t b = 0; b < B; ++b) std::memcpy(xc + b * KC, x + b * K + k0, sizeof(T) * KC);
      for (int64_t o = 0; o < O; ++o) std::memcpy(wc + o * KC, w + o * K + k0, sizeof(T) * KC);
      std::memset(gwc, 0, sizeof(T) * O * KC);
      for (int64_t b0 = 0; b0 < B; b0 += RB) {
        V xv[RB][KV], gxa[RB][KV];
        for (int i = 0; i < RB; ++i)
          for (int v = 0; v < KV; ++v) {
            xv[i][v] = vload<V>(xc + (b0 + i) * KC + v * L);
            gxa[i][v] = V{};
          }
        for (int64_t o0 = 0; o0 < O; o0 += RO) {
          V wv[RO][KV], gwa[RO][KV];
          for (int j = 0; j < RO; ++j)
            for (int v = 0; v < KV; ++v) {
              wv[j][v] = vload<V>(wc + (o0 + j) * KC + v * L);
              gwa[j][v] = vload<V>(gwc + (o0 + j) * KC + v * L);
            }
#pragma GCC unroll 8
          for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
            for (int j = 0; j < RO; ++j) {
              const T iv = inv[(b0 + i) * O + o0 + j];
              const T gg = g[(b0 + i) * O + o0 + j];
#pragma GCC unroll 8
              for (int v = 0; v < KV; ++v) {
                const V t = xv[i][v] - wv[j][v];
                V r;
                if constexpr (Pow<T, E>::kSignFree) r = t * iv;
                else r = vabs<T>(t) * iv;
                if constexpr (E == SKIP) {
                  if (!any_above<T>(r, thr)) continue;
                }
                const V q = pw.f(r) * gg;
                const V c = (V)(((I)q) ^ ((I)t & VT<T>::SIGN));
                gxa[i][v] += c;
                gwa[j][v] -= c;
              }
            }
          }
          for (int j = 0; j < RO; ++j)
            for (int v = 0; v < KV; ++v) vstore<V>(gwc + (o0 + j) * KC + v * L, gwa[j][v]);
        }
        for (int i = 0; i < RB; ++i)
          for (int v = 0; v < KV; ++v) vstore<V>(gx + (b0 + i) * K + k0 + v * L, gxa[i][v]);
      }
      for (int64_t o = 0; o < O; ++o) std::memcpy(gw + o * K + k0, gwc + o * KC, sizeof(T) * KC);
    }
    delete[] buf;
  }
}

// ---- p = ∞ backward: gx[b, idx[b,o]] += s[b,o]·g[b,o]; gw[o, idx[b,o]] −= s[b,o]·g[b,o].
// gx (B, K) and gw (O, K) are overwritten; either may be null. Rows are owned by one thread each.
template <typename T>
void linf_bwd(const int64_t* idx, const T* sgn, const T* g, int64_t B, int64_t K, int64_t O, T* gx, T* gw,
              int nthreads) {
  constexpr int OB = 64;
#pragma omp parallel num_threads(nthreads)
  {
    if (gx) {
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        T* row = gx + b * K;
        std::memset(row, 0, sizeof(T) * K);
        const int64_t* ib = idx + b * O;
        const T* sb = sgn + b * O;
        const T* gb = g + b * O;
        for (int64_t o = 0; o < O; ++o) row[ib[o]] += sb[o] * gb[o];
      }
    }
    if (gw) {
#pragma omp for schedule(static)
      for (int64_t o0 = 0; o0 < O; o0 += OB) {
        const int64_t o1 = std::min<int64_t>(O, o0 + OB);
        std::memset(gw + o0 * K, 0, sizeof(T) * K * (o1 - o0));
        for (int64_t b = 0; b < B; ++b) {
          const int64_t* ib = idx + b * O;
          const T* sb = sgn + b * O;
          const T* gb = g + b * O;
          for (int64_t o = o0; o < o1; ++o) gw[o * K + ib[o]] -= sb[o] * gb[o];
        }
      }
    }
  }
}

// Pack w (O, K) into panels wP (ceil(O / PW), K, PW), zero-padded; 64 × 64 blocks stay in L1.
template <typename T>
void pack_panels(const T* w, int64_t O, int64_t K, T* wP, int nthreads) {
  constexpr int PW = F_NV * VT<T>::L, KBLK = 64;
  const int64_t np = (O + PW - 1) / PW, nkb = (K + KBLK - 1) / KBLK;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
  for (int64_t p = 0; p < np; ++p) {
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t k0 = kb * KBLK, k1 = std::min<int64_t>(K, k0 + KBLK);
      T* dst = wP + p * K * PW;
      for (int j = 0; j < PW; ++j) {
        const int64_t o = p * PW + j;
        if (o < O) {
          const T* src = w + o * K;
          for (int64_t k = k0; k < k1; ++k) dst[k * PW + j] = src[k];
        } else {
          for (int64_t k = k0; k < k1; ++k) dst[k * PW + j] = T(0);
        }
      }
    }
  }
}


template <typename T, int E>
void lp_fwd_e(const T* x, const T* wP, int64_t B, int64_t K, int64_t O, T p, T* y, int nt) {
  if constexpr (E < 0) lp_fwd<T, G_FWD_RB, G_FWD_NV, E, F_NV * VT<T>::L>(x, wP, B, K, O, p, y, nt);
  else lp_fwd<T, P_RB, P_NV, E, F_NV * VT<T>::L>(x, wP, B, K, O, p, y, nt);
}
template <typename T, int E>
void lp_bwd_e(const T* x, const T* w, const T* inv, const T* g, int64_t B, int64_t K, int64_t O, T pm1,
              T* gx, T* gw, int nt) {
  if constexpr (E < 0) lp_bwd<T, G_BWD_RB, G_BWD_RO, G_BWD_KV, E>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  else lp_bwd<T, B_RB, B_RO, B_KV, E>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
}

// Integer exponents with a specialised kernel; anything else uses the general pow.
template <typename T>
int lp_fwd_dispatch(const T* x, const T* wP, int64_t B, int64_t K, int64_t O, T p, T* y, int nt) {
  if (p == 1) lp_fwd_e<T, 1>(x, wP, B, K, O, p, y, nt);
  else if (p == 2) lp_fwd_e<T, 2>(x, wP, B, K, O, p, y, nt);
  else if (p == 4) lp_fwd_e<T, 4>(x, wP, B, K, O, p, y, nt);
  else if (p == 8) lp_fwd_e<T, 8>(x, wP, B, K, O, p, y, nt);
  else if (p == 16) lp_fwd_e<T, 16>(x, wP, B, K, O, p, y, nt);
  else if (p > SKIP_ABOVE) lp_fwd_e<T, SKIP>(x, wP, B, K, O, p, y, nt);
  else lp_fwd_e<T, GEN>(x, wP, B, K, O, p, y, nt);
  return 0;
}
template <typename T>
int lp_bwd_dispatch(const T* x, const T* w, const T* inv, const T* g, int64_t B, int64_t K, int64_t O, T p,
                    T* gx, T* gw, int nt) {
  const T pm1 = p - 1;
  if (p == 1) lp_bwd_e<T, 0>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  else if (p == 2) lp_bwd_e<T, 1>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  else if (p == 4) lp_bwd_e<T, 3>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  else if (p == 8) lp_bwd_e<T, 7>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  else if (p == 16) lp_bwd_e<T, 15>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  else if (pm1 > SKIP_ABOVE) lp_bwd_e<T, SKIP>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  else lp_bwd_e<T, GEN>(x, w, inv, g, B, K, O, pm1, gx, gw, nt);
  return 0;
}

}  // namespace

extern "C" {

int asymcert_abi_version() { return 1; }
// Padding multiples the caller must honour, per dtype (0 = float32, 1 = float64).
int asymcert_panel(int dt) { return dt == 0 ? F_NV * VT<float>::L : F_NV * VT<double>::L; }
int asymcert_bwd_kchunk(int dt) { return dt == 0 ? B_KV * VT<float>::L : B_KV * VT<double>::L; }
int asymcert_bwd_rb() { return B_RB; }
int asymcert_bwd_ro() { return B_RO; }

int asymcert_pack_f32(const float* w, int64_t O, int64_t K, float* wP, int nt) {
  pack_panels<float>(w, O, K, wP, nt);
  return 0;
}
int asymcert_pack_f64(const double* w, int64_t O, int64_t K, double* wP, int nt) {
  pack_panels<double>(w, O, K, wP, nt);
  return 0;
}
int asymcert_linf_bwd_f32(const int64_t* idx, const float* sgn, const float* g, int64_t B, int64_t K, int64_t O,
                          float* gx, float* gw, int nt) {
  linf_bwd<float>(idx, sgn, g, B, K, O, gx, gw, nt);
  return 0;
}
int asymcert_linf_bwd_f64(const int64_t* idx, const double* sgn, const double* g, int64_t B, int64_t K, int64_t O,
                          double* gx, double* gw, int nt) {
  linf_bwd<double>(idx, sgn, g, B, K, O, gx, gw, nt);
  return 0;
}
int asymcert_linf_fwd_f32(const float* x, const float* w, const float* wP, int64_t B, int64_t K, int64_t O,
                          float* y, int64_t* idx, float* sgn, int nt) {
  if (idx) linf_fwd<float, A_RB, F_NV, true>(x, w, wP, B, K, O, y, idx, sgn, nt);
  else linf_fwd<float, F_RB, F_NV, false>(x, w, wP, B, K, O, y, idx, sgn, nt);
  return 0;
}
int asymcert_linf_fwd_f64(const double* x, const double* w, const double* wP, int64_t B, int64_t K, int64_t O,
                          double* y, int64_t* idx, double* sgn, int nt) {
  if (idx) linf_fwd<double, A_RB, F_NV, true>(x, w, wP, B, K, O, y, idx, sgn, nt);
  else linf_fwd<double, F_RB, F_NV, false>(x, w, wP, B, K, O, y, idx, sgn, nt);
  return 0;
}
int asymcert_lp_fwd_f32(const float* x, const float* wP, int64_t B, int64_t K, int64_t O, double p,
                        float* y, int nt) {
  return lp_fwd_dispatch<float>(x, wP, B, K, O, (float)p, y, nt);
}
int asymcert_lp_fwd_f64(const double* x, const double* wP, int64_t B, int64_t K, int64_t O, double p,
                        double* y, int nt) {
  return lp_fwd_dispatch<double>(x, wP, B, K, O, p, y, nt);
}
int asymcert_lp_bwd_f32(const float* x, const float* w, const float* inv, const float* g, int64_t B, int64_t K,
                        int64_t O, double p, float* gx, float* gw, int nt) {
  return lp_bwd_dispatch<float>(x, w, inv, g, B, K, O, (float)p, gx, gw, nt);
}
int asymcert_lp_bwd_f64(const double* x, const double* w, const double* inv, const double* g, int64_t B, int64_t K,
                        int64_t O, double p, double* gx, double* gw, int nt) {
  return lp_bwd_dispatch<double>(x, w, inv, g, B, K, O, p, gx, gw, nt);
}

}  // extern "C"
