// The only file that includes ncnn. Written against the API of ncnn releases from 2022 on
// (Mat::d, Extractor::extract(name, mat, type), DataReaderFromMemory); see README.md for the
// prebuilt to use.
#include "ncnn_runner.h"

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "cpu.h"
#include "datareader.h"
#include "net.h"

namespace ec {

struct NcnnRunner::Impl {
    ncnn::Net net;
    std::vector<unsigned char> model;  // referenced by the loaded weights: lives as long as `net`
    std::string input_blob, output_blob;
    int width = 0, height = 0, channels = 0, classes = 0;
    int threads = 1;
    bool loaded = false;
};

NcnnRunner::NcnnRunner() : impl_(new Impl) {}

NcnnRunner::~NcnnRunner() = default;

bool NcnnRunner::loaded() const { return impl_->loaded; }

int NcnnRunner::threads() const { return impl_->threads; }

void NcnnRunner::load(const ModelConfig& cfg, const std::string& param_text, std::vector<unsigned char> model_bytes,
                      int threads) {
    Impl& d = *impl_;
    d.net.clear();
    d.loaded = false;
    d.threads = threads > 0 ? threads : cfg.threads;
    d.net.opt.num_threads = d.threads;
    d.net.opt.use_vulkan_compute = false;
    d.net.opt.lightmode = true;
    if (cfg.precision == "fp32") {
        // ncnn stores activations in fp16/bf16 by default on CPUs that support it; an fp32 artifact
        // is meant to run (and was validated) in fp32. use_bf16_packed exists only in 2026+ releases
        // and needs use_bf16_storage, which is off here.
        d.net.opt.use_fp16_storage = false;
        d.net.opt.use_fp16_packed = false;
        d.net.opt.use_fp16_arithmetic = false;
        d.net.opt.use_bf16_storage = false;
    }
    if (d.net.load_param_mem(param_text.c_str()) != 0) {
        throw std::runtime_error("ncnn could not parse " + cfg.param + " (is it an ncnn .param text file?)");
    }
    // ncnn reads the weights in place from 4-byte-aligned memory; a vector's buffer (operator new)
    // is aligned for any fundamental type. An empty .bin still needs a valid pointer.
    d.model = std::move(model_bytes);
    if (d.model.empty()) d.model.resize(4, 0);
    const unsigned char* mem = d.model.data();
    ncnn::DataReaderFromMemory reader(mem);
    if (d.net.load_model(reader) != 0) {
        d.net.clear();
        throw std::runtime_error("ncnn could not load the weights " + cfg.bin + " for " + cfg.param +
                                 " (a .bin from another export?)");
    }
    d.input_blob = cfg.input.blob;
    d.output_blob = cfg.output.blob;
    d.width = cfg.input.width;
    d.height = cfg.input.height;
    d.channels = cfg.input.channels;
    d.classes = cfg.output.classes;
    d.loaded = true;
}

std::vector<float> NcnnRunner::run(const std::vector<float>& chw, int threads) const {
    const Impl& d = *impl_;
    if (!d.loaded) throw std::runtime_error("no model loaded");
    const std::size_t plane = std::size_t(d.width) * std::size_t(d.height);
    if (chw.size() != plane * std::size_t(d.channels)) {
        throw std::runtime_error("input has " + std::to_string(chw.size()) + " values, the model expects " +
                                 std::to_string(d.channels) + "x" + std::to_string(d.height) + "x" +
                                 std::to_string(d.width));
    }
    // ncnn aligns each channel of a Mat to 16 bytes: copy plane by plane, not as one block.
    ncnn::Mat in(d.width, d.height, d.channels);
    if (in.empty()) throw std::runtime_error("out of memory for the input tensor");
    for (int q = 0; q < d.channels; ++q) {
        float* dst = in.channel(q);
        std::memcpy(dst, chw.data() + plane * std::size_t(q), plane * sizeof(float));
    }
    ncnn::Extractor ex = d.net.create_extractor();
    ex.set_light_mode(true);
    ex.set_num_threads(threads > 0 ? threads : d.threads);
    if (ex.input(d.input_blob.c_str(), in) != 0) {
        throw std::runtime_error("the model has no input blob \"" + d.input_blob + "\" (see input.blob in model.json)");
    }
    ncnn::Mat out;
    if (ex.extract(d.output_blob.c_str(), out) != 0 || out.empty()) {
        throw std::runtime_error("ncnn could not compute the output blob \"" + d.output_blob +
                                 "\" (see output.blob in model.json)");
    }
    if (out.elemsize != sizeof(float) || out.elempack != 1) {
        throw std::runtime_error("unexpected output layout from ncnn (elemsize " + std::to_string(out.elemsize) +
                                 ", elempack " + std::to_string(out.elempack) + ")");
    }
    const std::size_t per_channel = std::size_t(out.w) * std::size_t(out.h) * std::size_t(out.d);
    std::vector<float> result;
    result.reserve(per_channel * std::size_t(out.c));
    for (int q = 0; q < out.c; ++q) {
        const float* p = out.channel(q);
        result.insert(result.end(), p, p + per_channel);
    }
    if (result.size() != std::size_t(d.classes)) {
        throw std::runtime_error("the output blob \"" + d.output_blob + "\" has " + std::to_string(result.size()) +
                                 " values but model.json says output.classes = " + std::to_string(d.classes));
    }
    return result;
}

std::vector<double> NcnnRunner::time_runs(const std::vector<float>& chw, int runs, int warmup, int threads) const {
    if (runs < 1) throw std::runtime_error("runs must be >= 1");
    if (warmup < 0) throw std::runtime_error("warmup must be >= 0");
    for (int i = 0; i < warmup; ++i) run(chw, threads);
    std::vector<double> ms;
    ms.reserve(std::size_t(runs));
    for (int i = 0; i < runs; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        run(chw, threads);
        const auto t1 = std::chrono::steady_clock::now();
        ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return ms;
}

int NcnnRunner::set_powersave(int powersave) {
    if (powersave < 0 || powersave > 2) {
        throw std::runtime_error("powersave must be 0 (all cores), 1 (little cores) or 2 (big cores), got " +
                                 std::to_string(powersave));
    }
    const int previous = ncnn::get_cpu_powersave();
    if (ncnn::set_cpu_powersave(powersave) != 0) {
        throw std::runtime_error("ncnn could not set powersave " + std::to_string(powersave) +
                                 " on this CPU (no big.LITTLE clusters?); use 0");
    }
    return previous;
}

}  // namespace ec
