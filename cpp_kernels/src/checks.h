// Argument checks shared by the CPU ops (ops.cpp) and the CUDA ops (cuda/ops_cuda.cpp): one
// TORCH_CHECK message per mistake, naming the op and the argument, whichever device runs it.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "kernels.h"

namespace ec {
namespace checks {

inline void pair(c10::IntArrayRef v, const char* name, int64_t lo) {
  TORCH_CHECK(v.size() == 2, name, ": expected 2 values (height, width), got ", v.size());
  TORCH_CHECK(v[0] >= lo && v[1] >= lo, name, ": expected values >= ", lo, ", got [", v[0], ", ", v[1], "]");
  TORCH_CHECK(v[0] <= (1 << 20) && v[1] <= (1 << 20), name, ": values above 2^20 are not supported, got [", v[0], ", ",
              v[1], "]");
}

inline void scale(double s, const char* name) {
  TORCH_CHECK(std::isfinite(s) && s > 0.0, name, ": expected a finite scale > 0, got ", s,
              " (a zero or negative scale has no inverse; recalibrate the layer)");
}

inline void same_device(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device(),
              "; move every tensor argument to x's device");
}

// kernel_size / stride / padding / dilation, and the fused activation
inline void conv_geometry(const char* op, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t activation) {
  const std::string o(op);
  pair(kernel_size, (o + ": kernel_size").c_str(), 1);
  pair(stride, (o + ": stride").c_str(), 1);
  pair(padding, (o + ": padding").c_str(), 0);
  pair(dilation, (o + ": dilation").c_str(), 1);
  TORCH_CHECK(activation >= kActNone && activation <= kActRelu6, op,
              ": activation must be 0 (none), 1 (relu) or 2 (relu6), got ", activation);
}

// x of int8_conv2d: uint8 codes, 4-D, channels_last; its quantization parameters
inline void u8_nhwc_input(const at::Tensor& x, double x_scale, int64_t x_zero_point) {
  TORCH_CHECK(x.scalar_type() == at::kByte, "int8_conv2d: x must be uint8 codes (quantize_u8 first), got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 4, "int8_conv2d: x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "int8_conv2d: x must be channels_last (NHWC); call x.contiguous(memory_format=torch.channels_last)");
  scale(x_scale, "int8_conv2d: x_scale");
  TORCH_CHECK(x_zero_point >= 0 && x_zero_point <= 255, "int8_conv2d: x_zero_point must be in [0, 255], got ",
              x_zero_point);
}

// dtype, shape and device of the per-output-channel weight scales and zero points (their values
// are checked where they are read: on the host for the CPU op, by an inspection kernel on CUDA)
inline void weight_qparams(const at::Tensor& w_scale, const at::Tensor& w_zero_point, int64_t oc, const at::Tensor& x) {
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 && w_scale.numel() == oc,
              "int8_conv2d: w_scale must be float32 with one scale per output channel (", oc, "), got ",
              w_scale.scalar_type(), " ", w_scale.sizes());
  TORCH_CHECK(w_zero_point.scalar_type() == at::kInt && w_zero_point.dim() == 1 && w_zero_point.numel() == oc,
              "int8_conv2d: w_zero_point must be int32 with one value per output channel (", oc, "), got ",
              w_zero_point.scalar_type(), " ", w_zero_point.sizes());
  same_device(w_scale, x, "int8_conv2d", "w_scale");
  same_device(w_zero_point, x, "int8_conv2d", "w_zero_point");
}

// the optional float32 bias of `oc` values on x's device, contiguous (undefined when absent)
inline at::Tensor bias(const c10::optional<at::Tensor>& b, int64_t oc, const at::Tensor& x, const char* op) {
  if (!b.has_value() || !b->defined()) return at::Tensor();
  TORCH_CHECK(b->scalar_type() == at::kFloat && b->dim() == 1 && b->numel() == oc, op,
              ": bias must be a float32 vector of ", oc, " values, got ", b->scalar_type(), " ", b->sizes());
  same_device(*b, x, op, "bias");
  return b->contiguous();
}

// int8_conv2d's output: raw int32 accumulators, dequantized float32, or requantized uint8
inline int out_kind(at::ScalarType out_dtype, bool has_bias, int64_t activation, double out_scale,
                    int64_t out_zero_point) {
  if (out_dtype == at::kInt) {
    TORCH_CHECK(!has_bias && activation == kActNone,
                "int8_conv2d: out_dtype=int32 returns the raw accumulators; pass bias=None and activation=0");
    return kOutI32;
  }
  if (out_dtype == at::kFloat) return kOutF32;
  TORCH_CHECK(out_dtype == at::kByte,
              "int8_conv2d: out_dtype must be torch.uint8 (requantize), torch.float32 (dequantize) or torch.int32, "
              "got ",
              out_dtype);
  scale(out_scale, "int8_conv2d: out_scale");
  TORCH_CHECK(out_zero_point >= 0 && out_zero_point <= 255, "int8_conv2d: out_zero_point must be in [0, 255], got ",
              out_zero_point);
  return kOutU8;
}

// sparse_conv2d's CSR arrays: dtypes, shapes, devices (their contents are checked where they are read)
inline void csr(const at::Tensor& x, const at::Tensor& row_ptr, const at::Tensor& col_idx, const at::Tensor& values) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "sparse_conv2d: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, "sparse_conv2d: x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(row_ptr.scalar_type() == at::kInt && row_ptr.dim() == 1 && row_ptr.numel() >= 2,
              "sparse_conv2d: row_ptr must be 1-D int32 with out_channels + 1 entries (CSR)");
  TORCH_CHECK(col_idx.scalar_type() == at::kInt && col_idx.dim() == 1, "sparse_conv2d: col_idx must be 1-D int32");
  TORCH_CHECK(values.scalar_type() == at::kFloat && values.dim() == 1 && values.numel() == col_idx.numel(),
              "sparse_conv2d: values must be 1-D float32 with one value per col_idx entry (", col_idx.numel(),
              "), got ", values.scalar_type(), " ", values.sizes());
  same_device(row_ptr, x, "sparse_conv2d", "row_ptr");
  same_device(col_idx, x, "sparse_conv2d", "col_idx");
  same_device(values, x, "sparse_conv2d", "values");
}

}  // namespace checks
}  // namespace ec
