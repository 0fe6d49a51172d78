// torch.library bindings for the edgecompress kernels (CPU). Argument checks are TORCH_CHECKs that
// name the argument and the fix; the per-ISA kernels (kernels_*.cpp) assume checked inputs.
//
// Ops (namespace edgecompress):
//   kernel_isa() -> str                       the CPU path in use: amx | avx512_vnni | avx2 | ref
//   set_kernel_isa(str isa) -> str            force a path (tests, benchmarks); returns the previous
//   kernel_threads() -> int                   threads the library's parallel loops use (OpenMP check)
//   approx_reciprocal(Tensor x) -> Tensor     this CPU's RCPPS (12-bit 1/x); ncnn's x86 int8 depthwise
//                                             kernel rescales with it, so the ncnn simulation needs it
//   quantize_u8(Tensor x, float scale, int zero_point) -> Tensor
//   int8_pack_weight(Tensor weight, int groups) -> Tensor
//   int8_conv2d(Tensor x, float x_scale, int x_zero_point, Tensor w_packed, Tensor w_scale,
//               Tensor w_zero_point, Tensor? bias, int out_channels, int[2] kernel_size,
//               int[2] stride, int[2] padding, int[2] dilation, int groups, int activation,
//               float out_scale, int out_zero_point, ScalarType out_dtype) -> Tensor
//   sparse_conv2d(Tensor x, Tensor row_ptr, Tensor col_idx, Tensor values, Tensor? bias,
//                 int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation,
//                 int activation) -> Tensor
//   sparse_plan(Tensor row_ptr, Tensor col_idx, int in_channels, int height, int width,
//               int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation,
//               int block_channels=0) -> Tensor
//   sparse_conv2d_planned(Tensor x, Tensor plan, Tensor row_ptr, Tensor values, Tensor? bias,
//                         int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation,
//                         int activation) -> Tensor     (sparse_conv2d = sparse_plan + this)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "kernels.h"

namespace ec {
namespace {

enum Isa : int { kIsaRef = 0, kIsaAvx2 = 1, kIsaAvx512Vnni = 2, kIsaAmx = 3 };

// EDGECOMPRESS_HIDE_CPU_FEATURES=avx2,avx512_vnni hides features from the dispatcher: how the tests
// check the behaviour on a CPU without them (portable default, clear errors) on a CPU that has them.
bool hidden(const char* feature) {
  const char* env = std::getenv("EDGECOMPRESS_HIDE_CPU_FEATURES");
  return env && std::strstr(env, feature) != nullptr;
}

// Linux hands out the AMX tile state only on request (once per process).
bool amx_permitted() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return ok;
#else
  return false;
#endif
}

bool cpu_has(Isa isa) {
  if (isa == kIsaAvx2 && hidden("avx2")) return false;
  if (isa == kIsaAvx512Vnni && (hidden("avx512_vnni") || hidden("avx2"))) return false;
  if (isa == kIsaAmx && (hidden("amx") || hidden("avx512_vnni") || hidden("avx2"))) return false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == kIsaAmx)
    return cpu_has(kIsaAvx512Vnni) && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") &&
           amx_permitted();
  if (isa == kIsaAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == kIsaAvx512Vnni)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
#else
  if (isa != kIsaRef) return false;
#endif
  return true;
}

const char* isa_name(int isa) {
  return isa == kIsaAmx ? "amx" : (isa >= kIsaAvx512Vnni ? "avx512_vnni" : (isa == kIsaAvx2 ? "avx2" : "ref"));
}

int parse_isa(const std::string& s) {
  if (s == "amx") return kIsaAmx;
  if (s == "avx512_vnni") return kIsaAvx512Vnni;
  if (s == "avx2") return kIsaAvx2;
  if (s == "ref") return kIsaRef;
  return -1;
}

int best_isa() {
  if (cpu_has(kIsaAmx)) return kIsaAmx;
  if (cpu_has(kIsaAvx512Vnni)) return kIsaAvx512Vnni;
  if (cpu_has(kIsaAvx2)) return kIsaAvx2;
  return kIsaRef;
}

std::atomic<int> g_isa{-1};

int current_isa() {
  int v = g_isa.load();
  if (v >= 0) return v;
  v = best_isa();
  if (const char* env = std::getenv("EDGECOMPRESS_KERNEL_ISA")) {
    const int want = parse_isa(env);
    TORCH_CHECK(want >= 0, "EDGECOMPRESS_KERNEL_ISA=", env, ": expected one of amx, avx512_vnni, avx2, ref");
    TORCH_CHECK(cpu_has(Isa(want)), "EDGECOMPRESS_KERNEL_ISA=", env,
                ": this CPU does not support it; unset the variable or use 'ref'");
    v = want;
  }
  g_isa.store(v);
  return v;
}

std::string kernel_isa() { return isa_name(current_isa()); }

// How many threads this library's at::parallel_for really uses: 1 when it was compiled without OpenMP
// (the pragma is then ignored), whatever torch.set_num_threads says.
int64_t kernel_threads() {
  std::atomic<int64_t> most{0};
  at::parallel_for(0, 4096, 1, [&](int64_t, int64_t) {
    const int64_t t = at::get_thread_num() + 1;
    int64_t m = most.load();
    while (t > m && !most.compare_exchange_weak(m, t)) {
    }
  });
  return most.load();
}

std::string set_kernel_isa(std::string isa) {
  const int want = parse_isa(isa);
  TORCH_CHECK(want >= 0, "set_kernel_isa: isa='", isa, "'; expected one of amx, avx512_vnni, avx2, ref");
  TORCH_CHECK(cpu_has(Isa(want)), "set_kernel_isa: this CPU does not support '", isa,
              "' (its best path is '", isa_name(best_isa()), "'); use that or 'ref'");
  const std::string prev = isa_name(current_isa());
  g_isa.store(want);
  return prev;
}

// Small fixed sizes inline (channel counts of stems and narrow layers); the rest is memcpy.
inline void copy_bytes(uint8_t* d, const uint8_t* s, int64_t n) {
  switch (n) {
    case 1: d[0] = s[0]; return;
    case 2: std::memcpy(d, s, 2); return;
    case 3: std::memcpy(d, s, 3); return;
    case 4: std::memcpy(d, s, 4); return;
    case 8: std::memcpy(d, s, 8); return;
    case 16: std::memcpy(d, s, 16); return;
    case 32: std::memcpy(d, s, 32); return;
    case 64: std::memcpy(d, s, 64); return;
    default: std::memcpy(d, s, size_t(n));
  }
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;  // floor division: an input smaller than the kernel has no output
}

// Output buffers of the int8 and sparse convs (and the int8 conv's padded input), recycled between
// calls. A multi-MiB tensor from at::empty is often fresh pages: glibc maps large blocks anew and trims
// its heap when other ops' allocations alternate with ours, so every call faulted its whole output in
// (752 faults for a 3.2 MB output, interleaved with torch's conv). A returned tensor owns its buffer
// until it is freed; its deleter hands the buffer back here for the next call of the same size.
// Bounded (kMaxBytes, kMaxBuffers); EDGECOMPRESS_KERNEL_OUTPUT_CACHE=0 turns it off (plain at::empty).
class OutputPool {
 public:
  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may be freed during exit
    return *pool;
  }

  // A tensor like at::empty(sizes, options, format) (contiguous or channels_last, uninitialised).
  at::Tensor empty(c10::IntArrayRef sizes, const at::TensorOptions& options,
                   at::MemoryFormat format = at::MemoryFormat::Contiguous) {
    int64_t numel = 1;
    for (const int64_t d : sizes) numel *= d;
    const size_t bytes = size_t(numel) * options.dtype().itemsize();
    if (!enabled_ || bytes < kMinBytes || bytes > kMaxBytes) return at::empty(sizes, options.memory_format(format));
    void* p = take(bytes);
    if (p == nullptr) {
      p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      TORCH_CHECK(p != nullptr, "edgecompress kernels: could not allocate ", bytes, " bytes for an output");
    }
    auto deleter = [bytes](void* q) { OutputPool::instance().give(q, bytes); };
    if (format == at::MemoryFormat::ChannelsLast)
      return at::from_blob(p, sizes, c10::get_channels_last_strides_2d(sizes), deleter, options);
    return at::from_blob(p, sizes, deleter, options);
  }

 private:
  static constexpr size_t kMinBytes = 256 << 10;  // smaller blocks come from glibc's heap, already mapped
  static constexpr size_t kMaxBytes = 64 << 20;
  static constexpr size_t kMaxBuffers = 16;

  OutputPool() {
    const char* env = std::getenv("EDGECOMPRESS_KERNEL_OUTPUT_CACHE");
    enabled_ = env == nullptr || std::string(env) != "0";
  }

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = free_.size(); i-- > 0;) {  // the most recently returned first: still in cache
      if (free_[i].first == bytes) {
        void* p = free_[i].second;
        free_.erase(free_.begin() + int64_t(i));
        held_ -= bytes;
        return p;
      }
    }
    return nullptr;
  }

  void give(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace_back(bytes, p);
    held_ += bytes;
    while (held_ > kMaxBytes || free_.size() > kMaxBuffers) {  // drop the least recently returned
      held_ -= free_.front().first;
      std::free(free_.front().second);
      free_.erase(free_.begin());
    }
  }

  bool enabled_ = true;
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;
  size_t held_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// _mm_rcp_ps of every element: an approximation (relative error <= 1.5 * 2^-12) whose low bits
