// AVX-512 kernels: int8 GEMM with AMX tiles (Sapphire Rapids and later) or VNNI, depthwise with VNNI (vpdpbusd: 4 u8 x s8 products summed into each
// int32 lane, no intermediate saturation) and the fp32 sparse GEMM. Compiled for AVX-512 via the
// pragma below; only called after a runtime CPU check (ops.cpp). No torch headers here (see kernels.h).
#include <immintrin.h>

#include <cstring>

#include "kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,bmi2,popcnt,amx-tile,amx-int8")

namespace ec {
namespace {

inline __mmask16 mask_for(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
}

// vpdpbusd through asm: GCC 12 keeps a stack copy of every accumulator around the intrinsic (measured
// 3x slower); the "+v" constraint ties input and output to one register. acc += a(u8) . b(s8).
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

inline int32_t load4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Per-channel epilogue constants of 16 output channels [nn, nn + 16), loaded once per panel vector, and
// the u8 requantization bounds. For u8 outputs the activation and the clamp to [0, 255] are one clamp of
// q = v * inv_scale to [lo, hi], exactly the reference's result: inv_scale > 0, so relu(v) * inv = max(q, 0)
// and min(v, 6) * inv = min(q, fl(6 * inv)) (float rounding is monotonic); lo and hi are integers or
// clamp below the integer 255 - zp, so rounding commutes with the clamp and q + zp lands in [0, 255].
struct Epi16 {
  __m512i corr, wzp;
  __m512 mult, bias;
  __mmask16 mask;
  __m512 inv, lo, hi;
  __m512i zp;
};

template <class Args>
inline Epi16 epi_load(const Args& g, int64_t nn, __mmask16 mask) {
  Epi16 e;
  e.mask = mask;
  e.corr = _mm512_maskz_loadu_epi32(mask, g.corr + nn);
  e.wzp = g.wzp ? _mm512_maskz_loadu_epi32(mask, g.wzp + nn) : _mm512_setzero_si512();
  e.mult = _mm512_maskz_loadu_ps(mask, g.mult + nn);
  e.bias = _mm512_maskz_loadu_ps(mask, g.bias + nn);
  float lo = -float(g.out_zp), hi = 255.f - float(g.out_zp);
  if (g.act != kActNone && lo < 0.f) lo = 0.f;
  if (g.act == kActRelu6) {
    const float six_inv = 6.f * g.out_inv_scale;  // one float32 rounding, as the vector multiply
    if (six_inv < hi) hi = six_inv;
  }
  e.inv = _mm512_set1_ps(g.out_inv_scale);
  e.lo = _mm512_set1_ps(lo);
  e.hi = _mm512_set1_ps(hi);
  e.zp = _mm512_set1_epi32(g.out_zp);
  return e;
}

// float(acc + corr) * mult + bias: the float value of 16 channels before the activation (two roundings, as
// the reference).
inline __m512 epi_value(const Epi16& e, __m512i acc) {
  return _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, e.corr)), e.mult), e.bias);
}

// The epilogue of 16 channels with the output kind and the weight-zero-point term fixed at compile time.
// acc holds exact int32 sums for the channels of e; xsum is the per-row (GEMM) or per-channel (depthwise)
// input sum, only used with weight zero points; element out_idx of out (of the output kind's type).
template <int OUT, bool WZP>
inline void epilogue16_to(const Epi16& e, __m512i acc, __m512i xsum, int act, void* out, int64_t out_idx) {
  if constexpr (WZP) acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(e.wzp, xsum));
  if constexpr (OUT == kOutI32) {
    _mm512_mask_storeu_epi32(static_cast<int32_t*>(out) + out_idx, e.mask, _mm512_add_epi32(acc, e.corr));
    return;
  }
  __m512 v = epi_value(e, acc);
  if constexpr (OUT == kOutF32) {
    if (act != kActNone) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == kActRelu6) v = _mm512_min_ps(v, _mm512_set1_ps(6.f));
    _mm512_mask_storeu_ps(static_cast<float*>(out) + out_idx, e.mask, v);
    return;
  }
  // u8: the activation is inside the clamp (see Epi16)
  const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, e.inv), e.lo), e.hi);
  const __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(q), e.zp);  // nearest-even, already in [0, 255]
  _mm512_mask_cvtepi32_storeu_epi8(static_cast<uint8_t*>(out) + out_idx, e.mask, qi);
}

