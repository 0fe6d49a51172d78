// See ec_core.h. Standard C++17 only; built with -ffp-contract=off everywhere so that the host
// tests and the phone compute bit-identical preprocessing.
#include "ec_core.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <locale>
#include <sstream>
#include <stdexcept>

namespace ec {

// =============================================================================================
// JSON

const JsonValue* JsonValue::find(const std::string& key) const {
    if (type != Type::Object) return nullptr;
    for (std::size_t i = keys.size(); i-- > 0;) {
        if (keys[i] == key) return &values[i];
    }
    return nullptr;
}

namespace {

class JsonParser {
public:
    explicit JsonParser(const std::string& text) : s_(text) {}

    JsonValue document() {
        skip_ws();
        JsonValue v = value(0);
        skip_ws();
        if (pos_ != s_.size()) fail("unexpected text after the JSON value");
        return v;
    }

private:
    static constexpr int kMaxDepth = 128;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
    }

    bool at_end() const { return pos_ >= s_.size(); }

    void skip_ws() {
        while (!at_end() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
    }

    void expect(char c) {
        if (at_end() || s_[pos_] != c) fail(std::string("expected '") + c + "'");
        ++pos_;
    }

    JsonValue value(int depth) {
        if (depth > kMaxDepth) fail("nested deeper than 128 levels");
        if (at_end()) fail("unexpected end of input");
        const char c = s_[pos_];
        if (c == '{') return object(depth);
        if (c == '[') return array(depth);
        if (c == '"') {
            JsonValue v;
            v.type = JsonValue::Type::String;
            v.string = string_literal();
            return v;
        }
        if (c == 't') return literal("true", JsonValue::Type::Bool, true);
        if (c == 'f') return literal("false", JsonValue::Type::Bool, false);
        if (c == 'n') return literal("null", JsonValue::Type::Null, false);
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        fail(std::string("unexpected character '") + c + "'");
    }

    JsonValue literal(const char* word, JsonValue::Type type, bool b) {
        const std::string w(word);
        if (s_.compare(pos_, w.size(), w) != 0) fail("expected '" + w + "'");
        pos_ += w.size();
        JsonValue v;
        v.type = type;
        v.boolean = b;
        return v;
    }

    JsonValue object(int depth) {
        JsonValue v;
        v.type = JsonValue::Type::Object;
        expect('{');
        skip_ws();
        if (!at_end() && s_[pos_] == '}') {
            ++pos_;
            return v;
        }
        for (;;) {
            skip_ws();
            if (at_end() || s_[pos_] != '"') fail("expected a string key");
            std::string key = string_literal();
            skip_ws();
            expect(':');
            skip_ws();
            JsonValue item = value(depth + 1);
            v.keys.push_back(std::move(key));
            v.values.push_back(std::move(item));
            skip_ws();
            if (at_end()) fail("unterminated object");
            if (s_[pos_] == ',') {
                ++pos_;
                continue;
            }
            if (s_[pos_] == '}') {
                ++pos_;
                return v;
            }
            fail("expected ',' or '}'");
        }
    }

    JsonValue array(int depth) {
        JsonValue v;
        v.type = JsonValue::Type::Array;
        expect('[');
        skip_ws();
        if (!at_end() && s_[pos_] == ']') {
            ++pos_;
            return v;
        }
        for (;;) {
            skip_ws();
            v.items.push_back(value(depth + 1));
            skip_ws();
            if (at_end()) fail("unterminated array");
            if (s_[pos_] == ',') {
                ++pos_;
                continue;
            }
            if (s_[pos_] == ']') {
                ++pos_;
                return v;
            }
            fail("expected ',' or ']'");
        }
    }

    unsigned hex4() {
        if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
        unsigned cp = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = s_[pos_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= unsigned(h - '0');
            else if (h >= 'a' && h <= 'f') cp |= unsigned(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') cp |= unsigned(h - 'A' + 10);
            else fail("bad hex digit in \\u escape");
        }
        return cp;
    }

    static void append_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xC0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        } else {
            out += char(0xF0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3F));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        }
    }

