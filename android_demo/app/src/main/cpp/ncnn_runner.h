// ncnn behind a small interface. ncnn_runner.cpp is the only file that includes ncnn headers; this
// header does not (pimpl), so jni_bridge.cpp and bench_main.cpp compile without them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/ec_core.h"

namespace ec {

class NcnnRunner {
public:
    NcnnRunner();
    ~NcnnRunner();
    NcnnRunner(const NcnnRunner&) = delete;
    NcnnRunner& operator=(const NcnnRunner&) = delete;

    // Loads the network from memory: `param_text` is the .param file (text), `model_bytes` the .bin
    // file. The runner keeps `model_bytes` (ncnn references the weights in place). CPU only
    // (no Vulkan); fp32 models run with ncnn's fp16/bf16 storage and arithmetic off, as the
    // project's exporter validated them. Throws std::runtime_error on any failure.
    void load(const ModelConfig& cfg, const std::string& param_text, std::vector<unsigned char> model_bytes,
              int threads);

    bool loaded() const;
    int threads() const;

    // One forward pass of a CHW float32 tensor of the model's input size; returns the output blob
    // flattened (cfg.output.classes values). `threads` 0 uses the load-time setting.
    std::vector<float> run(const std::vector<float>& chw, int threads = 0) const;

    // `warmup` untimed then `runs` timed forward passes of `chw`; the latencies in ms.
    std::vector<double> time_runs(const std::vector<float>& chw, int runs, int warmup, int threads) const;

    // ncnn::set_cpu_powersave (0 all cores, 1 little cores, 2 big cores; process-wide, only
    // effective on Android). Returns the previous setting. Throws on a value outside 0..2 or when
    // ncnn refuses it.
    static int set_powersave(int powersave);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace ec