template <class Args>
inline void epilogue16(const Args& g, const Epi16& e, __m512i acc, __m512i xsum, int64_t out_idx) {
  if (g.wzp) {
    if (g.out_kind == kOutI32) epilogue16_to<kOutI32, true>(e, acc, xsum, g.act, g.out, out_idx);
    else if (g.out_kind == kOutF32) epilogue16_to<kOutF32, true>(e, acc, xsum, g.act, g.out, out_idx);
    else epilogue16_to<kOutU8, true>(e, acc, xsum, g.act, g.out, out_idx);
  } else {
    if (g.out_kind == kOutI32) epilogue16_to<kOutI32, false>(e, acc, xsum, g.act, g.out, out_idx);
    else if (g.out_kind == kOutF32) epilogue16_to<kOutF32, false>(e, acc, xsum, g.act, g.out, out_idx);
    else epilogue16_to<kOutU8, false>(e, acc, xsum, g.act, g.out, out_idx);
  }
}

// MR rows x NV*16 channels; acc in 4*6 = 24 zmm at most.
template <int MR, int NV>
inline void gemm_tile(const GemmArgs& g, int64_t m, int64_t n) {
  __m512i acc[MR][NV];
  _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r)
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  const int8_t* b = g.b + (n / 16) * g.kp * 16;
  const int64_t bstride = g.kp * 16;
  const uint8_t* a = g.a + m * g.lda;
  const int64_t kb_n = g.kp / 4;
  const int64_t* koff = g.koff;
  for (int64_t kb = 0; kb < kb_n; ++kb) {
    __m512i bv[NV];
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + v * bstride + kb * 64);
    const uint8_t* ak = a + koff[kb];
    _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(load4(ak + r * g.lda));
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[r][v] = dpbusd(acc[r][v], av, bv[v]);
    }
  }
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
    const int64_t nn = n + v * 16;
    const Epi16 e = epi_load(g, nn, mask_for(g.n - nn));
    _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) {
      const __m512i xs = g.wzp ? _mm512_set1_epi32(g.rowsum[m + r]) : _mm512_setzero_si512();
      epilogue16(g, e, acc[r][v], xs, (m + r) * g.ldc + nn);
    }
  }
}

// Rows per micro-tile for a panel of NV vectors: the accumulators (MR*NV) + NV weight vectors + one
// broadcast stay within the 32 zmm registers; narrow panels take more rows to amortise the weight loads.
template <int NV>
inline void gemm_panel(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n) {
  constexpr int MR = NV == 1 ? 12 : (NV == 2 ? 8 : 6);
  int64_t m = m0;
  for (; m + MR <= m1; m += MR) gemm_tile<MR, NV>(g, m, n);
  switch (m1 - m) {
#define EC_TAIL(R) \
  case R: if constexpr (R < MR) gemm_tile<R, NV>(g, m, n); break;
    EC_TAIL(11) EC_TAIL(10) EC_TAIL(9) EC_TAIL(8) EC_TAIL(7) EC_TAIL(6)
    EC_TAIL(5) EC_TAIL(4) EC_TAIL(3) EC_TAIL(2) EC_TAIL(1)
#undef EC_TAIL
    default: break;
  }
}

}  // namespace

void gemm_avx512vnni(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += 64) {
    switch ((n1 - n + 15) / 16) {
      case 1: gemm_panel<1>(g, m0, m1, n); break;
      case 2: gemm_panel<2>(g, m0, m1, n); break;
      case 3: gemm_panel<3>(g, m0, m1, n); break;
      default: gemm_panel<4>(g, m0, m1, n); break;
    }
  }
}