    std::string string_literal() {
        expect('"');
        std::string out;
        for (;;) {
            if (at_end()) fail("unterminated string");
            const char c = s_[pos_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character inside a string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (at_end()) fail("unterminated escape");
            const char e = s_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF && s_.compare(pos_, 2, "\\u") == 0) {
                        const std::size_t save = pos_;
                        pos_ += 2;
                        const unsigned lo = hex4();
                        if (lo >= 0xDC00 && lo <= 0xDFFF) {
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        } else {
                            pos_ = save;  // a lone high surrogate followed by another escape
                        }
                    }
                    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // lone surrogate: replacement char
                    append_utf8(out, cp);
                    break;
                }
                default: fail(std::string("bad escape '\\") + e + "'");
            }
        }
    }

    JsonValue number() {
        const std::size_t start = pos_;
        auto digits = [&]() {
            const std::size_t d0 = pos_;
            while (!at_end() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
            return pos_ - d0;
        };
        if (s_[pos_] == '-') ++pos_;
        if (at_end()) fail("truncated number");
        if (s_[pos_] == '0') {
            ++pos_;
        } else if (digits() == 0) {
            fail("expected a digit");
        }
        if (!at_end() && s_[pos_] == '.') {
            ++pos_;
            if (digits() == 0) fail("expected a digit after '.'");
        }
        if (!at_end() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
            ++pos_;
            if (!at_end() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
            if (digits() == 0) fail("expected a digit in the exponent");
        }
        std::istringstream in(s_.substr(start, pos_ - start));
        in.imbue(std::locale::classic());  // '.' as decimal point whatever the process locale
        double d = 0.0;
        in >> d;
        if (in.fail()) fail("number out of range");
        JsonValue v;
        v.type = JsonValue::Type::Number;
        v.number = d;
        return v;
    }

    const std::string& s_;
    std::size_t pos_ = 0;
};

}  // namespace

JsonValue parse_json(const std::string& text) { return JsonParser(text).document(); }

std::string json_quote(const std::string& s) {
    std::string out = "\"";
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
                    out += buf;
                } else {
                    out += ch;  // UTF-8 passes through
                }
        }
    }
    return out + "\"";
}

// =============================================================================================
// model.json

