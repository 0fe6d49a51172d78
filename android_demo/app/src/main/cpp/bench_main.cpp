// edgecompress_bench: the app's benchmark as a command-line program for `adb shell`.
//
//   edgecompress_bench --dir DIR [--threads T] [--powersave P] [--warmup W] [--runs N]
//
// Reads DIR/model.json, loads DIR/<param> and DIR/<bin> (names taken from model.json), times the
// fixed benchmark input (ec::benchmark_input, the same one the app's benchmark screen uses) and
// prints one EC_BENCH line to stdout. Any error: a message on stderr and a nonzero exit status
// (2 for bad arguments, 1 otherwise). `edgecompress bench --device android` pushes and runs it.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/ec_core.h"
#include "ncnn_runner.h"

namespace {

// The one file name this program knows; everything else comes from it. The app opens the asset of
// the same name (Assets.MODEL_JSON in NativeClassifier.kt), both written by `edgecompress android package`.
constexpr const char* kModelJson = "model.json";

const char* kUsage =
    "usage: edgecompress_bench --dir DIR [--threads T] [--powersave P] [--warmup W] [--runs N]\n"
    "  DIR holds model.json and the ncnn param/bin it names (as `edgecompress android package` writes them)\n"
    "  --threads T    ncnn threads (default: model.json's \"threads\")\n"
    "  --powersave P  0 all cores (default), 1 little cores, 2 big cores\n"
    "  --warmup W     untimed runs first (default 10)\n"
    "  --runs N       timed runs (default 50)\n";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

int to_int(const std::string& flag, const std::string& value, int min_value) {
    std::size_t used = 0;
    int v = 0;
    try {
        v = std::stoi(value, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != value.size() || v < min_value) {
        throw UsageError(flag + " must be an integer >= " + std::to_string(min_value) + ", got \"" + value + "\"");
    }
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::string dir;
        int threads = 0, powersave = 0, warmup = 10, runs = 50;
        for (int i = 1; i < argc; ++i) {
            const std::string flag = argv[i];
            if (flag == "-h" || flag == "--help") {
                std::cout << kUsage;
                return 0;
            }
            if (i + 1 >= argc) throw UsageError(flag + " needs a value");
            const std::string value = argv[++i];
            if (flag == "--dir") dir = value;
            else if (flag == "--threads") threads = to_int(flag, value, 1);
            else if (flag == "--powersave") powersave = to_int(flag, value, 0);
            else if (flag == "--warmup") warmup = to_int(flag, value, 0);
            else if (flag == "--runs") runs = to_int(flag, value, 1);
            else throw UsageError("unknown argument " + flag);
        }
        if (dir.empty()) throw UsageError("--dir is required");
        if (powersave > 2) throw UsageError("--powersave must be 0, 1 or 2");
        while (dir.size() > 1 && dir.back() == '/') dir.pop_back();

        const std::vector<unsigned char> json = read_file(dir + "/" + kModelJson);
        const ec::ModelConfig cfg = ec::parse_model_json(std::string(json.begin(), json.end()));
        const std::vector<unsigned char> param = read_file(dir + "/" + cfg.param);
        ec::check_file_size(cfg, cfg.param, param.size());
        std::vector<unsigned char> bin = read_file(dir + "/" + cfg.bin);
        ec::check_file_size(cfg, cfg.bin, bin.size());

        ec::NcnnRunner runner;
        runner.load(cfg, std::string(param.begin(), param.end()), std::move(bin), threads);
        const int t = runner.threads();
        ec::NcnnRunner::set_powersave(powersave);
        const std::vector<double> ms = runner.time_runs(ec::benchmark_input(cfg.input), runs, warmup, t);
        std::cout << ec::bench_line(cfg.name, cfg.precision, t, powersave, warmup, runs, ec::timing_stats(ms)) << std::endl;
        return 0;
    } catch (const UsageError& e) {
        std::cerr << "edgecompress_bench: " << e.what() << "\n" << kUsage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "edgecompress_bench: error: " << e.what() << "\n";
        return 1;
    }
}