namespace {

// AMX palette 1: tmm0-3 = C (16 rows x 16 int32), tmm4-5 = A (16 rows x kc u8), tmm6-7 = B (kc / 4 groups
// of 4 reduction steps x 16 channels x 4 bytes: exactly the packed layout, kc * 16 bytes per chunk).
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline void amx_configure(int64_t kc) {
  TileConfig c{};
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  c.colsb[4] = c.colsb[5] = uint16_t(kc);
  c.rows[6] = c.rows[7] = uint8_t(kc / 4);
  _tile_loadconfig(&c);
}

// The epilogue of one AMX block (rows x nv 16-channel vectors of cbuf, 32 int32 per row), with the output
// kind and the weight-zero-point term fixed at compile time and every field it reads held in a local: the u8
// stores may alias anything, so epilogue16's reads of g would be redone (and its branches taken) per row.
template <int OUT, bool WZP>
void amx_block_epilogue(const GemmArgs& g, const int32_t* cbuf, int rows, int nv, int64_t m, int64_t n) {
  const int64_t ldc = g.ldc;
  const int act = g.act;
  const int32_t* rowsum = WZP ? g.rowsum + m : nullptr;
  if (OUT == kOutU8 && !WZP && nv == 2 && g.n - n >= 32 && rows % 2 == 0) {
    // Two rows x 32 channels per step, stored as two 32-byte rows. The reference's clamp of v * inv to
    // [lo, hi] before rounding is split: the upper bound in float (hi <= 255 - zp, so nothing overflows
    // the conversion), the lower one after it on 16-bit lanes (lo is an integer, so rounding commutes
    // with it; a value below -32768 saturates there and still clamps to lo), then + zp and the byte pack
    // (values already in [0, 255]): 4.25 vector instructions per 16 outputs after the scaling, where the
    // float clamp, the 32-bit zero point and a masked vpmovdb store took 5 or more.
    const Epi16 e0 = epi_load(g, n, 0xFFFF), e1 = epi_load(g, n + 16, 0xFFFF);
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    float lo_f;
    _mm_store_ss(&lo_f, _mm512_castps512_ps128(e0.lo));
    const __m512i lo16 = _mm512_set1_epi16(int16_t(lo_f)), zp16 = _mm512_set1_epi16(int16_t(g.out_zp));
    auto quant = [&](const Epi16& e, const int32_t* c) {
      return _mm512_cvtps_epi32(_mm512_min_ps(_mm512_mul_ps(epi_value(e, _mm512_load_si512(c)), e.inv), e.hi));
    };
    uint8_t* o = static_cast<uint8_t*>(g.out) + m * ldc + n;
    for (int r = 0; r < rows; r += 2, o += 2 * ldc) {
      const int32_t* c = cbuf + r * 32;
      __m512i a = _mm512_packs_epi32(quant(e0, c), quant(e1, c + 16));
      __m512i b = _mm512_packs_epi32(quant(e0, c + 32), quant(e1, c + 48));
      a = _mm512_add_epi16(_mm512_max_epi16(a, lo16), zp16);
      b = _mm512_add_epi16(_mm512_max_epi16(b, lo16), zp16);
      const __m512i rr = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(a, b));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_castsi512_si256(rr));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + ldc), _mm512_extracti64x4_epi64(rr, 1));
    }
    return;
  }
  void* out = g.out;
  for (int v = 0; v < nv; ++v) {
    const int64_t nn = n + 16 * v;
    const Epi16 e = epi_load(g, nn, mask_for(g.n - nn));
    for (int r = 0; r < rows; ++r) {
      const __m512i xs = WZP ? _mm512_set1_epi32(rowsum[r]) : _mm512_setzero_si512();
      epilogue16_to<OUT, WZP>(e, _mm512_load_si512(cbuf + r * 32 + 16 * v), xs, act, out, (m + r) * ldc + nn);
    }
  }
}

