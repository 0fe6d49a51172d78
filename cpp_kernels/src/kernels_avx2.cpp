// AVX2 kernels for CPUs without AVX-512 VNNI. The u8 x s8 dot products are widened to int16 and
// summed with vpmaddwd (exact; vpmaddubsw would saturate u8*s8 pair sums above 32767), reading the
// same packed layout as the VNNI path. No torch headers here (see kernels.h).
#include <immintrin.h>

#include <cstring>

#include "kernels.h"

#pragma GCC target("avx2,fma")

namespace ec {
namespace {

inline __m256i mask8(int64_t count) {
  const int c = count >= 8 ? 8 : int(count);
  alignas(32) static const int32_t tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tbl + 8 - c));
}

// acc (8 int32, channel order 0,1,4,5 | 2,3,6,7) += dot4(a[ch], b[ch]) for 8 channels x 4 bytes.
inline __m256i dot8(__m256i acc, __m256i a16lo, __m256i a16hi, __m256i b16lo, __m256i b16hi) {
  const __m256i lo = _mm256_madd_epi16(a16lo, b16lo), hi = _mm256_madd_epi16(a16hi, b16hi);
  return _mm256_add_epi32(acc, _mm256_hadd_epi32(lo, hi));
}

inline __m256i unscramble(__m256i acc) { return _mm256_permute4x64_epi64(acc, 0xD8); }

template <class Args>
inline void epilogue8(const Args& g, __m256i acc, __m256i xsum, int64_t nn, int64_t count, int64_t out_idx) {
  const __m256i m = mask8(count);
  acc = _mm256_add_epi32(acc, _mm256_maskload_epi32(g.corr + nn, m));
  if (g.wzp) acc = _mm256_sub_epi32(acc, _mm256_mullo_epi32(_mm256_maskload_epi32(g.wzp + nn, m), xsum));
  if (g.out_kind == kOutI32) {
    _mm256_maskstore_epi32(static_cast<int32_t*>(g.out) + out_idx, m, acc);
    return;
  }
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_maskload_ps(g.mult + nn, m));
  v = _mm256_add_ps(v, _mm256_maskload_ps(g.bias + nn, m));
  if (g.act != kActNone) v = _mm256_max_ps(v, _mm256_setzero_ps());
  if (g.act == kActRelu6) v = _mm256_min_ps(v, _mm256_set1_ps(6.f));
  if (g.out_kind == kOutF32) {
    _mm256_maskstore_ps(static_cast<float*>(g.out) + out_idx, m, v);
    return;
  }
  __m256 q = _mm256_mul_ps(v, _mm256_set1_ps(g.out_inv_scale));
  q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-1e6f)), _mm256_set1_ps(1e6f));
  __m256i qi = _mm256_add_epi32(_mm256_cvtps_epi32(q), _mm256_set1_epi32(g.out_zp));
  qi = _mm256_min_epi32(_mm256_max_epi32(qi, _mm256_setzero_si256()), _mm256_set1_epi32(255));
  alignas(32) int32_t tmp[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), qi);
  uint8_t* o = static_cast<uint8_t*>(g.out) + out_idx;
  for (int64_t i = 0; i < (count < 8 ? count : 8); ++i) o[i] = static_cast<uint8_t>(tmp[i]);
}

// MR rows x 16 channels.
template <int MR>
inline void gemm_tile(const GemmArgs& g, int64_t m, int64_t n) {
  __m256i acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm256_setzero_si256();
  const int8_t* b = g.b + (n / 16) * g.kp * 16;
  const uint8_t* a = g.a + m * g.lda;
  for (int64_t kb = 0; kb < g.kp / 4; ++kb) {
    const uint8_t* ak = a + g.koff[kb];
    const __m128i* bp = reinterpret_cast<const __m128i*>(b + kb * 64);
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp)), b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp + 1));
    const __m256i b2 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp + 2)), b3 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp + 3));
    for (int r = 0; r < MR; ++r) {
      int32_t av;
      std::memcpy(&av, ak + r * g.lda, 4);
      const __m256i a16 = _mm256_cvtepu8_epi16(_mm_set1_epi32(av));
      acc0[r] = dot8(acc0[r], a16, a16, b0, b1);
      acc1[r] = dot8(acc1[r], a16, a16, b2, b3);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m256i xs = g.wzp ? _mm256_set1_epi32(g.rowsum[m + r]) : _mm256_setzero_si256();
    epilogue8(g, unscramble(acc0[r]), xs, n, g.n - n, (m + r) * g.ldc + n);
    if (g.n - n > 8) epilogue8(g, unscramble(acc1[r]), xs, n + 8, g.n - n - 8, (m + r) * g.ldc + n + 8);
  }
}

}  // namespace

