// edgecompress demo core: model.json, preprocessing, top-k, timing statistics.
//
// C++17 and the standard library only: no JNI, no ncnn. The same code runs in the Android app
// (through jni_bridge.cpp), in the phone benchmark (bench_main.cpp) and on the development host
// (host/host_tool.cpp), where tests compare it with the numpy reference in
// edgecompress/android/preprocess.py.
//
// Every function reports bad input by throwing std::runtime_error (or std::invalid_argument, a
// std::logic_error) with a message that names the offending key or argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ec {

// ---------------------------------------------------------------------------------------------
// JSON (RFC 8259: objects, arrays, strings with escapes, numbers, true/false/null)

class JsonValue {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    Type type = Type::Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<JsonValue> items;  // Array elements
    std::vector<std::string> keys;  // Object members in document order: keys[i] -> values[i]
    std::vector<JsonValue> values;

    // The member `key` of an object (the last one when a key repeats, as Python's json does);
    // nullptr when this is not an object or has no such member.
    const JsonValue* find(const std::string& key) const;
};

// Parses one JSON document (surrounding whitespace allowed). Throws std::runtime_error naming the
// byte offset of the first error.
JsonValue parse_json(const std::string& text);

// `s` as a JSON string literal, quotes included.
std::string json_quote(const std::string& s);

// ---------------------------------------------------------------------------------------------
// model.json (format 1, written by `edgecompress android package`)

struct FileInfo {
    long long bytes = -1;  // -1: not stated
    std::string sha256;
};

struct InputSpec {
    std::string blob;  // ncnn input blob, e.g. "in0"
    int width = 0;
    int height = 0;
    int channels = 0;  // 3
    std::string color;  // "RGB" or "BGR": the model's channel order
    std::vector<float> mean;  // per model channel, in [0, 1] units
    std::vector<float> std;
    float scale = 255.0f;  // pixel value of 1.0: normalised = (v - mean*scale) / (std*scale)
};

struct OutputSpec {
    std::string blob;  // ncnn output blob, e.g. "out0"
    int classes = 0;
};

struct ModelConfig {
    int format = 0;
    std::string name;
    std::string precision;
    std::string param;  // asset / file names of the ncnn model and the labels
    std::string bin;
    std::string labels;
    InputSpec input;
    OutputSpec output;
    int threads = 4;
    int top_k = 5;
    std::map<std::string, FileInfo> files;
    std::string edgecompress;  // version of the packager
};

// Parses and validates model.json. Unknown keys are ignored. Throws std::runtime_error naming the
// missing or bad key, e.g. `model.json: missing key "input.mean"`.
ModelConfig parse_model_json(const std::string& text);

// Throws when model.json lists `name` under "files" with a byte count other than `size`
// (stale or truncated assets).
void check_file_size(const ModelConfig& cfg, const std::string& name, std::size_t size);

// One label per line ('\r\n' or '\n'; trailing empty lines dropped); throws unless there are
// exactly `classes` of them.
std::vector<std::string> parse_labels(const std::string& text, int classes);

// ---------------------------------------------------------------------------------------------
// Preprocessing: 8-bit interleaved pixels -> planar CHW float32 of the model's input size.
//
// 1. Bilinear resize to (input.width, input.height) with half-pixel centres,
//    src = (dst + 0.5) * in / out - 0.5 clamped to [0, in - 1], no antialiasing (the coordinate
//    mapping of OpenCV INTER_LINEAR and torch interpolate(align_corners=False)). Interpolated
//    values stay float (not rounded to 8 bits). Equal sizes give an exact copy.
// 2. Per model channel c: (v - mean[c]*scale) / (std[c]*scale) in float32, in exactly this order
//    (mean[c]*scale and std[c]*scale are float32 products).
// The output has input.channels * input.height * input.width floats.

// `channels_in`: 3 (R,G,B bytes) or 4 (R,G,B,A bytes, e.g. an ARGB_8888 Bitmap's memory);
// `row_stride`: bytes from one row to the next, 0 for width * channels_in.
std::vector<float> preprocess_u8(const std::uint8_t* pixels, int width, int height, int channels_in,
                                 const InputSpec& spec, std::size_t row_stride = 0);

// Android `int` pixels as Bitmap.getPixels returns them: 0xAARRGGBB, not premultiplied.
std::vector<float> preprocess_argb(const std::uint32_t* pixels, int width, int height, const InputSpec& spec);

// The fixed input both benchmarks time: a deterministic RGB pattern of the model's input size,
// preprocessed like a photo.
std::vector<float> benchmark_input(const InputSpec& spec);

// ---------------------------------------------------------------------------------------------
// Scores

// Indices of the k largest scores, by descending score, ties broken by the lower index, NaN last
// (the order of numpy.argsort(-x, kind="stable")). k is clamped to scores.size().
std::vector<int> top_k(const std::vector<float>& scores, int k);

// Numerically stable softmax (max subtracted, sums in double).
std::vector<float> softmax(const std::vector<float>& logits);

// ---------------------------------------------------------------------------------------------
// Timing

struct TimingStats {
    std::size_t n = 0;
    double min_ms = 0, median_ms = 0, max_ms = 0, mean_ms = 0, p90_ms = 0;
};

// min/median/max/mean/p90 of latency samples in ms. median of an even count is the mean of the
// two middle values; p90 interpolates linearly like numpy.percentile's default. Throws on empty.
TimingStats timing_stats(std::vector<double> samples_ms);

// The one-line, parseable benchmark result (keys in this order, ms with 4 decimals):
// EC_BENCH model=<name> precision=<p> threads=<t> powersave=<0|1|2> warmup=<w> runs=<n>
//          min_ms=<x> median_ms=<x> max_ms=<x> mean_ms=<x> p90_ms=<x>
// Whitespace, '=' and control characters in model/precision become '_' so the line stays parseable.
std::string bench_line(const std::string& model, const std::string& precision, int threads, int powersave,
                       int warmup, int runs, const TimingStats& stats);

}  // namespace ec