template <int OUT>
void amx_block_epilogue(const GemmArgs& g, const int32_t* cbuf, int rows, int nv, int64_t m, int64_t n) {
  if (g.wzp) amx_block_epilogue<OUT, true>(g, cbuf, rows, nv, m, n);
  else amx_block_epilogue<OUT, false>(g, cbuf, rows, nv, m, n);
}

}  // namespace

// Rows in 32-row blocks (two 16-row A tiles) x 32 channels (two B tiles), K in chunks of kc bytes (64, or
// a kernel row pair of a space-to-depth input: koff[c * kc / 4] is chunk c's offset in an A row); needs koff
// contiguous within each chunk and either kp % kc == 0 or (kc = 64) a zero-padded tail chunk (btail, with
// A rows readable to round64(kp)); checked by the dispatcher. Fewer than 16 leftover rows go to the VNNI
// kernel.
void gemm_amx(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t kc = g.kc;
  amx_configure(kc);
  alignas(64) int32_t cbuf[32 * 32];
  const int64_t kc_full = g.kp / kc;
  const int64_t kc_n = kc_full + (g.btail ? 1 : 0);
  const int64_t bstride = g.kp * 16, bchunk = kc * 16;
  for (int64_t n = n0; n < n1; n += 32) {
    const bool two = n + 16 < n1;
    const int8_t* b0 = g.b + (n / 16) * bstride;
    const int8_t* b1 = b0 + bstride;
    int64_t m = m0;
    for (; m + 16 <= m1; m += 32) {
      const bool pair = m + 32 <= m1;
      const uint8_t* a0 = g.a + m * g.lda;
      const uint8_t* a1 = a0 + 16 * g.lda;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t c = 0; c < kc_n; ++c) {
        const bool tail = c == kc_full;  // the zero-padded last chunk
        const int64_t ko = tail ? c * 64 : g.koff[c * (kc / 4)];
        _tile_loadd(4, a0 + ko, g.lda);
        _tile_loadd(6, tail ? g.btail + (n / 16) * 1024 : b0 + c * bchunk, 64);
        _tile_dpbusd(0, 4, 6);
        if (two) {
          _tile_loadd(7, tail ? g.btail + (n / 16 + 1) * 1024 : b1 + c * bchunk, 64);
          _tile_dpbusd(1, 4, 7);
        }
        if (pair) {
          _tile_loadd(5, a1 + ko, g.lda);
          _tile_dpbusd(2, 5, 6);
          if (two) _tile_dpbusd(3, 5, 7);
        }
      }
      _tile_stored(0, cbuf, 128);
      if (two) _tile_stored(1, cbuf + 16, 128);
      if (pair) {
        _tile_stored(2, cbuf + 16 * 32, 128);
        if (two) _tile_stored(3, cbuf + 16 * 32 + 16, 128);
      }
      const int rows = pair ? 32 : 16;
      if (g.out_kind == kOutU8) amx_block_epilogue<kOutU8>(g, cbuf, rows, two ? 2 : 1, m, n);
      else if (g.out_kind == kOutF32) amx_block_epilogue<kOutF32>(g, cbuf, rows, two ? 2 : 1, m, n);
      else amx_block_epilogue<kOutI32>(g, cbuf, rows, two ? 2 : 1, m, n);
      if (!pair) m -= 16;  // advanced by 16 only
    }
    if (m < m1) {
      _tile_release();
      gemm_avx512vnni(g, m, m1, n, n + 32 < n1 ? n + 32 : n1);
      amx_configure(kc);
    }
  }
  _tile_release();
}