void gemm_avx2(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += 16) {
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) gemm_tile<4>(g, m, n);
    for (; m < m1; ++m) gemm_tile<1>(g, m, n);
  }
}

void dw_avx2(const DwArgs& d, int64_t p0, int64_t p1) {
  const int taps = d.kh * d.kw;
  const int64_t kb_n = d.kp / 4;
  const __m128i zp = _mm_set1_epi8(static_cast<char>(d.x_zp));
  const uint8_t* src[64];
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t img = p / (d.ho * d.wo), oh = (p / d.wo) % d.ho, ow = p % d.wo;
    for (int t = 0; t < taps; ++t) {
      const int64_t ih = oh * d.sh - d.ph + (t / d.kw) * d.dh, iw = ow * d.sw - d.pw + (t % d.kw) * d.dw;
      src[t] = (ih < 0 || ih >= d.h || iw < 0 || iw >= d.w) ? nullptr : d.x + ((img * d.h + ih) * d.w + iw) * d.c;
    }
    for (int64_t c = 0; c < d.c; c += 16) {
      const int64_t cnt = d.c - c < 16 ? d.c - c : 16;
      __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, xs0 = acc0, xs1 = acc0;
      for (int64_t kb = 0; kb < kb_n; ++kb) {
        __m128i t[4];
        int32_t ones = 0;
        for (int j = 0; j < 4; ++j) {
          const int tap = int(kb * 4 + j);
          if (tap >= taps) {
            t[j] = _mm_setzero_si128();
          } else if (!src[tap]) {
            t[j] = zp;
            ones |= 1 << (8 * j);
          } else {
            ones |= 1 << (8 * j);
            if (cnt == 16) {
              t[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[tap] + c));
            } else {
              alignas(16) uint8_t buf[16] = {0};
              std::memcpy(buf, src[tap] + c, size_t(cnt));
              t[j] = _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
            }
          }
        }
        const __m128i l01 = _mm_unpacklo_epi8(t[0], t[1]), h01 = _mm_unpackhi_epi8(t[0], t[1]);
        const __m128i l23 = _mm_unpacklo_epi8(t[2], t[3]), h23 = _mm_unpackhi_epi8(t[2], t[3]);
        const __m128i q0 = _mm_unpacklo_epi16(l01, l23), q1 = _mm_unpackhi_epi16(l01, l23);
        const __m128i q2 = _mm_unpacklo_epi16(h01, h23), q3 = _mm_unpackhi_epi16(h01, h23);
        const __m256i a0 = _mm256_cvtepu8_epi16(q0), a1 = _mm256_cvtepu8_epi16(q1);
        const __m256i a2 = _mm256_cvtepu8_epi16(q2), a3 = _mm256_cvtepu8_epi16(q3);
        const __m128i* bp = reinterpret_cast<const __m128i*>(d.b + ((c / 16) * kb_n + kb) * 64);
        acc0 = dot8(acc0, a0, a1, _mm256_cvtepi8_epi16(_mm_loadu_si128(bp)), _mm256_cvtepi8_epi16(_mm_loadu_si128(bp + 1)));
        acc1 = dot8(acc1, a2, a3, _mm256_cvtepi8_epi16(_mm_loadu_si128(bp + 2)), _mm256_cvtepi8_epi16(_mm_loadu_si128(bp + 3)));
        if (d.wzp) {
          const __m256i o = _mm256_cvtepi8_epi16(_mm_set1_epi32(ones));
          xs0 = dot8(xs0, a0, a1, o, o);
          xs1 = dot8(xs1, a2, a3, o, o);
        }
      }
      epilogue8(d, unscramble(acc0), unscramble(xs0), c, cnt, p * d.c + c);
      if (cnt > 8) epilogue8(d, unscramble(acc1), unscramble(xs1), c + 8, cnt - 8, p * d.c + c + 8);
    }
  }
}