namespace {

const char* type_name(JsonValue::Type t) {
    switch (t) {
        case JsonValue::Type::Null: return "null";
        case JsonValue::Type::Bool: return "a boolean";
        case JsonValue::Type::Number: return "a number";
        case JsonValue::Type::String: return "a string";
        case JsonValue::Type::Array: return "an array";
        case JsonValue::Type::Object: return "an object";
    }
    return "?";
}

[[noreturn]] void bad_key(const std::string& path, const std::string& what) {
    throw std::runtime_error("model.json: \"" + path + "\" " + what);
}

std::string join(const std::string& prefix, const std::string& key) {
    return prefix.empty() ? key : prefix + "." + key;
}

const JsonValue& require(const JsonValue& obj, const std::string& prefix, const std::string& key) {
    const JsonValue* v = obj.find(key);
    if (v == nullptr) throw std::runtime_error("model.json: missing key \"" + join(prefix, key) + "\"");
    return *v;
}

const JsonValue& require_type(const JsonValue& obj, const std::string& prefix, const std::string& key,
                              JsonValue::Type type) {
    const JsonValue& v = require(obj, prefix, key);
    if (v.type != type) bad_key(join(prefix, key), std::string("must be ") + type_name(type) + ", got " + type_name(v.type));
    return v;
}

std::string get_string(const JsonValue& obj, const std::string& prefix, const std::string& key) {
    return require_type(obj, prefix, key, JsonValue::Type::String).string;
}

int as_int(const JsonValue& v, const std::string& path, int min_value) {
    if (v.type != JsonValue::Type::Number) bad_key(path, std::string("must be an integer, got ") + type_name(v.type));
    const double d = v.number;
    if (!(std::floor(d) == d) || d < min_value || d > std::numeric_limits<int>::max()) {
        std::ostringstream msg;
        msg.imbue(std::locale::classic());
        msg << "must be an integer >= " << min_value << ", got " << d;
        bad_key(path, msg.str());
    }
    return static_cast<int>(d);
}

int get_int(const JsonValue& obj, const std::string& prefix, const std::string& key, int min_value) {
    return as_int(require(obj, prefix, key), join(prefix, key), min_value);
}

int get_int_or(const JsonValue& obj, const std::string& key, int min_value, int fallback) {
    const JsonValue* v = obj.find(key);
    return v == nullptr ? fallback : as_int(*v, key, min_value);
}

float get_positive_float(const JsonValue& obj, const std::string& prefix, const std::string& key) {
    const JsonValue& v = require_type(obj, prefix, key, JsonValue::Type::Number);
    if (!(v.number > 0) || !std::isfinite(v.number)) bad_key(join(prefix, key), "must be a positive number");
    return static_cast<float>(v.number);
}

std::vector<float> get_floats(const JsonValue& obj, const std::string& prefix, const std::string& key,
                              std::size_t count, bool positive) {
    const std::string path = join(prefix, key);
    const JsonValue& arr = require_type(obj, prefix, key, JsonValue::Type::Array);
    if (arr.items.size() != count) {
        bad_key(path, "must have " + std::to_string(count) + " entries (one per input channel), got " +
                          std::to_string(arr.items.size()));
    }
    std::vector<float> out;
    for (std::size_t i = 0; i < arr.items.size(); ++i) {
        const JsonValue& item = arr.items[i];
        if (item.type != JsonValue::Type::Number || !std::isfinite(item.number) || (positive && !(item.number > 0))) {
            bad_key(path + "[" + std::to_string(i) + "]", positive ? "must be a positive number" : "must be a finite number");
        }
        out.push_back(static_cast<float>(item.number));  // float32, as the Python loader's torch.tensor(mean)
    }
    return out;
}

// Asset and file names come from a file the user can edit: keep them inside the model folder.
std::string get_file_name(const JsonValue& obj, const std::string& key) {
    const std::string name = get_string(obj, "", key);
    bool ok = !name.empty() && name.front() != '/' && name.find('\\') == std::string::npos &&
              name.find('\0') == std::string::npos;
    std::size_t start = 0;
    while (ok && start <= name.size()) {
        const std::size_t end = std::min(name.find('/', start), name.size());
        const std::string part = name.substr(start, end - start);
        ok = !part.empty() && part != "." && part != "..";
        start = end + 1;
    }
    if (!ok) bad_key(key, "must be a relative file name inside the model folder, got " + json_quote(name));
    return name;
}

}  // namespace