void dw_avx512vnni(const DwArgs& d, int64_t p0, int64_t p1) {
  const int taps = d.kh * d.kw;
  const int64_t kb_n = d.kp / 4;
  const __m128i zp = _mm_set1_epi8(static_cast<char>(d.x_zp));
  const __m128i zero = _mm_setzero_si128();
  const uint8_t* src[64];  // taps <= 64 is checked by the dispatcher
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t img = p / (d.ho * d.wo), oh = (p / d.wo) % d.ho, ow = p % d.wo;
    for (int t = 0; t < taps; ++t) {
      const int64_t ih = oh * d.sh - d.ph + (t / d.kw) * d.dh, iw = ow * d.sw - d.pw + (t % d.kw) * d.dw;
      src[t] = (ih < 0 || ih >= d.h || iw < 0 || iw >= d.w) ? nullptr : d.x + ((img * d.h + ih) * d.w + iw) * d.c;
    }
    for (int64_t c = 0; c < d.c; c += 16) {
      const __mmask16 mask = mask_for(d.c - c);
      __m512i acc = _mm512_setzero_si512(), xs = _mm512_setzero_si512();
      for (int64_t kb = 0; kb < kb_n; ++kb) {
        __m128i t[4];
        int ones = 0;
        for (int j = 0; j < 4; ++j) {
          const int tap = int(kb * 4 + j);
          if (tap >= taps) {
            t[j] = zero;
          } else {
            t[j] = src[tap] ? _mm_maskz_loadu_epi8(mask, src[tap] + c) : zp;
            ones |= 1 << (8 * j);
          }
        }
        const __m128i l01 = _mm_unpacklo_epi8(t[0], t[1]), h01 = _mm_unpackhi_epi8(t[0], t[1]);
        const __m128i l23 = _mm_unpacklo_epi8(t[2], t[3]), h23 = _mm_unpackhi_epi8(t[2], t[3]);
        __m512i xv = _mm512_castsi128_si512(_mm_unpacklo_epi16(l01, l23));
        xv = _mm512_inserti32x4(xv, _mm_unpackhi_epi16(l01, l23), 1);
        xv = _mm512_inserti32x4(xv, _mm_unpacklo_epi16(h01, h23), 2);
        xv = _mm512_inserti32x4(xv, _mm_unpackhi_epi16(h01, h23), 3);
        acc = dpbusd(acc, xv, _mm512_loadu_si512(d.b + ((c / 16) * kb_n + kb) * 64));
        if (d.wzp) xs = dpbusd(xs, xv, _mm512_set1_epi32(ones));
      }
      epilogue16(d, epi_load(d, c, mask), acc, xs, p * d.c + c);
    }
  }
}

