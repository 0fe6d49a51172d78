// Plain C++ interface between the torch-facing dispatcher (ops.cpp) and the per-ISA kernel files.
// The ISA files are compiled with `#pragma GCC target(...)` and must not include torch headers (their
// inline functions would be emitted with AVX-512 code and could be merged into non-AVX-512 callers).
#pragma once
#include <cstdint>

namespace ec {

// ---- packed int8 weights -------------------------------------------------------------------------
// Blob = [64-byte header][weights][int32 column sums, one per output channel][for a few-channel, large-kernel
// weight (ops.cpp plan_pack): the same weights in the space-to-depth order, 64-byte aligned; a blob whose
// total_bytes ends at the column sums (packed before this copy existed) simply runs without it].
// Weights: per group g, blocks of 16 output channels x 4 reduction steps, 64 bytes each:
//   byte ((g*NB + nb)*KB + kb)*64 + lane*4 + j  =  w[g*OCg + nb*16 + lane][k = kb*4 + j]
// with the reduction index k ordered (kh, kw, ic) to match an NHWC im2col row, zero-padded to Kp.
// Depthwise convs (ICg == OCg == 1) are packed as a single group whose "channels" are the C channels
// and whose reduction is over the KH*KW taps.
constexpr int32_t kPackMagic = 0x50384345;  // "EC8P"
constexpr int32_t kPackVersion = 1;
constexpr int32_t kFormatCpuK4N16 = 1;
constexpr int32_t kFormatCudaK4 = 2;

struct PackHeader {
  int32_t magic, version, format, oc, icg, kh, kw, groups;
  int32_t kg, kp, ocg, np, depthwise, w_offset, cs_offset, total_bytes;
};
static_assert(sizeof(PackHeader) == 64, "header is 64 bytes");

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// ---- int8 conv -----------------------------------------------------------------------------------
enum Activation : int { kActNone = 0, kActRelu = 1, kActRelu6 = 2 };
enum OutKind : int { kOutI32 = 0, kOutF32 = 1, kOutU8 = 2 };

// One GEMM: C[m][n] = sum_k A[m][k] * B[n][k] over the padded reduction Kp, A u8 (row stride lda),
// B packed as above (one group), then the epilogue per output element:
//   acc += corr[n] - wzp[n] * rowsum[m]                      (affine zero-point terms, exact int32)
//   i32: store acc
//   f32: v = float(acc) * mult[n] + bias[n]; activation; store
//   u8 : as f32, then q = clamp(nearbyint(v * out_inv_scale) + out_zp, 0, 255), out_inv_scale = 1 / out_scale
//        in float32 (a multiply, as onnxruntime requantizes: a division per output costs more than the MACs
//        of a narrow layer)
struct GemmArgs {
  const uint8_t* a;        // row m's reduction step kb reads the 4 bytes at a + m * lda + koff[kb]
  int64_t lda;
  const int64_t* koff;     // [kp / 4]: 4*kb for a patch matrix; tap offset + channel for implicit GEMM
  const int8_t* b;         // packed weights of this group
  int64_t kp;              // padded reduction length (multiple of 4)
  int64_t n;               // real output channels of this group
  const int32_t* corr;     // [n]
  const int32_t* wzp;      // [n] or nullptr when all weight zero points are 0
  const int32_t* rowsum;   // [M] (only read when wzp != nullptr)
  const float* mult;       // [n]
  const float* bias;       // [n]
  int act;
  int out_kind;
  float out_inv_scale;
  int32_t out_zp;
  void* out;               // element (m, n) at out + m * ldc + n (elements of the output type)
  int64_t ldc;
  const int8_t* btail;     // AMX only: when kp % 64 != 0, the last 64-step chunk of every 16-channel
                           // block, zero-padded to 1 KiB (A rows must then be readable up to round64(kp))
  int64_t kc = 64;         // AMX only: reduction bytes per tile chunk (a multiple of 4, <= 64)
};

// Depthwise: x NHWC u8, one output pixel range [p0, p1) over N*Ho*Wo.
struct DwArgs {
  const uint8_t* x;
  int64_t n, h, w, c, ho, wo;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  uint8_t x_zp;
  const int8_t* b;  // packed [Cp/16][Kp/4][16][4]
  int64_t kp;
  const int32_t* corr;
  const int32_t* wzp;  // or nullptr
  const float* mult;
  const float* bias;
  int act;
  int out_kind;
  float out_inv_scale;
  int32_t out_zp;
  void* out;  // NHWC, channel stride 1, pixel stride c
};

// Patch rows of a conv whose kernel rows are contiguous runs of a padded NHWC input (one group, unit
// dilation along W): row m (output pixel p0 + m over N*Ho*Wo) = KH runs of `run` = KW*C bytes; bytes
// [KH*run, stride) are left unspecified (the packed weights are zero there). x is the input padded to
// hp x wp (padding filled with the zero point).
struct PatchArgs {
  const uint8_t* x;
  int64_t hp, wp, c, ho, wo;
  int kh, sh, sw, dh;
  int64_t run, stride;
};
void patch_rows_avx512(const PatchArgs& a, int64_t p0, int64_t count, uint8_t* col);

// One row of a space-to-depth input: dst pixel j (4c bytes) = [r0 pixels 2j, 2j + 1][r1 pixels 2j, 2j + 1]
// (2c bytes each) for j in [0, wq), where r0 / r1 are the even / odd input rows (c bytes per pixel, readable
// to 2 * wq * c + 64 bytes). c <= 16.
void space_to_depth_row_avx512(const uint8_t* r0, const uint8_t* r1, uint8_t* dst, int64_t wq, int64_t c);

void gemm_ref(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void gemm_avx2(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void gemm_avx512vnni(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void gemm_amx(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void dw_ref(const DwArgs& d, int64_t p0, int64_t p1);
void dw_avx2(const DwArgs& d, int64_t p0, int64_t p1);
void dw_avx512vnni(const DwArgs& d, int64_t p0, int64_t p1);

// Scalar epilogue shared by every path (and mirrored exactly by the Python reference).
inline float apply_act(float v, int act) {
  if (act == kActRelu) return v > 0.f ? v : 0.f;
  if (act == kActRelu6) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  return v;
}

// ---- sparse fp32 conv (CSR over output channels) -----------------------------------------------
// out[n][j] (+)= sum_{p in [rb[n*rs], re[n*rs])} val[p] * src[off[p] + j], for j in [j0, j1); the caller
// arranges src (the input itself, an aligned copy, its stride phases or a patch matrix) so each nonzero is
// one offset. rb/re/rs select the nonzeros: a whole CSR row (rb = row_ptr, re = row_ptr + 1, rs = 1) or
// the part of it in one block of input channels (a per-row block table), so that the blocks' input tile
// stays in L1. accumulate: start from out instead of 0; finalize: add the bias, apply the activation.
struct SpmmArgs {
  const float* src;
  const int32_t* rb;
  const int32_t* re;
  int64_t rs;
  const int32_t* off;      // [nnz] source offset of each nonzero (floats)
  const float* val;        // [nnz]
  const float* bias;       // [N] or nullptr
  int act;
  float* out;              // row n at out + n * ldo
  int64_t ldo;
  bool accumulate;
  bool finalize;
  // AVX-512 only: when set, the finalizing pass writes the output plane itself instead of row n at out:
  // column j (output row j / wq, column j % wq) is dropped when j % wq >= wo (a phased layout's junk
  // columns), the rest packed at fout + n * fld + (j / wq) * wo + j % wq; keep[r] holds the kept lanes of
  // a 16-column vector starting at j % wq = r.
  float* fout = nullptr;
  int64_t fld = 0, wq = 0, wo = 0;
  const uint16_t* keep = nullptr;
};

// dst[i] = src[2 * i] for i in [0, n): one row of a stride-2 phase (reads src[0 .. 2n - 2], nothing past it).
void gather2_avx512(float* dst, const float* src, int64_t n);

void spmm_ref(const SpmmArgs& s, int64_t n0, int64_t n1, int64_t j0, int64_t j1);
void spmm_avx2(const SpmmArgs& s, int64_t n0, int64_t n1, int64_t j0, int64_t j1);
void spmm_avx512(const SpmmArgs& s, int64_t n0, int64_t n1, int64_t j0, int64_t j1);

// Affine input quantization q = clamp(nearbyint(x / scale) + zp, 0, 255) (half to even), elements [i0, i1).
void quantize_ref(const float* x, uint8_t* q, int64_t i0, int64_t i1, float scale, int32_t zp);
void quantize_avx2(const float* x, uint8_t* q, int64_t i0, int64_t i1, float scale, int32_t zp);
void quantize_avx512(const float* x, uint8_t* q, int64_t i0, int64_t i1, float scale, int32_t zp);

}  // namespace ec
