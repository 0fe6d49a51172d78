// fp32 sparse conv2d from CSR weights over output channels (groups = 1), NCHW input. One block per
// (output channel, tile of 256 output pixels), one thread per pixel: the block stages the row's
// nonzeros in shared memory (value, channel offset, tap offsets) 256 at a time and every thread
// gathers its input element on the fly (no im2col, no padded copy). No torch headers here.
#include <cstdint>

#include "launch.h"

namespace ec {
namespace cuda {
namespace {

constexpr int kSpThreads = 256;

__global__ void __launch_bounds__(kSpThreads) sparse_conv_kernel(const SparseConvParams p) {
  __shared__ int64_t s_coff[kSpThreads];  // c * H * W
  __shared__ int s_dh[kSpThreads], s_dw[kSpThreads];
  __shared__ float s_val[kSpThreads];

  const int tid = int(threadIdx.x);
  const int64_t hw_out = p.ho * p.wo, P = p.n * hw_out;
  const int64_t pix = int64_t(blockIdx.x) * kSpThreads + tid;
  const bool valid = pix < P;
  const int64_t pp = valid ? pix : 0;
  const int64_t img = pp / hw_out, rem = pp - img * hw_out, oh = rem / p.wo, ow = rem - oh * p.wo;
  const int ih0 = int(oh * p.sh - p.ph), iw0 = int(ow * p.sw - p.pw);
  const int H = int(p.h), W = int(p.w), khw = p.kh * p.kw;
  const float* xb = p.x + img * p.c * p.h * p.w;

  for (int64_t o = blockIdx.y; o < p.oc; o += gridDim.y) {  // block-uniform: the barriers below are safe
    const int32_t start = p.row_ptr[o], end = p.row_ptr[o + 1];
    float acc = p.bias ? p.bias[o] : 0.f;
    for (int32_t base = start; base < end; base += kSpThreads) {
      const int cnt = end - base < kSpThreads ? end - base : kSpThreads;
      __syncthreads();  // the previous chunk has been consumed
      if (tid < cnt) {
        const int k = p.col_idx[base + tid];
        const int ch = k / khw, t = k - ch * khw, ti = t / p.kw, tj = t - ti * p.kw;
        s_coff[tid] = int64_t(ch) * p.h * p.w;
        s_dh[tid] = ti * p.dh;
        s_dw[tid] = tj * p.dw;
        s_val[tid] = p.values[base + tid];
      }
      __syncthreads();
      if (valid)
        for (int q = 0; q < cnt; ++q) {
          const int ih = ih0 + s_dh[q], iw = iw0 + s_dw[q];
          if (ih >= 0 && ih < H && iw >= 0 && iw < W) acc += s_val[q] * __ldg(xb + s_coff[q] + int64_t(ih) * W + iw);
        }
    }
    if (valid) {
      if (p.act == kActRelu) acc = acc > 0.f ? acc : 0.f;
      else if (p.act == kActRelu6) acc = acc < 0.f ? 0.f : (acc > 6.f ? 6.f : acc);
      p.out[(img * p.oc + o) * hw_out + rem] = acc;
    }
  }
}

__global__ void sparse_inspect_kernel(const int32_t* row_ptr, const int32_t* col_idx, int64_t oc, int64_t nnz,
                                      int64_t k, int32_t* info) {
  const int64_t t0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  if (t0 == 0) {
    info[0] = row_ptr[0];
    info[1] = row_ptr[oc];
  }
  for (int64_t n = t0; n < oc; n += step)
    if (row_ptr[n] > row_ptr[n + 1]) atomicMin(&info[2], int(n));
  for (int64_t q = t0; q < nnz; q += step) {
    const int32_t v = col_idx[q];
    if (v < 0 || int64_t(v) >= k) atomicMin(&info[3], int(q));
  }
}

}  // namespace

void launch_sparse_conv(const SparseConvParams& p, cudaStream_t stream) {
  const int64_t P = p.n * p.ho * p.wo;
  const dim3 grid(unsigned((P + kSpThreads - 1) / kSpThreads), unsigned(p.oc < 65535 ? p.oc : 65535));
  sparse_conv_kernel<<<grid, kSpThreads, 0, stream>>>(p);
}

void launch_sparse_inspect(const int32_t* row_ptr, const int32_t* col_idx, int64_t oc, int64_t nnz, int64_t k,
                           int32_t* info, cudaStream_t stream) {
  const int64_t work = oc > nnz ? oc : nnz;
  int64_t blocks = (work + 255) / 256;
  blocks = blocks < 1 ? 1 : (blocks > 256 ? 256 : blocks);
  sparse_inspect_kernel<<<unsigned(blocks), 256, 0, stream>>>(row_ptr, col_idx, oc, nnz, k, info);
}

}  // namespace cuda
}  // namespace ec
