// CUDA implementations of the edgecompress ops (schemas are defined in ../ops.cpp). Same argument
// checks as the CPU kernels (TORCH_CHECKs naming the argument), plus: every tensor on x's device.
// The kernels themselves live in int8_conv.cu / sparse_conv.cu behind the torch-free launch.h.
//
// Host synchronisation: int8_conv2d and sparse_conv2d read a few values the launch depends on (the
// packed header, the weight scale / zero-point and CSR checks) with one small device->host copy per
// call, so they synchronise with the current stream once and cannot be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream (at::cuda re-exports c10::cuda);
                                    // not ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "../checks.h"
#include "launch.h"

namespace ec {
namespace cuda {
namespace {

// floor((in + 2p - d(k-1) - 1) / s) + 1, and 0 when the dilated kernel does not fit
int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t num = in + 2 * p - d * (k - 1) - 1;
  return num < 0 ? 0 : num / s + 1;
}

void check_spatial(const char* op, int64_t h, int64_t w, c10::IntArrayRef padding) {
  TORCH_CHECK(h + 2 * padding[0] < INT32_MAX && w + 2 * padding[1] < INT32_MAX, op, ": input ", h, "x", w,
              " with padding is too large (height/width + 2*padding must fit in int32)");
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// ---------------------------------------------------------------------------------------------------
at::Tensor quantize_u8_cuda(const at::Tensor& x, double scale, int64_t zero_point) {
  TORCH_CHECK(x.is_cuda(), "quantize_u8: x must be a CUDA tensor here, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "quantize_u8: x must be float32, got ", x.scalar_type());
  checks::scale(scale, "quantize_u8: scale");
  TORCH_CHECK(zero_point >= 0 && zero_point <= 255, "quantize_u8: zero_point must be in [0, 255], got ", zero_point);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.dim() == 4 ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor q = at::empty(xc.sizes(), xc.options().dtype(at::kByte), fmt);
  if (q.numel() == 0) return q;
  launch_quantize_u8(xc.data_ptr<float>(), q.data_ptr<uint8_t>(), xc.numel(), static_cast<float>(scale),
                     static_cast<int32_t>(zero_point), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return q;
}

// ---------------------------------------------------------------------------------------------------
// Packs on the host (a one-off per layer) and copies the blob to the weight's device.
at::Tensor int8_pack_weight_cuda(const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(weight.is_cuda(), "int8_pack_weight: weight must be a CUDA tensor here, got ", weight.device());
  TORCH_CHECK(weight.scalar_type() == at::kChar,
              "int8_pack_weight: weight must be torch.int8 codes [OC, IC/groups, KH, KW], got ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 4, "int8_pack_weight: weight must be 4-D [OC, IC/groups, KH, KW], got ", weight.dim(),
              "-D");
  TORCH_CHECK(groups >= 1, "int8_pack_weight: groups must be >= 1, got ", groups);
  const int64_t oc = weight.size(0), icg = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  TORCH_CHECK(oc >= 1 && icg >= 1 && kh >= 1 && kw >= 1, "int8_pack_weight: weight has an empty dimension: ",
              weight.sizes());
  TORCH_CHECK(oc % groups == 0, "int8_pack_weight: out channels (", oc, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(groups <= 65535, "int8_pack_weight: groups = ", groups, " is above the CUDA kernels' limit of 65535");
  TORCH_CHECK(icg * kh * kw < (int64_t(1) << 30), "int8_pack_weight: weight too large to pack (", icg * kh * kw,
              " values per output channel)");
  const PackPlanCuda p = plan_pack_cuda(oc, icg, kh, kw, groups);
  TORCH_CHECK(p.total < (int64_t(1) << 31), "int8_pack_weight: weight too large to pack (", p.total, " bytes)");
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous().cpu();
  at::Tensor blob = at::empty({p.total}, w.options());
  pack_weight_cuda_host(w.data_ptr<int8_t>(), oc, icg, kh, kw, groups, blob.data_ptr<int8_t>());
  return blob.to(weight.device());
}

// ---------------------------------------------------------------------------------------------------
at::Tensor int8_conv2d_cuda(const at::Tensor& x, double x_scale, int64_t x_zero_point, const at::Tensor& w_packed,
                            const at::Tensor& w_scale, const at::Tensor& w_zero_point,
                            const c10::optional<at::Tensor>& bias, int64_t out_channels, c10::IntArrayRef kernel_size,
                            c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                            int64_t groups, int64_t activation, double out_scale, int64_t out_zero_point,
                            at::ScalarType out_dtype) {
  constexpr const char* op = "int8_conv2d";
  // ---- checks that need no device data ----
  TORCH_CHECK(x.is_cuda(), "int8_conv2d: x is on ", x.device(),
              " but another tensor argument is on CUDA; move x, w_packed, w_scale, w_zero_point and bias to the same "
              "device (and pack the weight on that device)");
  checks::u8_nhwc_input(x, x_scale, x_zero_point);
  checks::same_device(w_packed, x, op, "w_packed");
  checks::conv_geometry(op, kernel_size, stride, padding, dilation, activation);
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.dim() == 1 && w_packed.is_contiguous() &&
                  w_packed.numel() >= 64,
              "int8_conv2d: w_packed must be the 1-D int8 tensor returned by int8_pack_weight");
  TORCH_CHECK(groups >= 1 && out_channels >= 1 && out_channels % groups == 0 && out_channels < INT32_MAX,
              "int8_conv2d: out_channels (", out_channels, ") must be a positive multiple of groups (", groups, ")");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OC = out_channels;
  checks::weight_qparams(w_scale, w_zero_point, OC, x);
  const at::Tensor b = checks::bias(bias, OC, x, op);
  const int out_kind = checks::out_kind(out_dtype, b.defined(), activation, out_scale, out_zero_point);
  check_spatial(op, H, W, padding);
  const int64_t KH = kernel_size[0], KW = kernel_size[1];
  const int64_t Ho = out_size(H, KH, stride[0], padding[0], dilation[0]);
  const int64_t Wo = out_size(W, KW, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "int8_conv2d: input ", H, "x", W,
              " is smaller than the dilated kernel (output would be ", Ho, "x", Wo, ")");

  // ---- the header and the per-channel values, in one device->host copy ----
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor ws = w_scale.contiguous(), wz = w_zero_point.contiguous();
  at::Tensor info_d = at::full({20}, INT32_MAX, x.options().dtype(at::kInt));
  launch_int8_inspect(w_packed.data_ptr<int8_t>(), ws.data_ptr<float>(), wz.data_ptr<int32_t>(), OC,
                      info_d.data_ptr<int32_t>(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor info = info_d.cpu();
  const int32_t* iv = info.data_ptr<int32_t>();
  PackHeader h;
  std::memcpy(&h, iv, sizeof(h));
  TORCH_CHECK(h.magic == kPackMagic && h.version == kPackVersion,
              "int8_conv2d: w_packed was not produced by int8_pack_weight (bad magic/version); repack the weight");
  TORCH_CHECK(h.total_bytes == w_packed.numel(), "int8_conv2d: w_packed is truncated (", w_packed.numel(), " of ",
              h.total_bytes, " bytes)");
  TORCH_CHECK(h.format == kFormatCudaK4, "int8_conv2d: w_packed was packed for another device (format ", h.format,
              "); pack the weight on the CUDA device: int8_pack_weight(weight.cuda(), groups)");
  TORCH_CHECK(h.oc == out_channels && h.kh == kernel_size[0] && h.kw == kernel_size[1] && h.groups == groups,
              "int8_conv2d: out_channels/kernel_size/groups (", out_channels, ", [", kernel_size[0], ", ",
              kernel_size[1], "], ", groups, ") do not match w_packed (", h.oc, ", [", h.kh, ", ", h.kw, "], ",
              h.groups, ")");
  TORCH_CHECK(C == int64_t(h.icg) * groups, "int8_conv2d: x has ", C, " channels; the weight expects ",
              int64_t(h.icg) * groups, " (in_channels/groups = ", h.icg, ", groups = ", groups, ")");
  const PackPlanCuda plan = plan_pack_cuda(OC, h.icg, KH, KW, groups);
  TORCH_CHECK(h.kg == plan.kg && h.kp == plan.kp && h.ocg == plan.ocg && h.np == plan.np && h.w_offset == 64 &&
                  h.cs_offset == plan.cs_off && h.total_bytes == plan.total,
              "int8_conv2d: w_packed has an inconsistent header; repack the weight with int8_pack_weight");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w_packed.data_ptr()) % 16 == 0,
              "int8_conv2d: w_packed must start on a 16-byte boundary (pass the tensor int8_pack_weight returned, "
              "or a .clone() of it)");
  if (iv[16] != INT32_MAX) {
    const int64_t o = iv[16];
    TORCH_CHECK(false, "int8_conv2d: w_scale[", o, "] = ", ws[o].item<float>(), "; weight scales must be finite and > 0");
  }
  if (iv[17] != INT32_MAX) {
    const int64_t o = iv[17];
    TORCH_CHECK(false, "int8_conv2d: w_zero_point[", o, "] = ", wz[o].item<int32_t>(), " is outside int8 [-128, 127]");
  }
  const bool any_wzp = iv[18] == 0;

  at::Tensor out = at::empty({N, OC, Ho, Wo}, x.options().dtype(out_dtype), at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;
  const int64_t M = N * Ho * Wo;
  TORCH_CHECK((M + kTileM - 1) / kTileM < INT32_MAX, "int8_conv2d: too many output pixels (", M, ")");

  Int8ConvParams p{};
  p.x = x.data_ptr<uint8_t>();
  p.n = N;
  p.h = H;
  p.w = W;
  p.c = C;
  p.ho = Ho;
  p.wo = Wo;
  p.kh = int(KH);
  p.kw = int(KW);
  p.sh = int(stride[0]);
  p.sw = int(stride[1]);
  p.ph = int(padding[0]);
  p.pw = int(padding[1]);
  p.dh = int(dilation[0]);
  p.dw = int(dilation[1]);
  p.groups = groups;
  p.icg = h.icg;
  p.ocg = plan.ocg;
  p.oc = OC;
  p.kg = plan.kg;
  p.kp = plan.kp;
  p.np = plan.np;
  p.x_zp = int32_t(x_zero_point);
  p.x_scale = static_cast<float>(x_scale);
  const int8_t* blob = w_packed.data_ptr<int8_t>();
  p.wq = blob + 64;
  p.colsum = reinterpret_cast<const int32_t*>(blob + plan.cs_off);
  p.w_scale = ws.data_ptr<float>();
  p.w_zp = wz.data_ptr<int32_t>();
  p.has_wzp = any_wzp ? 1 : 0;
  p.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  p.act = int(activation);
  p.out_kind = out_kind;
  p.out_inv_scale = 1.0f / static_cast<float>(out_scale);  // float32 reciprocal, as the CPU op and the reference
  p.out_zp = int32_t(out_zero_point);
  p.out = out.data_ptr();
  if (plan.tiled) {
    const bool vec_a = plan.kg > 0 && h.icg % 4 == 0 && reinterpret_cast<uintptr_t>(p.x) % 4 == 0;
    const bool vec_out = plan.ocg % 4 == 0 && OC % 4 == 0 && reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
    launch_int8_conv_gemm(p, vec_a, vec_out, stream());
  } else {
    launch_int8_conv_direct(p, stream());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---------------------------------------------------------------------------------------------------
at::Tensor sparse_conv2d_cuda(const at::Tensor& x, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                              const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                              c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                              c10::IntArrayRef dilation, int64_t activation) {
  constexpr const char* op = "sparse_conv2d";
  TORCH_CHECK(x.is_cuda(), "sparse_conv2d: x is on ", x.device(),
              " but another tensor argument is on CUDA; move x, row_ptr, col_idx, values and bias to the same device");
  checks::csr(x, row_ptr, col_idx, values);
  checks::conv_geometry(op, kernel_size, stride, padding, dilation, activation);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OC = row_ptr.numel() - 1;
  const int64_t KH = kernel_size[0], KW = kernel_size[1], K = C * KH * KW;
  const int64_t nnz = col_idx.numel();
  TORCH_CHECK(nnz < INT32_MAX && OC < INT32_MAX, "sparse_conv2d: too many nonzeros/rows for int32 CSR indices");
  const at::Tensor b = checks::bias(bias, OC, x, op);
  check_spatial(op, H, W, padding);

  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous(), vals = values.contiguous();
  at::Tensor info_d = at::full({4}, INT32_MAX, x.options().dtype(at::kInt));
  launch_sparse_inspect(rp.data_ptr<int32_t>(), ci.data_ptr<int32_t>(), OC, nnz, K, info_d.data_ptr<int32_t>(),
                        stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor info = info_d.cpu();
  const int32_t* iv = info.data_ptr<int32_t>();
  TORCH_CHECK(iv[0] == 0 && iv[1] == nnz, "sparse_conv2d: row_ptr must start at 0 and end at nnz (", nnz, "), got ",
              iv[0], " .. ", iv[1]);
  TORCH_CHECK(iv[2] == INT32_MAX, "sparse_conv2d: row_ptr must be non-decreasing (row ", iv[2], ")");
  if (iv[3] != INT32_MAX) {
    const int64_t q = iv[3];
    TORCH_CHECK(false, "sparse_conv2d: col_idx[", q, "] = ", ci[q].item<int32_t>(), " is outside [0, C*KH*KW = ", K,
                "); x has ", C, " channels");
  }
  const int64_t Ho = out_size(H, KH, stride[0], padding[0], dilation[0]);
  const int64_t Wo = out_size(W, KW, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "sparse_conv2d: input ", H, "x", W, " is smaller than the dilated kernel");
  at::Tensor out = at::empty({N, OC, Ho, Wo}, x.options());
  if (out.numel() == 0) return out;
  TORCH_CHECK((N * Ho * Wo + 255) / 256 < INT32_MAX, "sparse_conv2d: too many output pixels");
  const at::Tensor xc = x.contiguous();

  SparseConvParams p{};
  p.x = xc.data_ptr<float>();
  p.n = N;
  p.c = C;
  p.h = H;
  p.w = W;
  p.ho = Ho;
  p.wo = Wo;
  p.kh = int(KH);
  p.kw = int(KW);
  p.sh = int(stride[0]);
  p.sw = int(stride[1]);
  p.ph = int(padding[0]);
  p.pw = int(padding[1]);
  p.dh = int(dilation[0]);
  p.dw = int(dilation[1]);
  p.row_ptr = rp.data_ptr<int32_t>();
  p.col_idx = ci.data_ptr<int32_t>();
  p.values = vals.data_ptr<float>();
  p.oc = OC;
  p.nnz = nnz;
  p.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  p.act = int(activation);
  p.out = out.data_ptr<float>();
  launch_sparse_conv(p, stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace ec

TORCH_LIBRARY_IMPL(edgecompress, CUDA, m) {
  m.impl("quantize_u8", &ec::cuda::quantize_u8_cuda);
  m.impl("int8_pack_weight", &ec::cuda::int8_pack_weight_cuda);
  m.impl("int8_conv2d", &ec::cuda::int8_conv2d_cuda);
  m.impl("sparse_conv2d", &ec::cuda::sparse_conv2d_cuda);
}
