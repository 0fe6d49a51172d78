// host_tool: the demo core (ec_core) on the development host, for tests against the numpy
// reference (edgecompress/android/native.py wraps it). No ncnn, no JNI.
//
//   host_tool preprocess      --json model.json --pixels in.u8  --n N --width W --height H --channels C --out out.f32
//   host_tool preprocess-argb --json model.json --pixels in.i32 --n N --width W --height H --out out.f32
//   host_tool topk            --logits in.f32 --n N --classes K --k 5 --out out.i32
//   host_tool softmax         --logits in.f32 --n N --classes K --out out.f32
//   host_tool stats           --samples in.f64 --n N [--model M --precision P --threads T --powersave S --warmup W]
//   host_tool parse-json      --json model.json [--labels labels.txt]
//   host_tool bench-input     --json model.json --out out.f32
//
// Arrays are raw little-endian (the byte order of every supported host and phone), back to back:
// N images of HxWxC uint8 (or HxW int32 0xAARRGGBB) in, N CHW float32 tensors out.
// Exit status 0 on success, 2 for a usage error, 1 for any other error (message on stderr).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "ec_core.h"

namespace {

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Args {
public:
    Args(int argc, char** argv, int first, const std::set<std::string>& known) {
        for (int i = first; i < argc; ++i) {
            const std::string a = argv[i];
            if (a.rfind("--", 0) != 0 || !known.count(a.substr(2))) throw UsageError("unknown argument " + a);
            if (i + 1 >= argc) throw UsageError(a + " needs a value");
            values_[a.substr(2)] = argv[++i];
        }
    }

    bool has(const std::string& key) const { return values_.count(key) != 0; }

    std::string str(const std::string& key) const {
        const auto it = values_.find(key);
        if (it == values_.end()) throw UsageError("missing --" + key);
        return it->second;
    }

    std::string str(const std::string& key, const std::string& fallback) const { return has(key) ? str(key) : fallback; }

    long long integer(const std::string& key, long long min_value) const {
        const std::string s = str(key);
        std::size_t used = 0;
        long long v = 0;
        try {
            v = std::stoll(s, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != s.size() || v < min_value) {
            throw UsageError("--" + key + " must be an integer >= " + std::to_string(min_value) + ", got " + s);
        }
        return v;
    }

    long long integer(const std::string& key, long long min_value, long long fallback) const {
        return has(key) ? integer(key, min_value) : fallback;
    }

private:
    std::map<std::string, std::string> values_;
};

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

template <class T>
std::vector<T> read_array(const std::string& path, std::size_t count) {
    const std::string bytes = read_file(path);
    if (bytes.size() != count * sizeof(T)) {
        throw std::runtime_error(path + " has " + std::to_string(bytes.size()) + " bytes, expected " +
                                 std::to_string(count * sizeof(T)) + " (" + std::to_string(count) + " values of " +
                                 std::to_string(sizeof(T)) + " bytes)");
    }
    std::vector<T> out(count);
    if (count != 0) std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
}

template <class T>
void write_array(const std::string& path, const std::vector<T>& data) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + path);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(T)));
    if (!f) throw std::runtime_error("writing " + path + " failed");
}