namespace {

template <int NV>
inline void spmm_row(const SpmmArgs& s, int64_t n, int64_t j, __m256i last) {
  const __m256i full = _mm256_set1_epi32(-1);
  float* o = s.out + n * s.ldo + j;
  __m256 a0[NV], a1[NV];
  for (int v = 0; v < NV; ++v) {
    a0[v] = s.accumulate ? _mm256_maskload_ps(o + 8 * v, v == NV - 1 ? last : full) : _mm256_setzero_ps();
    a1[v] = _mm256_setzero_ps();
  }
  int32_t p = s.rb[n * s.rs];
  const int32_t pe = s.re[n * s.rs];
  for (; p + 2 <= pe; p += 2) {
    const __m256 w0 = _mm256_set1_ps(s.val[p]), w1 = _mm256_set1_ps(s.val[p + 1]);
    const float* x0 = s.src + s.off[p] + j;
    const float* x1 = s.src + s.off[p + 1] + j;
    for (int v = 0; v < NV; ++v) {
      const __m256i m = v == NV - 1 ? last : full;
      a0[v] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x0 + 8 * v, m), a0[v]);
      a1[v] = _mm256_fmadd_ps(w1, _mm256_maskload_ps(x1 + 8 * v, m), a1[v]);
    }
  }
  if (p < pe) {
    const __m256 w0 = _mm256_set1_ps(s.val[p]);
    const float* x0 = s.src + s.off[p] + j;
    for (int v = 0; v < NV; ++v)
      a0[v] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x0 + 8 * v, v == NV - 1 ? last : full), a0[v]);
  }
  const __m256 b = _mm256_set1_ps(s.bias ? s.bias[n] : 0.f);
  for (int v = 0; v < NV; ++v) {
    __m256 r = _mm256_add_ps(a0[v], a1[v]);
    if (s.finalize) {
      r = _mm256_add_ps(r, b);
      if (s.act != kActNone) r = _mm256_max_ps(r, _mm256_setzero_ps());
      if (s.act == kActRelu6) r = _mm256_min_ps(r, _mm256_set1_ps(6.f));
    }
    _mm256_maskstore_ps(o + 8 * v, v == NV - 1 ? last : full, r);
  }
}

}  // namespace

void spmm_avx2(const SpmmArgs& s, int64_t n0, int64_t n1, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += 32) {
    const int64_t w = j1 - j < 32 ? j1 - j : 32;
    const int nv = int((w + 7) / 8);
    const __m256i last = mask8(w - 8 * (nv - 1));
    for (int64_t n = n0; n < n1; ++n) {
      switch (nv) {
        case 1: spmm_row<1>(s, n, j, last); break;
        case 2: spmm_row<2>(s, n, j, last); break;
        case 3: spmm_row<3>(s, n, j, last); break;
        default: spmm_row<4>(s, n, j, last); break;
      }
    }
  }
}

void quantize_avx2(const float* x, uint8_t* q, int64_t i0, int64_t i1, float scale, int32_t zp) {
  const __m256 s = _mm256_set1_ps(scale), lo = _mm256_set1_ps(-1e6f), hi = _mm256_set1_ps(1e6f);
  const __m256i z = _mm256_set1_epi32(zp), zero = _mm256_setzero_si256(), top = _mm256_set1_epi32(255);
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), s), lo), hi);
    __m256i r = _mm256_add_epi32(_mm256_cvtps_epi32(v), z);
    r = _mm256_min_epi32(_mm256_max_epi32(r, zero), top);
    alignas(32) int32_t tmp[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), r);
    for (int k = 0; k < 8; ++k) q[i + k] = static_cast<uint8_t>(tmp[k]);
  }
  for (; i < i1; ++i) {
    float v = _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(x[i] / scale), _MM_FROUND_CUR_DIRECTION));
    v += static_cast<float>(zp);
    q[i] = static_cast<uint8_t>(v < 0.f ? 0.f : (v > 255.f ? 255.f : v));
  }
}

}  // namespace ec