namespace {

// One output row n over up to 128 columns (NV vectors): one accumulator per vector, so NV independent
// FMA chains per nonzero (8 at full width: the FMA latency x throughput of two ports).
// One output row, NV vectors of 16 columns from column j, the last one masked. The nonzeros are split
// over U accumulator sets (p % U) so that NV * U >= 8 independent FMA chains hide the FMA latency even
// on narrow tiles (a 7x7 map is 4 vectors); the sets are summed at the end.
template <int NV, int U>
inline void spmm_row(const SpmmArgs& s, int64_t n, int64_t j, __mmask16 last) {
  float* o = s.out + n * s.ldo + j;
  __m512 acc[U][NV];
  _Pragma("GCC unroll 8") for (int u = 0; u < U; ++u) _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      acc[u][v] = _mm512_setzero_ps();
  if (s.accumulate) {
    _Pragma("GCC unroll 8") for (int v = 0; v < NV - 1; ++v) acc[0][v] = _mm512_loadu_ps(o + 16 * v);
    acc[0][NV - 1] = _mm512_maskz_loadu_ps(last, o + 16 * (NV - 1));
  }
  const int32_t* off = s.off;
  const float* val = s.val;
  const float* src = s.src + j;
  int32_t p = s.rb[n * s.rs];
  const int32_t pe = s.re[n * s.rs];
  for (; p + U <= pe; p += U) {
    _Pragma("GCC unroll 8") for (int u = 0; u < U; ++u) {
      const __m512 w = _mm512_set1_ps(val[p + u]);
      const float* x = src + off[p + u];
      _Pragma("GCC unroll 8") for (int v = 0; v < NV - 1; ++v)
          acc[u][v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 16 * v), acc[u][v]);
      acc[u][NV - 1] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(last, x + 16 * (NV - 1)), acc[u][NV - 1]);
    }
  }
  for (int u = 0; p < pe; ++p, ++u) {  // the last < U nonzeros, one per set
    const __m512 w = _mm512_set1_ps(val[p]);
    const float* x = src + off[p];
    _Pragma("GCC unroll 8") for (int v = 0; v < NV - 1; ++v)
        acc[0][v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 16 * v), acc[0][v]);
    acc[0][NV - 1] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(last, x + 16 * (NV - 1)), acc[0][NV - 1]);
  }
  const __m512 b = _mm512_set1_ps(s.bias ? s.bias[n] : 0.f);
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
    __m512 r = acc[0][v];
    _Pragma("GCC unroll 8") for (int u = 1; u < U; ++u) r = _mm512_add_ps(r, acc[u][v]);
    const __mmask16 m = v == NV - 1 ? last : __mmask16(0xFFFF);
    if (s.finalize) {
      r = _mm512_add_ps(r, b);
      if (s.act != kActNone) r = _mm512_max_ps(r, _mm512_setzero_ps());
      if (s.act == kActRelu6) r = _mm512_min_ps(r, _mm512_set1_ps(6.f));
      if (s.fout) {  // straight into the output plane, junk columns dropped
        const int64_t col = j + 16 * v, row = col / s.wq, r0 = col % s.wq;
        const __mmask16 k = __mmask16(s.keep[r0] & m);
        const int64_t pos = row * s.wo + (r0 < s.wo ? r0 : s.wo);
        _mm512_mask_storeu_ps(s.fout + n * s.fld + pos, __mmask16((1u << _mm_popcnt_u32(k)) - 1u),
                              _mm512_maskz_compress_ps(k, r));
        continue;
      }
    }
    _mm512_mask_storeu_ps(o + 16 * v, m, r);
  }
}

}  // namespace

void spmm_avx512(const SpmmArgs& s, int64_t n0, int64_t n1, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += 128) {
    const int64_t w = j1 - j < 128 ? j1 - j : 128;
    const int nv = int((w + 15) / 16);
    const __mmask16 last = mask_for(w - 16 * (nv - 1));
    for (int64_t n = n0; n < n1; ++n) {
      switch (nv) {
        case 1: spmm_row<1, 8>(s, n, j, last); break;
        case 2: spmm_row<2, 4>(s, n, j, last); break;
        case 3: spmm_row<3, 3>(s, n, j, last); break;
        case 4: spmm_row<4, 2>(s, n, j, last); break;
        case 5: spmm_row<5, 2>(s, n, j, last); break;
        case 6: spmm_row<6, 2>(s, n, j, last); break;
        case 7: spmm_row<7, 1>(s, n, j, last); break;
        default: spmm_row<8, 1>(s, n, j, last); break;
      }
    }
  }
}

void gather2_avx512(float* dst, const float* src, int64_t n) {
  // even lanes of two consecutive 16-float loads; the loads are masked to the 2r - 1 floats the r outputs
  // read, so the last row of a plane never reads past the input
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t r = n - i < 16 ? n - i : 16, need = 2 * r - 1;
    const float* p = src + 2 * i;
    const __m512 lo = _mm512_maskz_loadu_ps(mask_for(need), p);
    const __m512 hi = _mm512_maskz_loadu_ps(need > 16 ? mask_for(need - 16) : __mmask16(0), p + 16);
    _mm512_mask_storeu_ps(dst + i, mask_for(r), _mm512_permutex2var_ps(lo, even, hi));
  }
}