ModelConfig parse_model_json(const std::string& text) {
    JsonValue root;
    try {
        root = parse_json(text);
    } catch (const std::runtime_error& e) {
        throw std::runtime_error(std::string("model.json: ") + e.what());
    }
    if (root.type != JsonValue::Type::Object) {
        throw std::runtime_error(std::string("model.json: the document must be an object, got ") + type_name(root.type));
    }
    ModelConfig cfg;
    cfg.format = get_int(root, "", "format", 0);
    if (cfg.format != 1) {
        bad_key("format", "is " + std::to_string(cfg.format) +
                              "; this app reads format 1 (update the app or re-package the model with a matching edgecompress)");
    }
    cfg.name = get_string(root, "", "name");
    cfg.precision = get_string(root, "", "precision");
    cfg.param = get_file_name(root, "param");
    cfg.bin = get_file_name(root, "bin");
    cfg.labels = get_file_name(root, "labels");

    const JsonValue& in = require_type(root, "", "input", JsonValue::Type::Object);
    cfg.input.blob = get_string(in, "input", "blob");
    cfg.input.width = get_int(in, "input", "width", 1);
    cfg.input.height = get_int(in, "input", "height", 1);
    cfg.input.channels = get_int(in, "input", "channels", 1);
    if (cfg.input.channels != 3) {
        bad_key("input.channels", "is " + std::to_string(cfg.input.channels) + "; the app feeds colour images (3 channels)");
    }
    cfg.input.color = get_string(in, "input", "color");
    if (cfg.input.color != "RGB" && cfg.input.color != "BGR") {
        bad_key("input.color", "must be \"RGB\" or \"BGR\", got " + json_quote(cfg.input.color));
    }
    cfg.input.mean = get_floats(in, "input", "mean", std::size_t(cfg.input.channels), false);
    cfg.input.std = get_floats(in, "input", "std", std::size_t(cfg.input.channels), true);
    cfg.input.scale = get_positive_float(in, "input", "scale");

    const JsonValue& out = require_type(root, "", "output", JsonValue::Type::Object);
    cfg.output.blob = get_string(out, "output", "blob");
    cfg.output.classes = get_int(out, "output", "classes", 1);

    cfg.threads = get_int_or(root, "threads", 1, cfg.threads);
    cfg.top_k = get_int_or(root, "top_k", 1, cfg.top_k);

    if (const JsonValue* files = root.find("files")) {
        if (files->type != JsonValue::Type::Object) bad_key("files", std::string("must be an object, got ") + type_name(files->type));
        for (std::size_t i = 0; i < files->keys.size(); ++i) {
            const std::string path = "files." + files->keys[i];
            const JsonValue& f = files->values[i];
            if (f.type != JsonValue::Type::Object) bad_key(path, std::string("must be an object, got ") + type_name(f.type));
            FileInfo info;
            const JsonValue& bytes = require(f, path, "bytes");
            if (bytes.type != JsonValue::Type::Number || !(std::floor(bytes.number) == bytes.number) || bytes.number < 0 ||
                bytes.number > 9.0e15) {
                bad_key(path + ".bytes", "must be a non-negative integer");
            }
            info.bytes = static_cast<long long>(bytes.number);
            if (const JsonValue* sha = f.find("sha256")) {
                if (sha->type != JsonValue::Type::String) bad_key(path + ".sha256", "must be a string");
                info.sha256 = sha->string;
            }
            cfg.files[files->keys[i]] = info;
        }
    }
    if (const JsonValue* version = root.find("edgecompress")) {
        if (version->type == JsonValue::Type::String) cfg.edgecompress = version->string;
    }
    return cfg;
}

void check_file_size(const ModelConfig& cfg, const std::string& name, std::size_t size) {
    const auto it = cfg.files.find(name);
    if (it == cfg.files.end() || it->second.bytes < 0) return;
    if (static_cast<unsigned long long>(it->second.bytes) != size) {
        throw std::runtime_error(name + " is " + std::to_string(size) + " bytes but model.json says " +
                                 std::to_string(it->second.bytes) +
                                 "; the assets are stale or truncated: re-run `edgecompress android package`");
    }
}

std::vector<std::string> parse_labels(const std::string& text, int classes) {
    std::vector<std::string> labels;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(start, end - start);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        labels.push_back(line);
        start = end + 1;
    }
    while (!labels.empty() && labels.back().empty()) labels.pop_back();
    if (static_cast<long long>(labels.size()) != classes) {
        throw std::runtime_error("the labels file has " + std::to_string(labels.size()) + " lines but model.json says " +
                                 "output.classes = " + std::to_string(classes) + "; give one label per class");
    }
    return labels;
}

// =============================================================================================
// Preprocessing