// differ between CPU vendors, so it is computed here, on the CPU ncnn runs on, not emulated.
at::Tensor approx_reciprocal(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "approx_reciprocal: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "approx_reciprocal: x must be float32, got ", x.scalar_type());
#if defined(__x86_64__) || defined(__i386__)
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  const float* src = xc.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t n = xc.numel();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(dst + i, _mm_rcp_ps(_mm_loadu_ps(src + i)));
  if (i < n) {
    float buf[4] = {1.f, 1.f, 1.f, 1.f};
    for (int64_t j = i; j < n; ++j) buf[j - i] = src[j];
    _mm_storeu_ps(buf, _mm_rcp_ps(_mm_loadu_ps(buf)));
    for (int64_t j = i; j < n; ++j) dst[j] = buf[j - i];
  }
  return out;
#else
  TORCH_CHECK(false, "approx_reciprocal: RCPPS is an x86 instruction; this build is not x86");
#endif
}

at::Tensor quantize_u8(const at::Tensor& x, double scale, int64_t zero_point) {
  TORCH_CHECK(x.device().is_cpu(), "quantize_u8: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "quantize_u8: x must be float32, got ", x.scalar_type());
  checks::scale(scale, "quantize_u8: scale");
  TORCH_CHECK(zero_point >= 0 && zero_point <= 255, "quantize_u8: zero_point must be in [0, 255], got ", zero_point);
  const auto fmt = x.dim() == 4 ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor q = at::empty(xc.sizes(), xc.options().dtype(at::kByte), fmt);
  const float* src = xc.data_ptr<float>();
  uint8_t* dst = q.data_ptr<uint8_t>();
  const float s = static_cast<float>(scale);
  const int32_t z = static_cast<int32_t>(zero_point);
  const int isa = current_isa();
  at::parallel_for(0, xc.numel(), 16384, [&](int64_t i0, int64_t i1) {
    if (isa >= kIsaAvx512Vnni) quantize_avx512(src, dst, i0, i1, s, z);
    else if (isa == kIsaAvx2) quantize_avx2(src, dst, i0, i1, s, z);
    else quantize_ref(src, dst, i0, i1, s, z);
  });
  return q;
}

// ---------------------------------------------------------------------------------------------------
struct PackPlan {
  bool depthwise;
  int64_t g_eff, np, kp, wbytes, cs_off, total;
  int64_t s2d_run, s2d_kp, s2d_off;  // the space-to-depth copy of the weights (s2d_kp == 0: none)
};

// A conv with a few input channels and a large kernel (a 7x7 RGB stem) also gets its weights in the order of
// the space-to-depth GEMM (see int8_conv2d), used when it runs at stride 2 on AMX: the 2x2 phases of the input
// become 4 * icg channels and the kernel ceil(KH/2) x ceil(KW/2); one of its kernel rows, s2d_run =
// ceil(KW/2) * 4 * icg bytes, must fit one 64-byte tile row, and the rows (tile chunks) may number at most
// one more than the 64-byte chunks of the plain patch row (a 3x3 or 5x5 stem would lose more to the zero
// taps than the patch matrix costs). Stored after the column sums, in the packed layout with Kp = s2d_kp.
PackPlan plan_pack(int64_t oc, int64_t icg, int64_t kh, int64_t kw, int64_t groups) {
  PackPlan p{};
  p.depthwise = groups > 1 && icg == 1 && oc == groups && kh * kw <= 64;
  if (p.depthwise) {
    p.g_eff = 1;
    p.np = round_up(oc, 16);
    p.kp = round_up(kh * kw, 4);
  } else {
    p.g_eff = groups;
    p.np = round_up(oc / groups, 16);
    p.kp = round_up(icg * kh * kw, 4);
  }
  p.wbytes = p.g_eff * p.np * p.kp;
  p.cs_off = 64 + round_up(p.wbytes, 64);
  p.total = p.cs_off + 4 * oc;
  const int64_t kg = icg * kh * kw, kh2 = (kh + 1) / 2;
  p.s2d_run = (kw + 1) / 2 * 4 * icg;
  if (groups == 1 && p.s2d_run <= 64 && kg > 128 && kh2 <= (kg + 63) / 64 + 1) {
    p.s2d_kp = kh2 * p.s2d_run;
    p.s2d_off = round_up(p.total, 64);
    p.total = p.s2d_off + p.np * p.s2d_kp;
  }
  return p;
}

at::Tensor int8_pack_weight(const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(weight.device().is_cpu(), "int8_pack_weight: weight must be a CPU tensor here, got ", weight.device());
  TORCH_CHECK(weight.scalar_type() == at::kChar, "int8_pack_weight: weight must be torch.int8 codes [OC, IC/groups, KH, KW], got ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 4, "int8_pack_weight: weight must be 4-D [OC, IC/groups, KH, KW], got ", weight.dim(), "-D");
  TORCH_CHECK(groups >= 1, "int8_pack_weight: groups must be >= 1, got ", groups);
  const int64_t oc = weight.size(0), icg = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  TORCH_CHECK(oc >= 1 && icg >= 1 && kh >= 1 && kw >= 1, "int8_pack_weight: weight has an empty dimension: ", weight.sizes());
  TORCH_CHECK(oc % groups == 0, "int8_pack_weight: out channels (", oc, ") must be divisible by groups (", groups, ")");
  const PackPlan p = plan_pack(oc, icg, kh, kw, groups);
  TORCH_CHECK(p.total < (int64_t(1) << 31), "int8_pack_weight: weight too large to pack (", p.total, " bytes)");
  at::Tensor blob = at::zeros({p.total}, weight.options().dtype(at::kChar));
  int8_t* base = blob.data_ptr<int8_t>();
  const at::Tensor w = weight.contiguous();
  const int8_t* src = w.data_ptr<int8_t>();
  const int64_t ocg = oc / groups, taps = kh * kw, kg = icg * taps;
  int8_t* dst = base + 64;
  int32_t* cs = reinterpret_cast<int32_t*>(base + p.cs_off);
  for (int64_t o = 0; o < oc; ++o) {
    const int64_t g = p.depthwise ? 0 : o / ocg, n = p.depthwise ? o : o % ocg;
    int32_t sum = 0;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t) {
        const int8_t v = src[(o * icg + ic) * taps + t];
        const int64_t k = t * icg + ic;  // (kh, kw, ic) order of an NHWC im2col row
        dst[((g * (p.np / 16) + n / 16) * (p.kp / 4) + k / 4) * 64 + (n % 16) * 4 + k % 4] = v;
        sum += v;
      }
    cs[o] = sum;
  }
  if (p.s2d_kp) {
    // s2d reduction index k2 = ((r * kw2 + jw) * 2 + a) * 2 * icg + b * icg + c  <-  tap (2r + a, 2jw + b), channel c
    int8_t* d2 = base + p.s2d_off;
    for (int64_t o = 0; o < oc; ++o)
      for (int64_t k2 = 0; k2 < p.s2d_kp; ++k2) {
        const int64_t r = k2 / p.s2d_run, jw = (k2 % p.s2d_run) / (4 * icg), sub = k2 % (4 * icg);
        const int64_t y = 2 * r + sub / (2 * icg), x = 2 * jw + (sub % (2 * icg)) / icg, c = sub % icg;
        if (y < kh && x < kw)
          d2[((o / 16) * (p.s2d_kp / 4) + k2 / 4) * 64 + (o % 16) * 4 + k2 % 4] = src[((o * icg + c) * kh + y) * kw + x];
      }
  }
  PackHeader h{kPackMagic, kPackVersion, kFormatCpuK4N16, int32_t(oc), int32_t(icg), int32_t(kh), int32_t(kw),
               int32_t(groups), int32_t(kg), int32_t(p.kp), int32_t(ocg), int32_t(p.np), int32_t(p.depthwise),
               64, int32_t(p.cs_off), int32_t(p.total)};
  std::memcpy(base, &h, sizeof(h));
  return blob;
}

PackHeader read_header(const at::Tensor& w_packed) {
  TORCH_CHECK(w_packed.scalar_type() == at::kChar && w_packed.dim() == 1 && w_packed.is_contiguous() &&
                  w_packed.numel() >= 64,
              "int8_conv2d: w_packed must be the 1-D int8 tensor returned by int8_pack_weight");
  PackHeader h;
  std::memcpy(&h, w_packed.data_ptr<int8_t>(), sizeof(h));
  TORCH_CHECK(h.magic == kPackMagic && h.version == kPackVersion,
              "int8_conv2d: w_packed was not produced by int8_pack_weight (bad magic/version); repack the weight");
  TORCH_CHECK(h.total_bytes == w_packed.numel(), "int8_conv2d: w_packed is truncated (", w_packed.numel(), " of ",
              h.total_bytes, " bytes)");
  return h;
}

at::Tensor int8_conv2d(const at::Tensor& x, double x_scale, int64_t x_zero_point, const at::Tensor& w_packed,
                       const at::Tensor& w_scale, const at::Tensor& w_zero_point, const c10::optional<at::Tensor>& bias,
                       int64_t out_channels, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups, int64_t activation,
                       double out_scale, int64_t out_zero_point, at::ScalarType out_dtype) {
  // ---- checks ----
  TORCH_CHECK(x.device().is_cpu(), "int8_conv2d: x is on ", x.device(), "; this is the CPU kernel (move x, or pack on that device)");
  checks::u8_nhwc_input(x, x_scale, x_zero_point);
  checks::same_device(w_packed, x, "int8_conv2d", "w_packed");
  checks::conv_geometry("int8_conv2d", kernel_size, stride, padding, dilation, activation);
  const PackHeader h = read_header(w_packed);
  TORCH_CHECK(h.format == kFormatCpuK4N16, "int8_conv2d: w_packed was packed for another device (format ", h.format, ")");
  TORCH_CHECK(h.oc == out_channels && h.kh == kernel_size[0] && h.kw == kernel_size[1] && h.groups == groups,
              "int8_conv2d: out_channels/kernel_size/groups (", out_channels, ", [", kernel_size[0], ", ", kernel_size[1],
              "], ", groups, ") do not match w_packed (", h.oc, ", [", h.kh, ", ", h.kw, "], ", h.groups, ")");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OC = out_channels;
  TORCH_CHECK(C == int64_t(h.icg) * groups, "int8_conv2d: x has ", C, " channels; the weight expects ",
              int64_t(h.icg) * groups, " (in_channels/groups = ", h.icg, ", groups = ", groups, ")");
  checks::weight_qparams(w_scale, w_zero_point, OC, x);
  const at::Tensor ws = w_scale.contiguous(), wz = w_zero_point.contiguous();
  const float* wsp = ws.data_ptr<float>();
  const int32_t* wzp = wz.data_ptr<int32_t>();
  bool any_wzp = false;
  for (int64_t o = 0; o < OC; ++o) {
    TORCH_CHECK(std::isfinite(wsp[o]) && wsp[o] > 0.f, "int8_conv2d: w_scale[", o, "] = ", wsp[o],
                "; weight scales must be finite and > 0");
    TORCH_CHECK(wzp[o] >= -128 && wzp[o] <= 127, "int8_conv2d: w_zero_point[", o, "] = ", wzp[o], " is outside int8 [-128, 127]");
    any_wzp = any_wzp || wzp[o] != 0;
  }
  const at::Tensor b = checks::bias(bias, OC, x, "int8_conv2d");
  const int out_kind = checks::out_kind(out_dtype, b.defined(), activation, out_scale, out_zero_point);
  const int64_t KH = h.kh, KW = h.kw;
  const int64_t Ho = out_size(H, KH, stride[0], padding[0], dilation[0]);
  const int64_t Wo = out_size(W, KW, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "int8_conv2d: input ", H, "x", W, " is smaller than the dilated kernel (output would be ",
              Ho, "x", Wo, ")");
  at::Tensor out = OutputPool::instance().empty({N, OC, Ho, Wo}, x.options().dtype(out_dtype), at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;

  // ---- per-channel epilogue constants ----
  const int32_t zx = int32_t(x_zero_point);
  const float xs = static_cast<float>(x_scale);
  const int32_t* colsum = reinterpret_cast<const int32_t*>(w_packed.data_ptr<int8_t>() + h.cs_offset);
  std::vector<int32_t> corr(OC);
  std::vector<float> mult(OC), bias_v(OC, 0.f);
  for (int64_t o = 0; o < OC; ++o) {
    corr[o] = -zx * colsum[o] + int32_t(h.kg) * zx * wzp[o];
    mult[o] = xs * wsp[o];
    if (b.defined()) bias_v[o] = b.data_ptr<float>()[o];
  }
  const int isa = current_isa();
  const int8_t* wdata = w_packed.data_ptr<int8_t>() + h.w_offset;
  const uint8_t* xd = x.data_ptr<uint8_t>();
  char* od = static_cast<char*>(out.data_ptr());
  const int64_t esize = out.element_size();
  const int64_t M = N * Ho * Wo;

  if (h.depthwise) {
    DwArgs d{xd, N, H, W, C, Ho, Wo, int(KH), int(KW), int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
             int(dilation[0]), int(dilation[1]), uint8_t(zx), wdata, h.kp, corr.data(), any_wzp ? wzp : nullptr,
             mult.data(), bias_v.data(), int(activation), out_kind, 1.0f / float(out_scale), int32_t(out_zero_point), od};
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));
    at::parallel_for(0, M, grain, [&](int64_t p0, int64_t p1) {
      if (isa >= kIsaAvx512Vnni) dw_avx512vnni(d, p0, p1);
      else if (isa == kIsaAvx2) dw_avx2(d, p0, p1);
      else dw_ref(d, p0, p1);
    });
    return out;
  }

  const int64_t icg = h.icg, ocg = h.ocg, kp = h.kp, kg = h.kg;
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  // Four ways to feed the GEMM rows (output pixels):
  //  pointwise: a 1x1/stride-1 conv reads the NHWC input itself, all pixels one stream;
  //  implicit : channels per group % 4 == 0 and output lines >= 16 pixels: each output line reads the
  //             (zero-point padded) input through a table of tap offsets, no patch matrix;
  //  s2d      : (AMX) a few channels at stride 2, e.g. a 7x7 RGB stem: the padded input's 2x2 phases become
  //             the 4C channels of a half-size image, over which the conv has stride 1 and a ceil(K/2)^2
  //             kernel (the taps past K get zero weights). A kernel row of it is one run of
  //             ceil(KW/2) * 4C bytes (48 for the stem), so each tile reads its 16 rows straight from that
  //             image at a 4C-byte stride, one tile chunk per kernel row: no patch matrix, for ceil(KH/2)
  //             chunks instead of ceil(KH*KW*C/64) (4 instead of 3 for the stem);
  //  im2col   : otherwise (a 3-channel stem without AMX, 7x7 maps) a patch matrix per task, zero-padded to Kp.
  const bool pointwise = groups == 1 && KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && C % 4 == 0;
  const bool implicit = !pointwise && icg % 4 == 0 && Wo >= 16;  // short lines waste micro-tile rows
  // (the packed blob holds the weights in s2d order when the shape suits it, plan_pack; weight zero points
  // would need row sums over the real taps only)
  const PackPlan plan = plan_pack(h.oc, h.icg, h.kh, h.kw, h.groups);
  const int64_t kh2 = (KH + 1) / 2, kw2 = (KW + 1) / 2, s2d_run = plan.s2d_run;
  const bool s2d = isa == kIsaAmx && !pointwise && !implicit && plan.s2d_kp > 0 &&
                   h.total_bytes == plan.total && sh == 2 && sw == 2 && dh == 1 && dw == 1 && !any_wzp && Wo >= 16;
  //  (im2col with AVX-512, one group and unit W dilation: the patch rows are KH contiguous runs of the padded
  //   input, copied with masked 64-byte moves; measured 2.2 of 3.5 ms in the ResNet-50 stem at batch 8 with
  //   the per-tap copies from the unpadded input that the other cases use)
  const bool run_rows = !pointwise && !implicit && !s2d && groups == 1 && dilation[1] == 1 && isa >= kIsaAvx512Vnni;
  const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
  at::Tensor xpad;  // every byte is written below (no zero-fill)
  const uint8_t* xsrc = xd;
  if ((implicit || run_rows) && (ph || pw)) {
    xpad = OutputPool::instance().empty({N * Hp * Wp * C}, x.options());
    uint8_t* xp = xpad.data_ptr<uint8_t>();
    at::parallel_for(0, N * Hp, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / Hp, y = r % Hp - ph;
        uint8_t* dst = xp + r * Wp * C;
        if (y < 0 || y >= H) {
          std::memset(dst, zx, size_t(Wp * C));
          continue;
        }
        std::memset(dst, zx, size_t(pw * C));
        std::memcpy(dst + pw * C, xd + ((img * H + y) * W) * C, size_t(W * C));
        std::memset(dst + (pw + W) * C, zx, size_t(pw * C));
      }
    });
    xsrc = xp;
  }
  // s2d image: Hq x Wq pixels of 4C bytes, pixel (i, j) = padded input rows 2i, 2i + 1 x columns 2j, 2j + 1;
  // anything outside the image (padding, or past the padded input where only zero weights reach) is the zero
  // point. Output line (img, oh) reads rows oh .. oh + kh2 - 1 and pixels up to Wo - 1 + kw2 - 1.
  const int64_t Hq = Ho + kh2 - 1, Wq = Wo + kw2 - 1, qpix = 4 * C;
  at::Tensor xq;
  if (s2d) {
    xq = OutputPool::instance().empty({N * Hq * Wq * qpix + 64}, x.options());
    uint8_t* q = xq.data_ptr<uint8_t>();
    const int64_t row_bytes = 2 * Wq * C + 64;  // two input rows, padded, with the reader's 64-byte slack
    // image columns [0, W) land at column pw of a row (clipped to the 2 * Wq columns the kernel reads); the
    // rest of a row buffer is the zero point, written once per task
    const int64_t x0 = std::max<int64_t>(0, std::min<int64_t>(W, 2 * Wq - pw));
    at::parallel_for(0, N * Hq, 8, [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> rows(size_t(2 * row_bytes), uint8_t(zx));
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / Hq, i = r % Hq;
        for (int64_t p = 0; p < 2; ++p) {
          uint8_t* d = rows.data() + p * row_bytes + pw * C;
          const int64_t y = 2 * i + p - ph;
          if (y < 0 || y >= H) std::memset(d, zx, size_t(x0 * C));
          else std::memcpy(d, xd + ((img * H + y) * W) * C, size_t(x0 * C));
        }
        space_to_depth_row_avx512(rows.data(), rows.data() + row_bytes, q + r * Wq * qpix, Wq, C);
      }
    });
  }
  const uint8_t* xqd = s2d ? xq.data_ptr<uint8_t>() : nullptr;
  const int64_t kpe = s2d ? kh2 * s2d_run : kp;  // the GEMM's padded reduction
  std::vector<int64_t> koff(size_t(kpe / 4));
  for (int64_t kb = 0; kb < kpe / 4; ++kb) {
    if (implicit) {
      const int64_t t = (kb * 4) / icg, c = (kb * 4) % icg;
      koff[kb] = ((t / KW) * dh * Wp + (t % KW) * dw) * C + c;
    } else if (s2d) {  // chunk = kernel row of the s2d conv = the next s2d row
      koff[kb] = (kb * 4) / s2d_run * Wq * qpix + (kb * 4) % s2d_run;
    } else {
      koff[kb] = 4 * kb;
    }
  }
  // AMX tiles read A in 64-byte reduction steps: needs Kp % 64 == 0 and, for the implicit GEMM, whole
  // 64-channel runs per tap
  // (a patch matrix can have any Kp: its rows are padded to 64 bytes and the last weight chunk is
  // copied zero-padded into btail; the s2d GEMM reads chunks of s2d_run bytes, Kp = kh2 chunks)
  const bool im2col = !pointwise && !implicit && !s2d;
  const bool use_amx = isa == kIsaAmx && (im2col || s2d || (kp % 64 == 0 && (!implicit || icg % 64 == 0)));
  const int64_t col_stride = use_amx && im2col ? round_up(kp, 64) : kp;
  std::vector<int8_t> btail;
  if (use_amx && !s2d && kp % 64) {
    const int64_t blocks = groups * (h.np / 16), full = (kp / 64) * 64;
    btail.assign(static_cast<size_t>(blocks * 1024), 0);
    for (int64_t blk = 0; blk < blocks; ++blk)
      std::memcpy(btail.data() + blk * 1024, wdata + blk * kp * 16 + full * 16, static_cast<size_t>((kp - full) * 16));
  }
  const int64_t n_tiles = (ocg + 63) / 64;
  // Pixels per task: ~192 KiB of A (L2-resident while the 64-channel panels of B stream past it),
  // with enough tasks for the threads; when the pixels give too few tasks, the panels are split too.
  const int64_t threads = at::get_num_threads();
  const int64_t line = implicit || s2d ? Wo : 1;  // implicit and s2d tasks own whole output lines
  int64_t mb = std::max<int64_t>(12, 196608 / std::max<int64_t>(kpe, 1));
  mb = std::max<int64_t>(line, mb / line * line);
  while (mb > line && (M + mb - 1) / mb < 2 * threads) mb = std::max<int64_t>(line, (mb / 2) / line * line);
  const int64_t m_tiles = (M + mb - 1) / mb;
  const int64_t n_splits = std::min<int64_t>(n_tiles, std::max<int64_t>(1, (2 * threads + m_tiles - 1) / m_tiles));
  const int64_t panels_per_split = (n_tiles + n_splits - 1) / n_splits;

  for (int64_t g = 0; g < groups; ++g) {
    GemmArgs ga{nullptr, 0, koff.data(), s2d ? w_packed.data_ptr<int8_t>() + plan.s2d_off : wdata + g * (h.np / 16) * kp * 16, kpe, ocg, corr.data() + g * ocg,
                any_wzp ? wzp + g * ocg : nullptr, nullptr, mult.data() + g * ocg,
                bias_v.data() + g * ocg, int(activation), out_kind, 1.0f / float(out_scale), int32_t(out_zero_point),
                od + g * ocg * esize, OC,
                btail.empty() ? nullptr : btail.data() + g * (h.np / 16) * 1024, s2d ? s2d_run : 64};
    at::parallel_for(0, m_tiles * n_splits, 1, [&](int64_t t0, int64_t t1) {
      std::vector<uint8_t> col;
      std::vector<int32_t> rsum;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t m0 = (t / n_splits) * mb, m1 = std::min(M, m0 + mb), rows = m1 - m0;
        const int64_t n0 = (t % n_splits) * panels_per_split * 64;
        const int64_t n1 = std::min(ocg, n0 + panels_per_split * 64);
        if (n0 >= n1) continue;
        auto run = [&](GemmArgs& ta, int64_t count) {
          if (use_amx) gemm_amx(ta, 0, count, n0, n1);
          else if (isa >= kIsaAvx512Vnni) gemm_avx512vnni(ta, 0, count, n0, n1);
          else if (isa == kIsaAvx2) gemm_avx2(ta, 0, count, n0, n1);
          else gemm_ref(ta, 0, count, n0, n1);
        };
        auto row_sums = [&](const uint8_t* a, int64_t lda, int64_t count) {
          rsum.resize(size_t(count));
          for (int64_t m = 0; m < count; ++m) {
            int32_t sum = 0;
            for (int64_t kb = 0; kb < kg / 4 + (kg % 4 ? 1 : 0); ++kb)
              for (int64_t j = 0; j < 4 && kb * 4 + j < kg; ++j) sum += a[m * lda + koff[kb] + j];
            rsum[m] = sum;
          }
        };
        // rows [first, first + count) of the output from the rows at ta.a
        auto gemm_rows = [&](GemmArgs& ta, int64_t first, int64_t count) {
          if (any_wzp) row_sums(ta.a, ta.lda, count);
          ta.rowsum = any_wzp ? rsum.data() : nullptr;
          ta.out = static_cast<char*>(ga.out) + first * OC * esize;
          run(ta, count);
        };
        GemmArgs ta = ga;
        if (implicit) {
          for (int64_t l = m0 / Wo; l < m1 / Wo; ++l) {  // output lines (img, oh)
            const int64_t img = l / Ho, oh = l % Ho;
            ta.a = xsrc + ((img * Hp + oh * sh) * Wp) * C + g * icg;
            ta.lda = sw * C;
            gemm_rows(ta, l * Wo, Wo);
          }
          continue;
        }
        if (s2d) {
          for (int64_t l = m0 / Wo; l < m1 / Wo; ++l) {  // output lines (img, oh)
            const int64_t img = l / Ho, oh = l % Ho;
            ta.a = xqd + ((img * Hq + oh) * Wq) * qpix;
            ta.lda = qpix;
            gemm_rows(ta, l * Wo, Wo);
          }
          continue;
        }
        if (pointwise) {
          ta.a = xd + m0 * C;
          ta.lda = C;
        } else if (run_rows) {
          // 128 rows at a time: a 24 KiB patch buffer for the stem (L1) instead of the task's ~1300 rows; the
          // stem measured the same speed either way (64, 128 or all rows per step, one interleaved run)
          constexpr int64_t chunk = 128;
          col.resize(size_t(std::min(rows, chunk) * col_stride));
          const PatchArgs pa{xsrc, Hp, Wp, C, Ho, Wo, int(KH), int(sh), int(sw), int(dh), KW * C, col_stride};
          for (int64_t c0 = m0; c0 < m1; c0 += chunk) {
            const int64_t cn = std::min(chunk, m1 - c0);
            patch_rows_avx512(pa, c0, cn, col.data());
            ta.a = col.data();
            ta.lda = col_stride;
            gemm_rows(ta, c0, cn);
          }
          continue;
        } else {
          col.resize(size_t(rows * col_stride));
          for (int64_t m = 0; m < rows; ++m) {
            const int64_t p = m0 + m, img = p / (Ho * Wo), oh = (p / Wo) % Ho, ow = p % Wo;
            uint8_t* row = col.data() + m * col_stride;
            const int64_t iw0 = ow * sw - pw;
            // groups == 1, unit dilation and the whole kernel row inside the image: the KW taps x C
            // channels of a kernel row are one contiguous run of the NHWC input (21 bytes for a 7x7 RGB stem)
            const bool run = groups == 1 && dw == 1 && iw0 >= 0 && iw0 + KW <= W;
            for (int64_t i = 0; i < KH; ++i) {
              const int64_t ih = oh * sh - ph + i * dh;
              uint8_t* d = row + i * KW * icg;
              if (ih < 0 || ih >= H) {
                std::memset(d, zx, size_t(KW * icg));
                continue;
              }
              if (run) {
                std::memcpy(d, xd + ((img * H + ih) * W + iw0) * C, size_t(KW * C));
                continue;
              }
              for (int64_t j = 0; j < KW; ++j) {
                const int64_t iw = iw0 + j * dw;
                if (iw < 0 || iw >= W) std::memset(d + j * icg, zx, size_t(icg));
                else copy_bytes(d + j * icg, xd + ((img * H + ih) * W + iw) * C + g * icg, icg);
              }
            }
            std::memset(row + kg, 0, size_t(col_stride - kg));
          }
          ta.a = col.data();
          ta.lda = col_stride;
        }
        gemm_rows(ta, m0, rows);
      }
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Sparse fp32 conv. A plan (built once per weight and input size, cached by SparseConv2d) holds how the
// input is laid out for the SpMM and the source offset of every nonzero, so a call does no per-nonzero
// work besides the multiply-adds. Plan = int32 tensor [kSpHeader ints of SpPlan][nnz offsets][block table].
constexpr int32_t kSpMagic = 0x50535045;  // "EPSP"
constexpr int32_t kSpVersion = 1;
constexpr int64_t kSpHeader = 64;
// Source layouts. Every pitch is a multiple of 16 floats, so with 64-byte aligned buffers the
// column tiles (multiples of 16) start on cache lines: a 64-byte load that straddles two lines costs
// two (measured 2x on 7x7 maps).
enum SpMode : int32_t {
  kSpDirect = 0,  // 1x1, stride 1, H*W % 16 == 0: the input planes themselves
  kSpCopy = 1,    // 1x1, stride 1: the planes copied to an aligned pitch
  kSpPhased = 2,  // the zero-padded input split into its stride phases (phase (a, b) = rows a, a + sh, ...,
                  // columns b, b + sw, ...; only the phases some tap reads), each plane Hq x Wq. Output
                  // pixel (oh, ow) is column oh * Wq + ow, and tap (kh, kw) reads phase
                  // ((kh*dh) % sh, (kw*dw) % sw) at a constant offset, so the conv is one SpMM with no
                  // patch matrix. The Wq - Wo extra columns per output row are computed and dropped.
  kSpIm2col = 3,  // stride products above kSpMaxPhases (e.g. 5x5 strides): a patch matrix [C*KH*KW][pitch]
};
constexpr int kSpMaxPhases = 16;

struct SpPlan {
  int32_t magic, version, mode, c, h, w, oc, kh, kw, sh, sw, ph, pw, dh, dw, nnz;
  int32_t ho, wo, j, pitch, hq, wq, nph, src_len, ldo, use_tmp;
  int32_t nq, cc;  // input channels in blocks of cc (nq blocks); nq > 1: a [OC][nq + 1] block table follows
  int32_t reserved[4];
  int32_t phase[2 * kSpMaxPhases];  // (a, b) of the phases copied, in source order
};
static_assert(sizeof(SpPlan) == kSpHeader * 4, "sparse plan header is 64 int32");

int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }

// Grow-only, 64-byte aligned scratch buffers of the calling thread (slot 0: the SpMM source, 1: the
// output rows with junk columns). Each thread that calls the op gets its own.
float* scratch(int slot, int64_t floats) {
  struct Buf {
    float* p = nullptr;
    int64_t n = 0;
    ~Buf() { std::free(p); }
  };
  static thread_local Buf bufs[2];
  Buf& b = bufs[slot];
  if (floats > b.n) {
    std::free(b.p);
    const int64_t n = round16(floats) + 16;
    b.p = static_cast<float*>(std::aligned_alloc(64, size_t(n) * 4));
    TORCH_CHECK(b.p != nullptr, "sparse_conv2d: could not allocate ", n * 4, " bytes of scratch");
    b.n = n;
  }
  return b.p;
}

at::Tensor build_plan(const char* op, const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t in_channels, int64_t height,
                       int64_t width, c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                       c10::IntArrayRef dilation, int64_t block_channels) {
  checks::conv_geometry(op, kernel_size, stride, padding, dilation, 0);
  TORCH_CHECK(block_channels >= 0, op, ": block_channels must be >= 0 (0: chosen for L1, C or more: one block), got ",
              block_channels);
  TORCH_CHECK(row_ptr.device().is_cpu() && col_idx.device().is_cpu(),
              op, ": row_ptr and col_idx must be CPU tensors (plans are for the CPU kernel)");
  TORCH_CHECK(row_ptr.scalar_type() == at::kInt && row_ptr.dim() == 1 && row_ptr.numel() >= 2,
              op, ": row_ptr must be 1-D int32 with out_channels + 1 entries (CSR)");
  TORCH_CHECK(col_idx.scalar_type() == at::kInt && col_idx.dim() == 1, op, ": col_idx must be 1-D int32");
  TORCH_CHECK(in_channels >= 1 && height >= 1 && width >= 1, op, ": in_channels, height and width must be >= 1, got ",
              in_channels, ", ", height, ", ", width);
  const int64_t C = in_channels, H = height, W = width, OC = row_ptr.numel() - 1;
  const int64_t KH = kernel_size[0], KW = kernel_size[1], K = C * KH * KW;
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous();
  const int32_t* rpp = rp.data_ptr<int32_t>();
  const int32_t* cip = ci.data_ptr<int32_t>();
  const int64_t nnz = ci.numel();
  TORCH_CHECK(rpp[0] == 0 && rpp[OC] == nnz, op, ": row_ptr must start at 0 and end at nnz (", nnz, "), got ",
              rpp[0], " .. ", rpp[OC]);
  for (int64_t n = 0; n < OC; ++n)
    TORCH_CHECK(rpp[n] <= rpp[n + 1], op, ": row_ptr must be non-decreasing (row ", n, ")");
  for (int64_t p = 0; p < nnz; ++p)
    TORCH_CHECK(cip[p] >= 0 && cip[p] < K, op, ": col_idx[", p, "] = ", cip[p], " is outside [0, C*KH*KW = ", K,
                "); x has ", C, " channels");
  const int64_t Ho = out_size(H, KH, stride[0], padding[0], dilation[0]);
  const int64_t Wo = out_size(W, KW, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, op, ": input ", H, "x", W, " is smaller than the dilated kernel");
  const bool pointwise = KH == 1 && KW == 1 && stride[0] == 1 && stride[1] == 1 && padding[0] == 0 && padding[1] == 0;
  SpPlan h{};
  h.magic = kSpMagic;
  h.version = kSpVersion;
  h.c = int32_t(C), h.h = int32_t(H), h.w = int32_t(W), h.oc = int32_t(OC), h.kh = int32_t(KH), h.kw = int32_t(KW);
  h.sh = int32_t(stride[0]), h.sw = int32_t(stride[1]), h.ph = int32_t(padding[0]), h.pw = int32_t(padding[1]);
  h.dh = int32_t(dilation[0]), h.dw = int32_t(dilation[1]), h.nnz = int32_t(nnz), h.ho = int32_t(Ho), h.wo = int32_t(Wo);
  const int64_t Hp = H + 2 * padding[0], Wp = W + 2 * padding[1];
  int64_t src_len = 0;
  std::vector<int64_t> koff(static_cast<size_t>(K));
  if (pointwise) {
    h.mode = (H * W) % 16 == 0 ? kSpDirect : kSpCopy;
    h.j = int32_t(H * W);
    h.pitch = int32_t(h.mode == kSpDirect ? H * W : round16(H * W));
    h.ldo = int32_t(H * W);
    src_len = h.mode == kSpDirect ? 0 : C * h.pitch;
    for (int64_t k = 0; k < K; ++k) koff[k] = k * h.pitch;
  } else {
    const int64_t sh = stride[0], sw = stride[1], dh = dilation[0], dw = dilation[1];
    int phase_id[kSpMaxPhases] = {};
    int nph = 0;
    bool phased = sh * sw <= kSpMaxPhases;
    if (phased) {
      std::fill(phase_id, phase_id + kSpMaxPhases, -1);
      for (int64_t kh = 0; kh < KH; ++kh)
        for (int64_t kw = 0; kw < KW; ++kw) {
          const int64_t a = (kh * dh) % sh, b = (kw * dw) % sw;
          if (phase_id[a * sw + b] < 0) {
            phase_id[a * sw + b] = nph;
            h.phase[2 * nph] = int32_t(a), h.phase[2 * nph + 1] = int32_t(b);
            ++nph;
          }
        }
    }
    if (phased) {
      const int64_t Hq = (Hp + sh - 1) / sh, Wq = (Wp + sw - 1) / sw;
      h.mode = kSpPhased;
      h.hq = int32_t(Hq), h.wq = int32_t(Wq), h.nph = nph;
      h.j = int32_t(Ho * Wq);
      // the junk columns of the last output row run up to (KW-1)*dw/sw past the plane
      h.pitch = int32_t(round16(Hq * Wq + (KW - 1) * dw / sw + 1));
      h.ldo = int32_t(round16(h.j));
      h.use_tmp = Wq != Wo ? 1 : 0;
      if (!h.use_tmp) h.ldo = h.j;
      src_len = C * nph * h.pitch + 64;  // + a column tile's masked over-read
      for (int64_t k = 0; k < K; ++k) {
        const int64_t c = k / (KH * KW), t = k % (KH * KW), kh = t / KW, kw = t % KW;
        const int64_t id = phase_id[((kh * dh) % sh) * sw + (kw * dw) % sw];
        koff[k] = (c * nph + id) * h.pitch + (kh * dh / sh) * Wq + kw * dw / sw;
      }
    } else {
      h.mode = kSpIm2col;
      h.j = int32_t(Ho * Wo);
      h.pitch = int32_t(round16(Ho * Wo));
      h.ldo = int32_t(Ho * Wo);
      src_len = K * h.pitch;
      for (int64_t k = 0; k < K; ++k) koff[k] = k * h.pitch;
    }
  }
  TORCH_CHECK(src_len < (int64_t(1) << 31) && int64_t(h.ldo) * OC < (int64_t(1) << 31),
              op, ": the ", C, "x", H, "x", W, " input is too large for 32-bit offsets; split the batch or the layer");
  h.src_len = int32_t(src_len);
  // Input-channel blocks: a 128-column tile of every channel the block reads should fit in L1 (32 of
  // its 48 KiB), else each nonzero's loads come from L2 (measured 2-3x slower on 3x3 and wide 1x1
  // layers). Needs columns ascending within each row (sparse_pack's order); otherwise one block.
  const int64_t tile = std::min<int64_t>(128, round16(h.j));
  int64_t span = 0, reads = 1;
  if (h.mode == kSpPhased) {
    span = (KH - 1) * dilation[0] / stride[0] * h.wq + (KW - 1) * dilation[1] / stride[1];
    reads = h.nph;
  } else if (h.mode == kSpIm2col) {
    reads = KH * KW;
  }
  const int64_t bytes_per_channel = reads * (tile + span) * 4;
  int64_t cc = std::max<int64_t>(4, 32768 / bytes_per_channel);
  // ... but each (row, block) pass costs a load and a store of the row's output tile: keep >= ~16
  // nonzeros per row and block, so very sparse layers trade some L2 loads for fewer passes
  const double per_channel = double(nnz) / double(std::max<int64_t>(1, OC * C));
  if (per_channel > 0) cc = std::max<int64_t>(cc, int64_t(std::ceil(16.0 / per_channel)));
  bool sorted = true;
  for (int64_t n = 0; n < OC && sorted; ++n)
    for (int64_t p = rpp[n] + 1; p < rpp[n + 1]; ++p)
      if (cip[p] <= cip[p - 1]) {
        sorted = false;
        break;
      }
  // block_channels overrides the choice. Which is faster depends on the layer and its density: on ResNet-50's
  // 1x1 layers one block ran 0.89-1.42x the speed of these L1 blocks at 90% sparsity, 0.63-0.86x at 50%
  // (benchmarks/sparse_plan_ab.py); SparseConv2d times both on the layer's input and keeps the faster.
  if (block_channels > 0) cc = block_channels;
  if (!sorted || cc >= C) cc = C;
  const int64_t nq = (C + cc - 1) / cc;
  h.nq = int32_t(nq), h.cc = int32_t(cc);
  const int64_t table = nq > 1 ? OC * (nq + 1) : 0;
  at::Tensor plan = at::empty({kSpHeader + nnz + table}, rp.options().dtype(at::kInt));
  int32_t* pp = plan.data_ptr<int32_t>();
  std::memcpy(pp, &h, sizeof(h));
  for (int64_t p = 0; p < nnz; ++p) pp[kSpHeader + p] = int32_t(koff[cip[p]]);
  if (nq > 1) {
    int32_t* tb = pp + kSpHeader + nnz;
    const int64_t cols_per_block = cc * KH * KW;
    for (int64_t n = 0; n < OC; ++n) {
      int32_t p = rpp[n];
      for (int64_t q = 0; q < nq; ++q) {
        tb[n * (nq + 1) + q] = p;
        while (p < rpp[n + 1] && cip[p] < (q + 1) * cols_per_block) ++p;
      }
      tb[n * (nq + 1) + nq] = rpp[n + 1];
    }
  }
  return plan;
}

at::Tensor sparse_plan(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t in_channels, int64_t height,
                       int64_t width, c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                       c10::IntArrayRef dilation, int64_t block_channels) {
  return build_plan("sparse_plan", row_ptr, col_idx, in_channels, height, width, kernel_size, stride, padding, dilation,
                    block_channels);
}

const SpPlan& plan_header(const at::Tensor& plan) {
  TORCH_CHECK(plan.device().is_cpu() && plan.scalar_type() == at::kInt && plan.dim() == 1 && plan.numel() >= kSpHeader &&
                  plan.is_contiguous(),
              "sparse_conv2d_planned: plan must be the 1-D int32 CPU tensor sparse_plan returns");
  const SpPlan& h = *reinterpret_cast<const SpPlan*>(plan.data_ptr<int32_t>());
  TORCH_CHECK(h.magic == kSpMagic && h.version == kSpVersion && h.nq >= 1 &&
                  plan.numel() == kSpHeader + h.nnz + (h.nq > 1 ? int64_t(h.oc) * (h.nq + 1) : 0),
              "sparse_conv2d_planned: plan is not a sparse_plan result of this build (rebuild it with sparse_plan)");
  return h;
}

// Column-range width of the sparse conv's tasks (n_chunks output-channel blocks x column ranges, column-range
// major), which at::parallel_for hands to the threads as contiguous runs of ceil(tasks / threads). 128-column
// ranges leave a short last range (a 14x14 map: 128 + 68 columns, 65% of the work on one of two threads;
// 28x28: 6 x 128 + 16), so the width is chosen to balance the threads' work, counted in 16-column vectors
// as the kernel's cost goes (a 128-column tile costs ~2 vectors more per nonzero than its 8: the weight
// broadcast, the offset load): a multiple of 16 from 128 down to 64 or, up to 256 columns, all columns in
// one range (the threads then split the output channels), preferring wider ranges within 3% of the best.
int64_t balanced_columns(int64_t J, int64_t OC, int64_t n_per, int64_t threads, int64_t tile) {
  const int64_t n_chunks = (OC + n_per - 1) / n_per;
  auto worst = [&](int64_t w) {  // the busiest thread's vectors x rows
    const int64_t j_chunks = (J + w - 1) / w, tasks = n_chunks * j_chunks;
    const int64_t per_thread = (tasks + threads - 1) / threads;
    int64_t most = 0;
    for (int64_t t0 = 0; t0 < tasks; t0 += per_thread) {
      int64_t cost = 0;
      for (int64_t t = t0; t < std::min(tasks, t0 + per_thread); ++t) {
        const int64_t rows = std::min(n_per, OC - (t % n_chunks) * n_per);
        const int64_t j0 = (t / n_chunks) * w, cols = std::min(w, J - j0);
        const int64_t tiles = (cols + tile - 1) / tile, vecs = (cols + 15) / 16;
        cost += rows * (vecs + 2 * tiles);  // + each tile's per-nonzero broadcast and offset load
      }
      most = std::max(most, cost);
    }
    return most;
  };
  int64_t best_w = tile, best = worst(tile);
  for (const int64_t w : {tile - 16, tile - 32, tile - 48, tile / 2, round16(J)}) {
    if (w > 2 * tile) continue;  // all columns of a larger map per task: each thread reads all the input (measured 0.93x)
    const int64_t c = worst(w);
    if (c * 100 < best * 97) best = c, best_w = w;  // a wider range wins ties within 3%
  }
  return best_w;
}

at::Tensor sparse_conv2d_planned(const at::Tensor& x, const at::Tensor& plan, const at::Tensor& row_ptr,
                                 const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                                 c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, int64_t activation) {
  TORCH_CHECK(x.device().is_cpu(), "sparse_conv2d_planned: x is on ", x.device(), "; this is the CPU kernel");
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 4, "sparse_conv2d_planned: x must be 4-D float32 [N, C, H, W], got ",
              x.scalar_type(), " ", x.sizes());
  checks::conv_geometry("sparse_conv2d_planned", kernel_size, stride, padding, dilation, activation);
  const SpPlan& h = plan_header(plan);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C == h.c && H == h.h && W == h.w, "sparse_conv2d_planned: the plan was built for a ", h.c, "x", h.h, "x",
              h.w, " input, x is ", C, "x", H, "x", W, "; build one for this size with sparse_plan");
  TORCH_CHECK(kernel_size[0] == h.kh && kernel_size[1] == h.kw && stride[0] == h.sh && stride[1] == h.sw &&
                  padding[0] == h.ph && padding[1] == h.pw && dilation[0] == h.dh && dilation[1] == h.dw,
              "sparse_conv2d_planned: kernel_size/stride/padding/dilation differ from the plan's");
  TORCH_CHECK(row_ptr.device().is_cpu() && row_ptr.scalar_type() == at::kInt && row_ptr.dim() == 1 &&
                  row_ptr.numel() == h.oc + 1,
              "sparse_conv2d_planned: row_ptr must be the 1-D int32 CPU tensor the plan was built from (", h.oc + 1,
              " entries)");
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == at::kFloat && values.dim() == 1 &&
                  values.numel() == h.nnz,
              "sparse_conv2d_planned: values must be 1-D float32 with the plan's ", h.nnz, " nonzeros, got ",
              values.scalar_type(), " ", values.sizes());
  const at::Tensor rp = row_ptr.contiguous(), vals = values.contiguous();
  const int32_t* rpp = rp.data_ptr<int32_t>();
  const int64_t OC = h.oc;
  TORCH_CHECK(rpp[0] == 0 && rpp[OC] == h.nnz, "sparse_conv2d_planned: row_ptr does not match the plan (nnz ", h.nnz, ")");
  for (int64_t n = 0; n < OC; ++n)  // O(OC): a row_ptr that is not the plan's cannot send the kernel outside the plan
    TORCH_CHECK(rpp[n] <= rpp[n + 1], "sparse_conv2d_planned: row_ptr must be non-decreasing (row ", n, ")");
  const at::Tensor b = checks::bias(bias, OC, x, "sparse_conv2d_planned");
  const int64_t Ho = h.ho, Wo = h.wo, KH = h.kh, KW = h.kw, J = h.j, pitch = h.pitch;
  at::Tensor out = OutputPool::instance().empty({N, OC, Ho, Wo}, x.options());
  const at::Tensor xc = x.contiguous();
  const int isa = current_isa();
  // scratch: a per-thread buffer kept between calls (no zero-filling: every element read is written
  // first), instead of a fresh allocation of up to a few MiB, and its page faults, on every call.
  float* const src_buf = scratch(0, h.src_len);
  // Rows with junk columns (phased layout): with AVX-512 the last pass writes the output plane itself
  // (SpmmArgs::fout) and tmp only holds the partial sums of the earlier input-channel blocks; elsewhere
  // the rows go through tmp and are copied out after the SpMM
  const bool direct = h.use_tmp && isa >= kIsaAvx512Vnni;
  float* const tmp = scratch(1, h.use_tmp ? OC * h.ldo : 0);
  std::vector<uint16_t> keep(size_t(direct ? h.wq : 0));  // kept lanes of a vector from column r of a row
  for (int64_t r = 0; r < int64_t(keep.size()); ++r)
    for (int i = 0; i < 16; ++i)
      if ((r + i) % h.wq < h.wo) keep[size_t(r)] = uint16_t(keep[size_t(r)] | (1u << i));
  const int32_t* off = plan.data_ptr<int32_t>() + kSpHeader;
  const int64_t jt = isa >= kIsaAvx512Vnni ? 128 : 32;  // the kernels' column tile
  const int64_t j_tiles = (J + jt - 1) / jt;
  const int64_t threads = at::get_num_threads();
  // Tasks: blocks of output channels x column ranges, about 8 per thread. Inside a task the kernel
  // walks column tiles and, per tile, the block's rows: the input tile and the block's output rows stay
  // in L1/L2 (a long channel loop per tile lets the output stream evict the input tile).
  const int64_t n_per = std::min<int64_t>(32, OC);
  const int64_t n_chunks = (OC + n_per - 1) / n_per;
  int64_t j_per_task = jt * std::max<int64_t>(1, j_tiles * n_chunks / (8 * threads) / n_chunks);
  if (j_per_task == jt && isa >= kIsaAvx512Vnni) j_per_task = balanced_columns(J, OC, n_per, threads, jt);
  const int64_t j_chunks = (J + j_per_task - 1) / j_per_task;
  for (int64_t img = 0; img < N; ++img) {
    const float* xi = xc.data_ptr<float>() + img * C * H * W;
    const float* src = xi;
    if (h.mode == kSpCopy) {
      at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          std::memcpy(src_buf + c * pitch, xi + c * H * W, size_t(H * W) * 4);
          std::memset(src_buf + c * pitch + H * W, 0, size_t(pitch - H * W) * 4);
        }
      });
      src = src_buf;
    } else if (h.mode == kSpPhased) {
      const int64_t Hq = h.hq, Wq = h.wq, nph = h.nph, sh = h.sh, sw = h.sw, ph = h.ph, pw = h.pw;
      at::parallel_for(0, C * nph, 4, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t c = q / nph, a = h.phase[2 * (q % nph)], bb = h.phase[2 * (q % nph) + 1];
          float* plane = src_buf + q * pitch;
          // columns x of this phase read padded column x*sw + bb, i.e. input column x*sw + bb - pw
          const int64_t x_lo = std::min<int64_t>(Wq, std::max<int64_t>(0, (pw - bb + sw - 1) / sw));
          const int64_t x_hi = std::max<int64_t>(x_lo, std::min<int64_t>(Wq, (W + pw - bb + sw - 1) / sw));
          for (int64_t y = 0; y < Hq; ++y) {
            float* row = plane + y * Wq;
            const int64_t iy = y * sh + a - ph;
            if (iy < 0 || iy >= H) {
              std::memset(row, 0, size_t(Wq) * 4);
              continue;
            }
            const float* xr = xi + (c * H + iy) * W;  // phase column xx = input column xx*sw + bb - pw
            std::memset(row, 0, size_t(x_lo) * 4);
            if (x_hi > x_lo) {
              const float* x0 = xr + (x_lo * sw + bb - pw);
              if (sw == 1) {
                std::memcpy(row + x_lo, x0, size_t(x_hi - x_lo) * 4);
              } else if (sw == 2 && isa >= kIsaAvx512Vnni) {
                gather2_avx512(row + x_lo, x0, x_hi - x_lo);
              } else {
                for (int64_t xx = 0; xx < x_hi - x_lo; ++xx) row[x_lo + xx] = x0[xx * sw];
              }
            }
            std::memset(row + x_hi, 0, size_t(Wq - x_hi) * 4);
          }
          std::memset(plane + Hq * Wq, 0, size_t(pitch - Hq * Wq) * 4);
        }
      });
      std::memset(src_buf + C * nph * pitch, 0, size_t(h.src_len - C * nph * pitch) * 4);
      src = src_buf;
    } else if (h.mode == kSpIm2col) {
      const int64_t K = C * KH * KW;
      at::parallel_for(0, K, 8, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t c = k / (KH * KW), t = k % (KH * KW), kh = t / KW, kw = t % KW;
          float* row = src_buf + k * pitch;
          for (int64_t oh = 0; oh < Ho; ++oh) {
            const int64_t ih = oh * h.sh - h.ph + kh * h.dh;
            float* o = row + oh * Wo;
            if (ih < 0 || ih >= H) {
              std::memset(o, 0, size_t(Wo) * 4);
              continue;
            }
            const float* xr = xi + (c * H + ih) * W;
            for (int64_t ow = 0; ow < Wo; ++ow) {
              const int64_t iw = ow * h.sw - h.pw + kw * h.dw;
              o[ow] = (iw < 0 || iw >= W) ? 0.f : xr[iw];
            }
          }
          std::memset(row + Ho * Wo, 0, size_t(pitch - Ho * Wo) * 4);
        }
      });
      src = src_buf;
    }
    float* dst = h.use_tmp ? tmp : out.data_ptr<float>() + img * OC * Ho * Wo;
    const int64_t nq = h.nq;
    const int32_t* tb = nq > 1 ? off + h.nnz : nullptr;
    at::parallel_for(0, n_chunks * j_chunks, 1, [&](int64_t t0, int64_t t1) {
      SpmmArgs sa{src, nq > 1 ? tb : rpp, nq > 1 ? tb + 1 : rpp + 1, nq > 1 ? nq + 1 : 1, off, vals.data_ptr<float>(),
                  b.defined() ? b.data_ptr<float>() : nullptr, int(activation), dst, h.ldo, false, true};
      if (direct) {
        sa.fout = out.data_ptr<float>() + img * OC * Ho * Wo;
        sa.fld = Ho * Wo, sa.wq = h.wq, sa.wo = Wo, sa.keep = keep.data();
      }
      for (int64_t t = t0; t < t1; ++t) {
        // column-range major: the tasks of one column range (all output-channel blocks) run back to back
        // on one thread, so its input tile is read from memory once and then from L2
        const int64_t n0 = (t % n_chunks) * n_per, n1 = std::min(OC, n0 + n_per);
        const int64_t j0 = (t / n_chunks) * j_per_task, j1 = std::min(J, j0 + j_per_task);
        for (int64_t j = j0; j < j1; j += (nq > 1 ? jt : j1 - j0)) {
          const int64_t je = nq > 1 ? std::min(j1, j + jt) : j1;
          for (int64_t q = 0; q < nq; ++q) {
            if (nq > 1) sa.rb = tb + q, sa.re = tb + q + 1;
            sa.accumulate = q > 0;
            sa.finalize = q == nq - 1;
            if (isa >= kIsaAvx512Vnni) spmm_avx512(sa, n0, n1, j, je);
            else if (isa == kIsaAvx2) spmm_avx2(sa, n0, n1, j, je);
            else spmm_ref(sa, n0, n1, j, je);
          }
        }
      }
    });
    if (h.use_tmp && !direct) {
      float* o = out.data_ptr<float>() + img * OC * Ho * Wo;
      at::parallel_for(0, OC, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t y = 0; y < Ho; ++y) std::memcpy(o + (n * Ho + y) * Wo, tmp + n * h.ldo + y * h.wq, size_t(Wo) * 4);
      });
    }
  }
  return out;
}