void patch_rows_avx512(const PatchArgs& a, int64_t p0, int64_t count, uint8_t* col) {
  // Bytes [kg, stride) of a row meet zero weights (the packed weights are zero-padded), so they are left as
  // they are: short runs are stored as whole 32-byte vectors, each overwriting the previous one's excess.
  const int64_t kg = a.kh * a.run, pitch = a.wp * a.c, tap_row = a.dh * pitch;
  const bool short_runs = a.run <= 32 && kg - a.run + 32 <= a.stride;
  const __mmask32 k32 = short_runs ? __mmask32((uint64_t(1) << a.run) - 1) : 0;
  int64_t img = p0 / (a.ho * a.wo), oh = (p0 / a.wo) % a.ho, ow = p0 % a.wo;
  const uint8_t* line = a.x + (img * a.hp + oh * a.sh) * pitch;  // first kernel row of output line (img, oh)
  for (int64_t m = 0; m < count; ++m) {
    uint8_t* row = col + m * a.stride;
    const uint8_t* src = line + ow * a.sw * a.c;
    if (short_runs) {
      for (int i = 0; i < a.kh; ++i, src += tap_row)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + i * a.run), _mm256_maskz_loadu_epi8(k32, src));
    } else {
      for (int i = 0; i < a.kh; ++i, src += tap_row) {
        uint8_t* d = row + i * a.run;
        for (int64_t o = 0; o < a.run; o += 64) {
          const int64_t left = a.run - o;
          const __mmask64 k = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
          _mm512_mask_storeu_epi8(d + o, k, _mm512_maskz_loadu_epi8(k, src + o));
        }
      }
    }
    if (++ow == a.wo) {  // next output line (possibly the next image)
      ow = 0;
      if (++oh == a.ho) {
        oh = 0;
        ++img;
      }
      line = a.x + (img * a.hp + oh * a.sh) * pitch;
    }
  }
}

void space_to_depth_row_avx512(const uint8_t* r0, const uint8_t* r1, uint8_t* dst, int64_t wq, int64_t c) {
  // In 16-bit words (2c bytes per source pixel pair = c words): J output pixels (2c words each) per step from
  // the c * J words of each source at word j * c; word index 32 + i selects r1's word i.
  const int64_t J = 16 / c;
  alignas(64) uint16_t idx[32] = {};
  for (int64_t o = 0; o < 2 * c * J; ++o) {
    const int64_t j = o / (2 * c), r = o % (2 * c);
    idx[o] = uint16_t((r >= c ? 32 : 0) + c * j + r % c);
  }
  const __m512i vi = _mm512_load_si512(idx);
  for (int64_t j = 0; j < wq; j += J) {
    const int64_t bytes = (wq - j < J ? wq - j : J) * 4 * c;
    const __m512i a = _mm512_loadu_si512(r0 + 2 * c * j), b = _mm512_loadu_si512(r1 + 2 * c * j);
    const __mmask64 k = bytes >= 64 ? ~__mmask64(0) : (__mmask64(1) << bytes) - 1;
    _mm512_mask_storeu_epi8(dst + 4 * c * j, k, _mm512_permutex2var_epi16(a, vi, b));
  }
}

void quantize_avx512(const float* x, uint8_t* q, int64_t i0, int64_t i1, float scale, int32_t zp) {
  const __m512 s = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-1e6f), hi = _mm512_set1_ps(1e6f);
  const __m512i z = _mm512_set1_epi32(zp), zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
  for (int64_t i = i0; i < i1; i += 16) {
    const __mmask16 m = mask_for(i1 - i);
    __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + i), s);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    __m512i r = _mm512_add_epi32(_mm512_cvtps_epi32(v), z);
    r = _mm512_min_epi32(_mm512_max_epi32(r, zero), top);
    _mm512_mask_cvtepi32_storeu_epi8(q + i, m, r);
  }
}

}  // namespace ec
