// Torch-free interface between the CUDA dispatcher (ops_cuda.cpp) and the CUDA kernel files
// (int8_conv.cu, sparse_conv.cu). Plain structs of raw device pointers and sizes, host launch
// functions taking a cudaStream_t, and the host-side weight packing for the CUDA format. The .cu files
// include no torch/ATen header, so they compile with plain nvcc in seconds. Every launch function
// launches exactly one kernel and does not check for errors: the caller runs
// C10_CUDA_KERNEL_LAUNCH_CHECK() right after it. All arguments are assumed checked by the caller.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

#include "../kernels.h"

namespace ec {
namespace cuda {

// ---- packed int8 weights, format kFormatCudaK4 --------------------------------------------------
// Blob = [64-byte PackHeader (format = kFormatCudaK4)][weights][int32 column sums, one per output
// channel] like the CPU blob (w_offset = 64, cs_offset = 64 + round_up(weight bytes, 64)). The
// reduction index k is ordered (kh, kw, ic) (an NHWC patch row), kg = KH*KW*IC/groups, and each
// column sum is the plain sum of the channel's kg int8 weights. Two weight layouts:
//  * tiled (the dp4a GEMM path; not depthwise and OC/groups >= kGemmMinOcg): np = round_up(ocg, 64),
//    kp = round_up(kg, 32); per group g, tiles of 64 output channels x 32 reduction steps, 2048 bytes
//    each, tile-major, a tile being the shared-memory image [k/4][64 channels][4]:
//      byte ((g*(np/64) + n/64)*(kp/32) + k/32)*2048 + ((k%32)/4*64 + n%64)*4 + k%4 = w[g*ocg + n][k]
//  * rows (the direct path: depthwise, or fewer than kGemmMinOcg channels per group): np = ocg,
//    kp = round_up(kg, 4); byte o*kp + k = w[o][k] for every output channel o.
// Padding bytes (n >= ocg, k >= kg) are zero. header.depthwise = groups > 1 && icg == 1 && oc == groups.
constexpr int kTileM = 64;  // output pixels per GEMM block
constexpr int kTileN = 64;  // output channels per GEMM block
constexpr int kTileK = 32;  // reduction bytes per shared-memory step
constexpr int kGemmThreads = 256;
constexpr int64_t kGemmMinOcg = 16;

struct PackPlanCuda {
  bool depthwise, tiled;
  int64_t ocg, kg, kp, np, wbytes, cs_off, total;
};

inline PackPlanCuda plan_pack_cuda(int64_t oc, int64_t icg, int64_t kh, int64_t kw, int64_t groups) {
  PackPlanCuda p{};
  p.depthwise = groups > 1 && icg == 1 && oc == groups;
  p.ocg = oc / groups;
  p.kg = icg * kh * kw;
  p.tiled = !p.depthwise && p.ocg >= kGemmMinOcg;
  if (p.tiled) {
    p.np = round_up(p.ocg, kTileN);
    p.kp = round_up(p.kg, kTileK);
    p.wbytes = groups * p.np * p.kp;
  } else {
    p.np = p.ocg;
    p.kp = round_up(p.kg, 4);
    p.wbytes = oc * p.kp;
  }
  p.cs_off = 64 + round_up(p.wbytes, 64);
  p.total = p.cs_off + 4 * oc;
  return p;
}

// Byte offset (from the start of the weights) of w[o][k] in the layout of plan p.
inline int64_t packed_offset_cuda(const PackPlanCuda& p, int64_t o, int64_t k) {
  if (!p.tiled) return o * p.kp + k;
  const int64_t g = o / p.ocg, n = o % p.ocg;
  return ((g * (p.np / kTileN) + n / kTileN) * (p.kp / kTileK) + k / kTileK) * (kTileN * kTileK) +
         ((k % kTileK) / 4 * kTileN + n % kTileN) * 4 + k % 4;
}

// Packs w (contiguous int8 [oc][icg][kh][kw], host memory) into blob (host memory, p.total bytes).
inline PackHeader pack_weight_cuda_host(const int8_t* w, int64_t oc, int64_t icg, int64_t kh, int64_t kw,
                                        int64_t groups, int8_t* blob) {
  const PackPlanCuda p = plan_pack_cuda(oc, icg, kh, kw, groups);
  std::memset(blob, 0, size_t(p.total));
  int8_t* dst = blob + 64;
  int32_t* cs = reinterpret_cast<int32_t*>(blob + p.cs_off);
  const int64_t taps = kh * kw;
  for (int64_t o = 0; o < oc; ++o) {
    int32_t sum = 0;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t) {
        const int8_t v = w[(o * icg + ic) * taps + t];
        dst[packed_offset_cuda(p, o, t * icg + ic)] = v;
        sum += v;
      }
    cs[o] = sum;
  }
  PackHeader h{kPackMagic,       kPackVersion,     kFormatCudaK4,     int32_t(oc),     int32_t(icg),
               int32_t(kh),      int32_t(kw),      int32_t(groups),   int32_t(p.kg),   int32_t(p.kp),
               int32_t(p.ocg),   int32_t(p.np),    int32_t(p.depthwise), 64,           int32_t(p.cs_off),
               int32_t(p.total)};
  std::memcpy(blob, &h, sizeof(h));
  return h;
}

// ---- int8 conv ------------------------------------------------------------------------------------
// out[m][o] (NHWC, m over N*Ho*Wo) = epilogue(sum_k (x - x_zp)(w - w_zp[o])) exactly as the CPU op:
//   i32: acc;  f32: v = float(acc) * (x_scale * w_scale[o]) + bias[o], activation;
//   u8 : q = clamp(nearbyint(v * out_inv_scale) + out_zp, 0, 255), NaN -> 0, with
//        out_inv_scale = 1.0f / float(out_scale) computed in float32 on the host
//   (no FMA contraction anywhere)
struct Int8ConvParams {
  const uint8_t* x;  // NHWC u8
  int64_t n, h, w, c, ho, wo;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t groups, icg, ocg, oc, kg, kp, np;
  int32_t x_zp;
  float x_scale;
  const int8_t* wq;        // packed weights (blob + 64)
  const int32_t* colsum;   // blob + cs_offset, [oc]
  const float* w_scale;    // [oc]
  const int32_t* w_zp;     // [oc]
  int has_wzp;             // any w_zp != 0 (else the row sums are skipped)
  const float* bias;       // [oc] or nullptr (adds 0.f, like the CPU op)
  int act, out_kind;
  float out_inv_scale;     // 1.0f / float(out_scale) (u8 output only)
  int32_t out_zp;
  void* out;               // NHWC [N*Ho*Wo][oc] of the output type
};

// Tiled dp4a implicit GEMM (plan.tiled blobs). vec_a: icg % 4 == 0 and x 4-byte aligned (32-bit
// gathers); vec_out: ocg % 4 == 0, oc % 4 == 0 and out 16-byte aligned (vector stores).
void launch_int8_conv_gemm(const Int8ConvParams& p, bool vec_a, bool vec_out, cudaStream_t stream);
// One thread per output element (rows-layout blobs: depthwise and narrow groups).
void launch_int8_conv_direct(const Int8ConvParams& p, cudaStream_t stream);

// Reads what the host needs before launching, in one device->host copy. info (device, 20 int32)
// must be pre-filled with INT32_MAX; afterwards info[0..15] = the blob's header words (blob_bytes >= 64),
// info[16] = first o with w_scale[o] not finite or <= 0, info[17] = first o with w_zp[o] outside
// [-128, 127], info[18] = 0 if any w_zp[o] != 0 (INT32_MAX where none is found).
void launch_int8_inspect(const int8_t* blob, const float* w_scale, const int32_t* w_zp, int64_t oc, int32_t* info,
                         cudaStream_t stream);

// q[i] = clamp(nearbyint(x[i] / scale) + zp, 0, 255), half to even; NaN -> 0 (like the reference).
void launch_quantize_u8(const float* x, uint8_t* q, int64_t numel, float scale, int32_t zp, cudaStream_t stream);

// ---- sparse fp32 conv ------------------------------------------------------------------------------
// out[img][o][oh][ow] = act(bias[o] + sum_{p in row o} values[p] * x[img][c][ih][iw]) with
// col_idx[p] = c*KH*KW + kh*KW + kw, ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw (0 outside).
struct SparseConvParams {
  const float* x;  // NCHW contiguous
  int64_t n, c, h, w, ho, wo;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  const int32_t* row_ptr;  // [oc + 1]
  const int32_t* col_idx;  // [nnz]
  const float* values;     // [nnz]
  int64_t oc, nnz;
  const float* bias;       // [oc] or nullptr
  int act;
  float* out;              // NCHW contiguous [n][oc][ho][wo]
};

void launch_sparse_conv(const SparseConvParams& p, cudaStream_t stream);

// info (device, 4 int32) pre-filled with INT32_MAX; afterwards info[0] = row_ptr[0], info[1] = row_ptr[oc],
// info[2] = first n with row_ptr[n] > row_ptr[n+1], info[3] = first p with col_idx[p] outside [0, k).
void launch_sparse_inspect(const int32_t* row_ptr, const int32_t* col_idx, int64_t oc, int64_t nnz, int64_t k,
                           int32_t* info, cudaStream_t stream);

}  // namespace cuda
}  // namespace ec