std::string num(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

int cmd_preprocess(const Args& a, bool argb) {
    const ec::ModelConfig cfg = ec::parse_model_json(read_file(a.str("json")));
    const auto n = static_cast<std::size_t>(a.integer("n", 0));
    const int w = static_cast<int>(a.integer("width", 1));
    const int h = static_cast<int>(a.integer("height", 1));
    const std::size_t pixels = std::size_t(w) * std::size_t(h);
    std::vector<float> out;
    out.reserve(n * std::size_t(cfg.input.channels) * std::size_t(cfg.input.width) * std::size_t(cfg.input.height));
    if (argb) {
        const auto in = read_array<std::uint32_t>(a.str("pixels"), n * pixels);
        for (std::size_t i = 0; i < n; ++i) {
            const auto t = ec::preprocess_argb(in.data() + i * pixels, w, h, cfg.input);
            out.insert(out.end(), t.begin(), t.end());
        }
    } else {
        const int c = static_cast<int>(a.integer("channels", 1));
        const auto in = read_array<std::uint8_t>(a.str("pixels"), n * pixels * std::size_t(c));
        for (std::size_t i = 0; i < n; ++i) {
            const auto t = ec::preprocess_u8(in.data() + i * pixels * std::size_t(c), w, h, c, cfg.input);
            out.insert(out.end(), t.begin(), t.end());
        }
    }
    write_array(a.str("out"), out);
    return 0;
}

int cmd_topk(const Args& a) {
    const auto n = static_cast<std::size_t>(a.integer("n", 0));
    const auto k = static_cast<std::size_t>(a.integer("classes", 1));
    const int top = static_cast<int>(a.integer("k", 0));
    const auto logits = read_array<float>(a.str("logits"), n * k);
    std::vector<std::int32_t> out;
    for (std::size_t i = 0; i < n; ++i) {
        const std::vector<float> row(logits.begin() + std::ptrdiff_t(i * k), logits.begin() + std::ptrdiff_t((i + 1) * k));
        for (const int idx : ec::top_k(row, top)) out.push_back(idx);
    }
    write_array(a.str("out"), out);
    return 0;
}

int cmd_softmax(const Args& a) {
    const auto n = static_cast<std::size_t>(a.integer("n", 0));
    const auto k = static_cast<std::size_t>(a.integer("classes", 1));
    const auto logits = read_array<float>(a.str("logits"), n * k);
    std::vector<float> out;
    for (std::size_t i = 0; i < n; ++i) {
        const std::vector<float> row(logits.begin() + std::ptrdiff_t(i * k), logits.begin() + std::ptrdiff_t((i + 1) * k));
        const auto p = ec::softmax(row);
        out.insert(out.end(), p.begin(), p.end());
    }
    write_array(a.str("out"), out);
    return 0;
}

int cmd_stats(const Args& a) {
    const auto n = static_cast<std::size_t>(a.integer("n", 1));
    const auto samples = read_array<double>(a.str("samples"), n);
    const ec::TimingStats st = ec::timing_stats(samples);
    std::cout << ec::bench_line(a.str("model", "model"), a.str("precision", "fp32"),
                                static_cast<int>(a.integer("threads", 1, 1)), static_cast<int>(a.integer("powersave", 0, 0)),
                                static_cast<int>(a.integer("warmup", 0, 0)), static_cast<int>(n), st)
              << "\n";
    return 0;
}

int cmd_parse_json(const Args& a) {
    const ec::ModelConfig c = ec::parse_model_json(read_file(a.str("json")));
    auto floats = [](const std::vector<float>& v) {
        std::string s = "[";
        for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + num(static_cast<double>(v[i]));
        return s + "]";
    };
    std::string files = "{";
    for (const auto& kv : c.files) {
        files += (files.size() > 1 ? ", " : "") + ec::json_quote(kv.first) + ": {\"bytes\": " +
                 std::to_string(kv.second.bytes) + ", \"sha256\": " + ec::json_quote(kv.second.sha256) + "}";
    }
    files += "}";
    std::cout << "{\"format\": " << c.format << ", \"name\": " << ec::json_quote(c.name)
              << ", \"precision\": " << ec::json_quote(c.precision) << ", \"param\": " << ec::json_quote(c.param)
              << ", \"bin\": " << ec::json_quote(c.bin) << ", \"labels\": " << ec::json_quote(c.labels)
              << ", \"input\": {\"blob\": " << ec::json_quote(c.input.blob) << ", \"width\": " << c.input.width
              << ", \"height\": " << c.input.height << ", \"channels\": " << c.input.channels
              << ", \"color\": " << ec::json_quote(c.input.color) << ", \"mean\": " << floats(c.input.mean)
              << ", \"std\": " << floats(c.input.std) << ", \"scale\": " << num(static_cast<double>(c.input.scale))
              << "}, \"output\": {\"blob\": " << ec::json_quote(c.output.blob) << ", \"classes\": " << c.output.classes
              << "}, \"threads\": " << c.threads << ", \"top_k\": " << c.top_k << ", \"files\": " << files
              << ", \"edgecompress\": " << ec::json_quote(c.edgecompress);
    if (a.has("labels")) {
        const auto labels = ec::parse_labels(read_file(a.str("labels")), c.output.classes);
        std::cout << ", \"label_names\": [";
        for (std::size_t i = 0; i < labels.size(); ++i) std::cout << (i ? ", " : "") << ec::json_quote(labels[i]);
        std::cout << "]";
    }
    std::cout << "}\n";
    return 0;
}

int cmd_bench_input(const Args& a) {
    const ec::ModelConfig cfg = ec::parse_model_json(read_file(a.str("json")));
    write_array(a.str("out"), ec::benchmark_input(cfg.input));
    return 0;
}

const char* kUsage =
    "usage: host_tool COMMAND [--flag value ...]\n"
    "  preprocess      --json F --pixels F --n N --width W --height H --channels C --out F\n"
    "  preprocess-argb --json F --pixels F --n N --width W --height H --out F\n"
    "  topk            --logits F --n N --classes K --k K --out F\n"
    "  softmax         --logits F --n N --classes K --out F\n"
    "  stats           --samples F --n N [--model M --precision P --threads T --powersave S --warmup W]\n"
    "  parse-json      --json F [--labels F]\n"
    "  bench-input     --json F --out F\n";

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << kUsage;
        return 2;
    }
    const std::string cmd = argv[1];
    try {
        if (cmd == "preprocess") {
            return cmd_preprocess(Args(argc, argv, 2, {"json", "pixels", "n", "width", "height", "channels", "out"}), false);
        }
        if (cmd == "preprocess-argb") {
            return cmd_preprocess(Args(argc, argv, 2, {"json", "pixels", "n", "width", "height", "out"}), true);
        }
        if (cmd == "topk") return cmd_topk(Args(argc, argv, 2, {"logits", "n", "classes", "k", "out"}));
        if (cmd == "softmax") return cmd_softmax(Args(argc, argv, 2, {"logits", "n", "classes", "out"}));
        if (cmd == "stats") {
            return cmd_stats(Args(argc, argv, 2, {"samples", "n", "model", "precision", "threads", "powersave", "warmup"}));
        }
        if (cmd == "parse-json") return cmd_parse_json(Args(argc, argv, 2, {"json", "labels"}));
        if (cmd == "bench-input") return cmd_bench_input(Args(argc, argv, 2, {"json", "out"}));
        std::cerr << "host_tool: unknown command " << cmd << "\n" << kUsage;
        return 2;
    } catch (const UsageError& e) {
        std::cerr << "host_tool " << cmd << ": " << e.what() << "\n" << kUsage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "host_tool " << cmd << ": error: " << e.what() << "\n";
        return 1;
    }
}
