// Int8 affine conv2d on NHWC u8 activations with s8 weights (format kFormatCudaK4, see launch.h),
// exact int32 accumulation, and the CPU op's float epilogue operation by operation (no FMA
// contraction), so every output matches the CPU kernels bit for bit. No torch headers here.
//
//  * int8_gemm_kernel: implicit GEMM (no im2col buffer), M = N*Ho*Wo pixels x N = OC/groups channels
//    x K = KH*KW*IC/groups, one 64x64 output tile per 256-thread block (4x4 per thread), K in steps of
//    32 bytes through double-buffered shared memory, __dp4a on 4 reduction steps at a time. The u8
//    activations are shifted to s8 (x ^ 0x80 = x - 128) so one signed dp4a serves; the 128 * colsum
//    this removes is added back in the epilogue together with the zero-point terms:
//      acc = sum (x-128) w + (128 - x_zp) colsum[n] + K x_zp w_zp[n] - w_zp[n] rowsum[m]
//    which equals the CPU's  sum x w - x_zp colsum + K x_zp w_zp - w_zp rowsum  (mod 2^32, like it).
//  * int8_direct_kernel: one thread per output element, for depthwise and narrow grouped convs.
#include <cstdint>

#include "launch.h"

namespace ec {
namespace cuda {
namespace {

constexpr int kKW4 = kTileK / 4;      // 32-bit words of one K step per tile row
constexpr int kAStride = kTileM + 4;  // padded A row: the loaders' stores hit 32 distinct banks
constexpr int kDirectThreads = 256;
constexpr float kFltMax = 3.402823466e+38f;

__device__ __forceinline__ int dot4_s8(int a, int b, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
  return __dp4a(a, b, c);
#else
  for (int j = 0; j < 4; ++j) c += int(int8_t(a >> (8 * j))) * int(int8_t(b >> (8 * j)));
  return c;
#endif
}

__device__ __forceinline__ int sum4_u8(unsigned a, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
  return int(__dp4a(a, 0x01010101u, unsigned(c)));
#else
  return c + int(a & 0xffu) + int((a >> 8) & 0xffu) + int((a >> 16) & 0xffu) + int(a >> 24);
#endif
}

// ---- epilogue, mirroring kernels_ref.cpp's store_out ----
__device__ __forceinline__ float apply_act_dev(float v, int act) {
  if (act == kActRelu) return v > 0.f ? v : 0.f;
  if (act == kActRelu6) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  return v;
}

__device__ __forceinline__ float epilogue_f32(int32_t acc, float mult, float bias, int act) {
  float v = __fmul_rn(static_cast<float>(acc), mult);
  v = __fadd_rn(v, bias);
  return apply_act_dev(v, act);
}

// q = clamp(nearbyint(v * out_inv_scale) + out_zp, 0, 255), NaN -> 0, as kernels_ref.cpp's store_out.
// nearbyint (half to even) is rintf: exact like __float2int_rn, without its int saturation.
__device__ __forceinline__ uint8_t requantize(float v, float out_inv_scale, int32_t out_zp) {
  float q = __fadd_rn(rintf(__fmul_rn(v, out_inv_scale)), static_cast<float>(out_zp));
  q = q > 0.f ? (q > 255.f ? 255.f : q) : 0.f;
  return static_cast<uint8_t>(q);
}

__device__ __forceinline__ void store_one(const Int8ConvParams& p, int64_t idx, int32_t acc, float mult, float bias) {
  if (p.out_kind == kOutI32) {
    static_cast<int32_t*>(p.out)[idx] = acc;
    return;
  }
  const float v = epilogue_f32(acc, mult, bias, p.act);
  if (p.out_kind == kOutF32) static_cast<float*>(p.out)[idx] = v;
  else static_cast<uint8_t*>(p.out)[idx] = requantize(v, p.out_inv_scale, p.out_zp);
}

// Four consecutive channels of one pixel; idx is a multiple of 4 and the output 16-byte aligned.
__device__ __forceinline__ void store_four(const Int8ConvParams& p, int64_t idx, const int32_t (&acc)[4],
                                           const float (&mult)[4], const float (&bias)[4]) {
  if (p.out_kind == kOutI32) {
    *reinterpret_cast<int4*>(static_cast<int32_t*>(p.out) + idx) = make_int4(acc[0], acc[1], acc[2], acc[3]);
    return;
  }
  float v[4];
  for (int j = 0; j < 4; ++j) v[j] = epilogue_f32(acc[j], mult[j], bias[j], p.act);
  if (p.out_kind == kOutF32) {
    *reinterpret_cast<float4*>(static_cast<float*>(p.out) + idx) = make_float4(v[0], v[1], v[2], v[3]);
    return;
  }
  uint32_t packed = 0;
  for (int j = 0; j < 4; ++j) packed |= uint32_t(requantize(v[j], p.out_inv_scale, p.out_zp)) << (8 * j);
  *reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(p.out) + idx) = packed;
}

// ---------------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kGemmThreads) int8_gemm_kernel(const Int8ConvParams p, const int vec_a,
                                                                  const int vec_out) {
  __shared__ __align__(16) uint32_t As[2][kKW4][kAStride];  // [k/4][pixel], s8 (x - 128) words
  __shared__ __align__(16) uint32_t Bs[2][kKW4][kTileN];    // [k/4][channel], s8 words
  __shared__ int32_t s_rsp[kTileM][kKW4 + 1];
  __shared__ int32_t s_rowsum[kTileM];

  const int tid = int(threadIdx.x);
  const int64_t M = p.n * p.ho * p.wo;
  const int64_t m0 = int64_t(blockIdx.x) * kTileM;
  const int64_t nb = blockIdx.y, g = blockIdx.z;
  const int64_t n0 = nb * kTileN;
  const int KT = int(p.kp / kTileK);
  const int kg = int(p.kg), icg = int(p.icg), kw = p.kw;
  const int H = int(p.h), W = int(p.w);

  // Loader role: word lk (bytes 4lk..4lk+3 of each K step) of tile rows lr and lr + 32.
  const int lr = tid >> 3, lk = tid & 7;
  const uint8_t* rbase[2];
  int rih[2], riw[2];
  for (int i = 0; i < 2; ++i) {
    int64_t m = m0 + lr + 32 * i;
    if (m >= M) m = 0;  // rows past the end load pixel 0 (in bounds); their results are dropped
    const int64_t hw = p.ho * p.wo, img = m / hw, rem = m - img * hw, oh = rem / p.wo, ow = rem - oh * p.wo;
    rbase[i] = p.x + img * p.h * p.w * p.c + g * p.icg;
    rih[i] = int(oh * p.sh - p.ph);
    riw[i] = int(ow * p.sw - p.pw);
  }
  const uint32_t zx4 = uint32_t(p.x_zp) * 0x01010101u;
  const int64_t c = p.c;

  uint32_t a_reg[2];
  uint2 b_reg;
  int32_t rs[2] = {0, 0};
  const uint2* bsrc =
      reinterpret_cast<const uint2*>(p.wq + (g * (p.np / kTileN) + nb) * int64_t(KT) * (kTileN * kTileK));

  auto load = [&](int kt) {
    const int k = kt * kTileK + lk * 4;
    if (vec_a) {  // icg % 4 == 0: the 4 steps are 4 consecutive channels of one tap, 4-byte aligned
      a_reg[0] = a_reg[1] = 0u;
      if (k < kg) {
        const int tap = k / icg, ic = k - tap * icg, ti = tap / kw, tj = tap - ti * kw;
        for (int i = 0; i < 2; ++i) {
          const int ih = rih[i] + ti * p.dh, iw = riw[i] + tj * p.dw;
          a_reg[i] = (ih >= 0 && ih < H && iw >= 0 && iw < W)
                         ? __ldg(reinterpret_cast<const unsigned int*>(rbase[i] + (int64_t(ih) * W + iw) * c + ic))
                         : zx4;
        }
      }
    } else {
      a_reg[0] = a_reg[1] = 0u;
      for (int j = 0; j < 4; ++j) {
        const int kk = k + j;
        if (kk >= kg) break;
        const int tap = kk / icg, ic = kk - tap * icg, ti = tap / kw, tj = tap - ti * kw;
        for (int i = 0; i < 2; ++i) {
          const int ih = rih[i] + ti * p.dh, iw = riw[i] + tj * p.dw;
          const uint32_t v = (ih >= 0 && ih < H && iw >= 0 && iw < W)
                                 ? uint32_t(__ldg(rbase[i] + (int64_t(ih) * W + iw) * c + ic))
                                 : uint32_t(p.x_zp);
          a_reg[i] |= v << (8 * j);
        }
      }
    }
    b_reg = __ldg(bsrc + int64_t(kt) * (kTileN * kTileK / 8) + tid);
  };
  auto stash = [&](int buf) {
    if (p.has_wzp) {
      rs[0] = sum4_u8(a_reg[0], rs[0]);
      rs[1] = sum4_u8(a_reg[1], rs[1]);
    }
    As[buf][lk][lr] = a_reg[0] ^ 0x80808080u;
    As[buf][lk][lr + 32] = a_reg[1] ^ 0x80808080u;
    reinterpret_cast<uint2*>(&Bs[buf][0][0])[tid] = b_reg;
  };

  // Compute role: rows ty*4 .. ty*4+3, channels tx*4 .. tx*4+3 of the tile.
  const int tx = tid & 15, ty = tid >> 4;
  int32_t acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = 0;

  load(0);
  stash(0);
  __syncthreads();
  for (int kt = 0; kt < KT; ++kt) {
    const int cur = kt & 1;
    if (kt + 1 < KT) load(kt + 1);  // global loads in flight during the dp4a below
#pragma unroll
    for (int q = 0; q < kKW4; ++q) {
      const uint4 a = *reinterpret_cast<const uint4*>(&As[cur][q][ty * 4]);
      const uint4 b = *reinterpret_cast<const uint4*>(&Bs[cur][q][tx * 4]);
      const int av[4] = {int(a.x), int(a.y), int(a.z), int(a.w)};
      const int bv[4] = {int(b.x), int(b.y), int(b.z), int(b.w)};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = dot4_s8(av[i], bv[j], acc[i][j]);
    }
    if (kt + 1 < KT) stash(cur ^ 1);
    __syncthreads();
  }

  if (p.has_wzp) {  // row sums of the real patch values (padding = x_zp, k >= K: 0)
    s_rsp[lr][lk] = rs[0];
    s_rsp[lr + 32][lk] = rs[1];
    __syncthreads();
    if (tid < kTileM) {
      int32_t s = 0;
      for (int q = 0; q < kKW4; ++q) s += s_rsp[tid][q];
      s_rowsum[tid] = s;
    }
    __syncthreads();
  }

  // ---- epilogue ----
  int32_t cs[4], wz[4];
  float mult[4], bias[4];
  bool nvalid[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + tx * 4 + j;
    nvalid[j] = n < p.ocg;
    const int64_t o = g * p.ocg + (nvalid[j] ? n : 0);
    cs[j] = p.colsum[o];
    wz[j] = p.w_zp[o];
    mult[j] = __fmul_rn(p.x_scale, p.w_scale[o]);
    bias[j] = p.bias ? p.bias[o] : 0.f;
  }
  const uint32_t zx = uint32_t(p.x_zp);
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) break;
    const uint32_t rsum = p.has_wzp ? uint32_t(s_rowsum[ty * 4 + i]) : 0u;
    int32_t r[4];
    for (int j = 0; j < 4; ++j)
      r[j] = int32_t(uint32_t(acc[i][j]) + (128u - zx) * uint32_t(cs[j]) + uint32_t(kg) * zx * uint32_t(wz[j]) -
                     uint32_t(wz[j]) * rsum);
    const int64_t idx = m * p.oc + g * p.ocg + n0 + tx * 4;
    if (vec_out) {
      if (nvalid[0]) store_four(p, idx, r, mult, bias);
    } else {
      for (int j = 0; j < 4; ++j)
        if (nvalid[j]) store_one(p, idx + j, r[j], mult[j], bias[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kDirectThreads) int8_direct_kernel(const Int8ConvParams p) {
  const int64_t M = p.n * p.ho * p.wo, total = M * p.oc, hw = p.ho * p.wo;
  const int H = int(p.h), W = int(p.w), icg = int(p.icg);
  const int32_t zx = p.x_zp;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = idx / p.oc, o = idx - m * p.oc, g = o / p.ocg;
    const int64_t img = m / hw, rem = m - img * hw, oh = rem / p.wo, ow = rem - oh * p.wo;
    const uint8_t* xb = p.x + img * p.h * p.w * p.c + g * p.icg;
    const int8_t* wr = p.wq + o * p.kp;
    int32_t acc = 0, xsum = 0;
    for (int ti = 0; ti < p.kh; ++ti) {
      const int ih = int(oh * p.sh - p.ph) + ti * p.dh;
      for (int tj = 0; tj < p.kw; ++tj) {
        const int iw = int(ow * p.sw - p.pw) + tj * p.dw;
        const int8_t* wp = wr + (ti * p.kw + tj) * icg;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
          const uint8_t* xp = xb + (int64_t(ih) * W + iw) * p.c;
          for (int ic = 0; ic < icg; ++ic) {
            const int32_t xv = __ldg(xp + ic);
            acc += xv * int32_t(__ldg(wp + ic));
            xsum += xv;
          }
        } else {
          for (int ic = 0; ic < icg; ++ic) acc += zx * int32_t(__ldg(wp + ic));
          xsum += zx * icg;
        }
      }
    }
    const int32_t wz = p.w_zp[o];
    uint32_t a = uint32_t(acc) - uint32_t(zx) * uint32_t(p.colsum[o]) + uint32_t(p.kg) * uint32_t(zx) * uint32_t(wz);
    if (p.has_wzp) a -= uint32_t(wz) * uint32_t(xsum);
    store_one(p, idx, int32_t(a), __fmul_rn(p.x_scale, p.w_scale[o]), p.bias ? p.bias[o] : 0.f);
  }
}

// ---------------------------------------------------------------------------------------------------
__global__ void int8_inspect_kernel(const int8_t* blob, const float* w_scale, const int32_t* w_zp, int64_t oc,
                                    int32_t* info) {
  const int64_t t0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  if (t0 < 16) {  // header word t0, assembled bytewise (the blob may start at any address)
    const uint8_t* b = reinterpret_cast<const uint8_t*>(blob) + 4 * t0;
    info[t0] = int32_t(uint32_t(b[0]) | (uint32_t(b[1]) << 8) | (uint32_t(b[2]) << 16) | (uint32_t(b[3]) << 24));
  }
  for (int64_t o = t0; o < oc; o += step) {
    const float s = w_scale[o];
    if (!(s > 0.f && s <= kFltMax)) atomicMin(&info[16], int(o));  // NaN, inf, <= 0
    const int32_t z = w_zp[o];
    if (z < -128 || z > 127) atomicMin(&info[17], int(o));
    if (z != 0) atomicMin(&info[18], 0);
  }
}

__global__ void quantize_u8_kernel(const float* x, uint8_t* q, int64_t numel, float scale, int32_t zp) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    float v = __fadd_rn(rintf(__fdiv_rn(__ldg(x + i), scale)), static_cast<float>(zp));
    v = v > 0.f ? (v > 255.f ? 255.f : v) : 0.f;  // NaN -> 0
    q[i] = static_cast<uint8_t>(v);
  }
}