namespace {

struct Axis {
    std::vector<int> i0, i1;
    std::vector<float> w;  // weight of i1
};

// Half-pixel-centre sampling positions of `out` destination pixels over `in` source pixels.
// Equal sizes give i0 = i1 = d and w = 0: v = p + (p - p) * 0 = p exactly.
Axis make_axis(int in, int out) {
    Axis a;
    a.i0.resize(std::size_t(out));
    a.i1.resize(std::size_t(out));
    a.w.resize(std::size_t(out));
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (int d = 0; d < out; ++d) {
        double src = (d + 0.5) * scale - 0.5;
        if (src < 0.0) src = 0.0;
        if (src > in - 1) src = in - 1;
        const int x0 = static_cast<int>(std::floor(src));
        a.i0[std::size_t(d)] = x0;
        a.i1[std::size_t(d)] = std::min(x0 + 1, in - 1);
        a.w[std::size_t(d)] = static_cast<float>(src - x0);
    }
    return a;
}

void check_spec(const InputSpec& s) {
    if (s.width < 1 || s.height < 1) throw std::invalid_argument("input width and height must be >= 1");
    if (s.channels != 3 || s.mean.size() != 3 || s.std.size() != 3) {
        throw std::invalid_argument("the input spec must have 3 channels with 3 mean and 3 std values");
    }
    if (s.color != "RGB" && s.color != "BGR") throw std::invalid_argument("input color must be RGB or BGR, got " + s.color);
}

void check_image(const void* pixels, int width, int height) {
    if (pixels == nullptr) throw std::invalid_argument("pixels is null");
    if (width < 1 || height < 1) {
        throw std::invalid_argument("image size must be at least 1x1, got " + std::to_string(width) + "x" +
                                    std::to_string(height));
    }
}

// fetch(x, y, c) -> the 8-bit value of RGB channel c (0 = R, 1 = G, 2 = B) at pixel (x, y).
template <class Fetch>
std::vector<float> resize_normalise(Fetch fetch, int in_w, int in_h, const InputSpec& s) {
    check_spec(s);
    const Axis ax = make_axis(in_w, s.width);
    const Axis ay = make_axis(in_h, s.height);
    const std::size_t plane = std::size_t(s.width) * std::size_t(s.height);
    std::vector<float> out(plane * 3);
    for (int c = 0; c < 3; ++c) {
        const int sc = s.color == "BGR" ? 2 - c : c;
        const float mean = s.mean[std::size_t(c)] * s.scale;  // float32 products, as in the Python loader
        const float stdv = s.std[std::size_t(c)] * s.scale;
        float* dst = out.data() + plane * std::size_t(c);
        for (int y = 0; y < s.height; ++y) {
            const int y0 = ay.i0[std::size_t(y)], y1 = ay.i1[std::size_t(y)];
            const float wy = ay.w[std::size_t(y)];
            for (int x = 0; x < s.width; ++x) {
                const int x0 = ax.i0[std::size_t(x)], x1 = ax.i1[std::size_t(x)];
                const float wx = ax.w[std::size_t(x)];
                const float p00 = fetch(x0, y0, sc), p01 = fetch(x1, y0, sc);
                const float p10 = fetch(x0, y1, sc), p11 = fetch(x1, y1, sc);
                const float top = p00 + (p01 - p00) * wx;
                const float bottom = p10 + (p11 - p10) * wx;
                const float v = top + (bottom - top) * wy;
                dst[std::size_t(y) * std::size_t(s.width) + std::size_t(x)] = (v - mean) / stdv;
            }
        }
    }
    return out;
}

}  // namespace

std::vector<float> preprocess_u8(const std::uint8_t* pixels, int width, int height, int channels_in,
                                 const InputSpec& spec, std::size_t row_stride) {
    check_image(pixels, width, height);
    if (channels_in != 3 && channels_in != 4) {
        throw std::invalid_argument("channels_in must be 3 (RGB) or 4 (RGBA), got " + std::to_string(channels_in));
    }
    const std::size_t row = std::size_t(width) * std::size_t(channels_in);
    const std::size_t stride = row_stride == 0 ? row : row_stride;
    if (stride < row) throw std::invalid_argument("row_stride is smaller than width * channels_in");
    auto fetch = [&](int x, int y, int c) -> float {
        return static_cast<float>(pixels[std::size_t(y) * stride + std::size_t(x) * std::size_t(channels_in) + std::size_t(c)]);
    };
    return resize_normalise(fetch, width, height, spec);
}

std::vector<float> preprocess_argb(const std::uint32_t* pixels, int width, int height, const InputSpec& spec) {
    check_image(pixels, width, height);
    auto fetch = [&](int x, int y, int c) -> float {
        const std::uint32_t p = pixels[std::size_t(y) * std::size_t(width) + std::size_t(x)];
        return static_cast<float>((p >> (16 - 8 * c)) & 0xFFu);
    };
    return resize_normalise(fetch, width, height, spec);
}

