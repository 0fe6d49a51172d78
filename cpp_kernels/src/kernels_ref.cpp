// Portable reference kernels: plain loops over the same packed layout the SIMD paths read. Used on
// CPUs without AVX2, under EDGECOMPRESS_KERNEL_ISA=ref, and as the oracle the SIMD paths are tested
// against (after the Python integer reference).
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace ec {

namespace {

inline void store_out(int out_kind, void* out, int64_t idx, int32_t acc, float mult, float bias, int act,
                      float out_inv_scale, int32_t out_zp) {
  if (out_kind == kOutI32) {
    static_cast<int32_t*>(out)[idx] = acc;
    return;
  }
  float v = static_cast<float>(acc) * mult;
  v = v + bias;
  v = apply_act(v, act);
  if (out_kind == kOutF32) {
    static_cast<float*>(out)[idx] = v;
    return;
  }
  float q = std::nearbyint(v * out_inv_scale) + static_cast<float>(out_zp);
  q = q > 0.f ? (q > 255.f ? 255.f : q) : 0.f;  // NaN -> 0
  static_cast<uint8_t*>(out)[idx] = static_cast<uint8_t>(q);
}

}  // namespace

void gemm_ref(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* a = g.a + m * g.lda;
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* b = g.b + (n / 16) * g.kp * 16 + (n % 16) * 4;
      int32_t acc = 0;
      for (int64_t kb = 0; kb < g.kp / 4; ++kb)
        for (int j = 0; j < 4; ++j) acc += int32_t(a[g.koff[kb] + j]) * int32_t(b[kb * 64 + j]);
      acc += g.corr[n];
      if (g.wzp) acc -= g.wzp[n] * g.rowsum[m];
      store_out(g.out_kind, g.out, m * g.ldc + n, acc, g.mult[n], g.bias[n], g.act, g.out_inv_scale, g.out_zp);
    }
  }
}

void dw_ref(const DwArgs& d, int64_t p0, int64_t p1) {
  const int64_t taps = int64_t(d.kh) * d.kw;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t img = p / (d.ho * d.wo), oh = (p / d.wo) % d.ho, ow = p % d.wo;
    for (int64_t c = 0; c < d.c; ++c) {
      const int8_t* b = d.b + (c / 16) * d.kp * 16 + (c % 16) * 4;
      int32_t acc = 0, xsum = 0;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t ih = oh * d.sh - d.ph + (t / d.kw) * d.dh, iw = ow * d.sw - d.pw + (t % d.kw) * d.dw;
        const int32_t xv = (ih < 0 || ih >= d.h || iw < 0 || iw >= d.w)
                               ? d.x_zp
                               : d.x[((img * d.h + ih) * d.w + iw) * d.c + c];
        acc += xv * int32_t(b[(t / 4) * 64 + (t % 4)]);
        xsum += xv;
      }
      acc += d.corr[c];
      if (d.wzp) acc -= d.wzp[c] * xsum;
      store_out(d.out_kind, d.out, p * d.c + c, acc, d.mult[c], d.bias[c], d.act, d.out_inv_scale, d.out_zp);
    }
  }
}

void spmm_ref(const SpmmArgs& s, int64_t n0, int64_t n1, int64_t j0, int64_t j1) {
  for (int64_t n = n0; n < n1; ++n) {
    float* o = s.out + n * s.ldo;
    if (!s.accumulate)
      for (int64_t j = j0; j < j1; ++j) o[j] = 0.f;
    for (int32_t p = s.rb[n * s.rs]; p < s.re[n * s.rs]; ++p) {
      const float v = s.val[p];
      const float* x = s.src + s.off[p];
      for (int64_t j = j0; j < j1; ++j) o[j] += v * x[j];
    }
    if (s.finalize) {
      const float b = s.bias ? s.bias[n] : 0.f;
      for (int64_t j = j0; j < j1; ++j) o[j] = apply_act(o[j] + b, s.act);
    }
  }
}

void quantize_ref(const float* x, uint8_t* q, int64_t i0, int64_t i1, float scale, int32_t zp) {
  for (int64_t i = i0; i < i1; ++i) {
    float v = std::nearbyint(x[i] / scale) + static_cast<float>(zp);
    v = v > 0.f ? (v > 255.f ? 255.f : v) : 0.f;  // NaN -> 0
    q[i] = static_cast<uint8_t>(v);  // NaN: implementation-defined; the caller rejects non-finite scales only
  }
}

}  // namespace ec