at::Tensor sparse_conv2d(const at::Tensor& x, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                         const at::Tensor& values, const c10::optional<at::Tensor>& bias, c10::IntArrayRef kernel_size,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t activation) {
  TORCH_CHECK(x.device().is_cpu(), "sparse_conv2d: x is on ", x.device(), "; this is the CPU kernel");
  checks::csr(x, row_ptr, col_idx, values);
  checks::conv_geometry("sparse_conv2d", kernel_size, stride, padding, dilation, activation);
  checks::bias(bias, row_ptr.numel() - 1, x, "sparse_conv2d");
  const at::Tensor plan =
      build_plan("sparse_conv2d", row_ptr, col_idx, x.size(1), x.size(2), x.size(3), kernel_size, stride, padding, dilation,
                 0);
  return sparse_conv2d_planned(x, plan, row_ptr, values, bias, kernel_size, stride, padding, dilation, activation);
}

}  // namespace
}  // namespace ec

TORCH_LIBRARY(edgecompress, m) {
  m.def("kernel_isa() -> str");
  m.def("set_kernel_isa(str isa) -> str");
  m.def("kernel_threads() -> int");
  m.def("approx_reciprocal(Tensor x) -> Tensor");
  m.def("quantize_u8(Tensor x, float scale, int zero_point) -> Tensor");
  m.def("int8_pack_weight(Tensor weight, int groups) -> Tensor");
  m.def(
      "int8_conv2d(Tensor x, float x_scale, int x_zero_point, Tensor w_packed, Tensor w_scale, Tensor w_zero_point, "
      "Tensor? bias, int out_channels, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int activation, float out_scale, int out_zero_point, ScalarType out_dtype) -> Tensor");
  m.def(
      "sparse_conv2d(Tensor x, Tensor row_ptr, Tensor col_idx, Tensor values, Tensor? bias, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int activation) -> Tensor");
  m.def(
      "sparse_plan(Tensor row_ptr, Tensor col_idx, int in_channels, int height, int width, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int block_channels=0) -> Tensor");
  m.def(
      "sparse_conv2d_planned(Tensor x, Tensor plan, Tensor row_ptr, Tensor values, Tensor? bias, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int activation) -> Tensor");
  m.impl("kernel_isa", &ec::kernel_isa);
  m.impl("set_kernel_isa", &ec::set_kernel_isa);
  m.impl("kernel_threads", &ec::kernel_threads);
}

TORCH_LIBRARY_IMPL(edgecompress, CPU, m) {
  m.impl("approx_reciprocal", &ec::approx_reciprocal);
  m.impl("quantize_u8", &ec::quantize_u8);
  m.impl("int8_pack_weight", &ec::int8_pack_weight);
  m.impl("int8_conv2d", &ec::int8_conv2d);
  m.impl("sparse_conv2d", &ec::sparse_conv2d);
  m.impl("sparse_plan", &ec::sparse_plan);
  m.impl("sparse_conv2d_planned", &ec::sparse_conv2d_planned);
}