std::vector<float> benchmark_input(const InputSpec& spec) {
    check_spec(spec);
    std::vector<std::uint8_t> img(std::size_t(spec.width) * std::size_t(spec.height) * 3);
    for (int y = 0; y < spec.height; ++y) {
        for (int x = 0; x < spec.width; ++x) {
            for (int c = 0; c < 3; ++c) {
                img[(std::size_t(y) * std::size_t(spec.width) + std::size_t(x)) * 3 + std::size_t(c)] =
                    static_cast<std::uint8_t>((x * 37 + y * 101 + c * 59 + (x * y) % 13) & 0xFF);
            }
        }
    }
    return preprocess_u8(img.data(), spec.width, spec.height, 3, spec);
}

// =============================================================================================
// Scores

std::vector<int> top_k(const std::vector<float>& scores, int k) {
    if (k < 0) throw std::invalid_argument("k must be >= 0, got " + std::to_string(k));
    const std::size_t n = scores.size();
    const std::size_t kk = std::min(n, std::size_t(k));
    std::vector<int> idx(n);
    for (std::size_t i = 0; i < n; ++i) idx[i] = static_cast<int>(i);
    auto before = [&](int a, int b) {
        const float x = scores[std::size_t(a)], y = scores[std::size_t(b)];
        const bool nx = std::isnan(x), ny = std::isnan(y);
        if (nx != ny) return ny;  // numbers before NaN
        if (!nx && x != y) return x > y;
        return a < b;
    };
    std::partial_sort(idx.begin(), idx.begin() + std::ptrdiff_t(kk), idx.end(), before);
    idx.resize(kk);
    return idx;
}

std::vector<float> softmax(const std::vector<float>& logits) {
    std::vector<float> out(logits.size());
    if (logits.empty()) return out;
    const float m = *std::max_element(logits.begin(), logits.end());
    std::vector<double> e(logits.size());
    double sum = 0.0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        e[i] = std::exp(static_cast<double>(logits[i]) - static_cast<double>(m));
        sum += e[i];
    }
    for (std::size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<float>(e[i] / sum);
    return out;
}

// =============================================================================================
// Timing

TimingStats timing_stats(std::vector<double> s) {
    if (s.empty()) throw std::invalid_argument("no timing samples");
    std::sort(s.begin(), s.end());
    const std::size_t n = s.size();
    TimingStats st;
    st.n = n;
    st.min_ms = s.front();
    st.max_ms = s.back();
    st.median_ms = n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2.0;
    double sum = 0.0;
    for (const double v : s) sum += v;
    st.mean_ms = sum / static_cast<double>(n);
    // numpy.percentile(s, 90), method "linear": virtual index (n - 1) * q and numpy's _lerp.
    const double vi = static_cast<double>(n - 1) * 0.9;
    const std::size_t lo = std::min(static_cast<std::size_t>(std::floor(vi)), n - 1);
    const std::size_t hi = std::min(lo + 1, n - 1);
    const double t = vi - static_cast<double>(lo);
    const double a = s[lo], b = s[hi], diff = b - a;
    st.p90_ms = t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
    return st;
}

namespace {

std::string token(const std::string& s) {
    std::string out;
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        out += (c <= 0x20 || c == 0x7F || ch == '=') ? '_' : ch;
    }
    return out.empty() ? "unknown" : out;
}

std::string ms4(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4f", v);
    return buf;
}

}  // namespace

std::string bench_line(const std::string& model, const std::string& precision, int threads, int powersave, int warmup,
                       int runs, const TimingStats& st) {
    return "EC_BENCH model=" + token(model) + " precision=" + token(precision) + " threads=" + std::to_string(threads) +
           " powersave=" + std::to_string(powersave) + " warmup=" + std::to_string(warmup) + " runs=" +
           std::to_string(runs) + " min_ms=" + ms4(st.min_ms) + " median_ms=" + ms4(st.median_ms) +
           " max_ms=" + ms4(st.max_ms) + " mean_ms=" + ms4(st.mean_ms) + " p90_ms=" + ms4(st.p90_ms);
}

}  // namespace ec