unsigned grid_for(int64_t work, int threads, int64_t cap) {
  int64_t b = (work + threads - 1) / threads;
  if (b < 1) b = 1;
  return unsigned(b < cap ? b : cap);
}

}  // namespace

void launch_int8_conv_gemm(const Int8ConvParams& p, bool vec_a, bool vec_out, cudaStream_t stream) {
  const int64_t M = p.n * p.ho * p.wo;
  const dim3 grid(unsigned((M + kTileM - 1) / kTileM), unsigned(p.np / kTileN), unsigned(p.groups));
  int8_gemm_kernel<<<grid, kGemmThreads, 0, stream>>>(p, int(vec_a), int(vec_out));
}

void launch_int8_conv_direct(const Int8ConvParams& p, cudaStream_t stream) {
  const int64_t total = p.n * p.ho * p.wo * p.oc;
  int8_direct_kernel<<<grid_for(total, kDirectThreads, int64_t(1) << 20), kDirectThreads, 0, stream>>>(p);
}

void launch_int8_inspect(const int8_t* blob, const float* w_scale, const int32_t* w_zp, int64_t oc, int32_t* info,
                         cudaStream_t stream) {
  int8_inspect_kernel<<<grid_for(oc < 16 ? 16 : oc, 256, 64), 256, 0, stream>>>(blob, w_scale, w_zp, oc, info);
}

void launch_quantize_u8(const float* x, uint8_t* q, int64_t numel, float scale, int32_t zp, cudaStream_t stream) {
  quantize_u8_kernel<<<grid_for(numel, 256, int64_t(1) << 20), 256, 0, stream>>>(x, q, numel, scale, zp);
}

}  // namespace cuda
}  // namespace ec
