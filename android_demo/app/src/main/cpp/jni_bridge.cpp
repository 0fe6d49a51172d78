// JNI glue only: every function here is an `external fun` of NativeClassifier.kt
// (object com.edgecompress.demo.NativeClassifier), in the same order. The work is done by the core
// (core/ec_core.h) and ncnn_runner.h. C++ exceptions become Java exceptions:
// std::invalid_argument -> IllegalArgumentException, anything else -> RuntimeException.
//
// Assets: the app passes the name of model.json (Assets.MODEL_JSON in Kotlin); every other asset
// name (param, bin, labels) is read from model.json. No asset name is written in this file.
#include <android/asset_manager.h>
#include <android/asset_manager_jni.h>
#include <android/log.h>
#include <jni.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/ec_core.h"
#include "ncnn_runner.h"

namespace {

constexpr const char* kTag = "edgecompress";

// Indices of nativeInputInfo's result; NativeClassifier.kt names the same positions.
enum InputInfo { kWidth = 0, kHeight, kChannels, kClasses, kTopK, kThreads, kInputInfoSize };

struct Classifier {
    ec::ModelConfig cfg;
    std::vector<std::string> labels;
    ec::NcnnRunner runner;
    std::mutex mu;  // one forward pass at a time per handle
    double last_preprocess_ms = 0.0;
    double last_inference_ms = 0.0;
};

std::mutex g_powersave_mu;  // ncnn's powersave setting is process-wide and not thread-safe

void throw_java(JNIEnv* env, const char* cls, const std::string& msg) {
    if (env->ExceptionCheck()) return;  // keep the first pending exception
    jclass c = env->FindClass(cls);
    if (c != nullptr) env->ThrowNew(c, msg.c_str());
}

// Runs `f`, turning C++ exceptions into a pending Java exception and returning `fallback`.
template <class R, class F>
R guarded(JNIEnv* env, R fallback, F&& f) {
    try {
        return f();
    } catch (const std::invalid_argument& e) {
        throw_java(env, "java/lang/IllegalArgumentException", e.what());
    } catch (const std::exception& e) {
        __android_log_print(ANDROID_LOG_ERROR, kTag, "%s", e.what());
        throw_java(env, "java/lang/RuntimeException", e.what());
    } catch (...) {
        throw_java(env, "java/lang/RuntimeException", "unknown native error");
    }
    return fallback;
}

Classifier* classifier(jlong handle) {
    if (handle == 0) throw std::invalid_argument("the classifier was closed or never loaded");
    return reinterpret_cast<Classifier*>(handle);
}

std::string from_jstring(JNIEnv* env, jstring s) {
    if (s == nullptr) throw std::invalid_argument("null string");
    const char* chars = env->GetStringUTFChars(s, nullptr);
    if (chars == nullptr) throw std::runtime_error("out of memory reading a Java string");
    std::string out(chars);
    env->ReleaseStringUTFChars(s, chars);
    return out;
}

// UTF-8 -> UTF-16 (NewStringUTF wants modified UTF-8, which labels with emoji are not).
jstring to_jstring(JNIEnv* env, const std::string& s) {
    std::u16string out;
    for (std::size_t i = 0; i < s.size();) {
        const auto b = static_cast<unsigned char>(s[i]);
        const int len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
        std::uint32_t cp = 0xFFFD;
        if (len == 1) {
            cp = b;
        } else if (len > 1 && i + std::size_t(len) <= s.size()) {
            cp = b & (0xFF >> (len + 1));
            for (int k = 1; k < len; ++k) {
                const auto c = static_cast<unsigned char>(s[i + std::size_t(k)]);
                if ((c >> 6) != 0x2) {
                    cp = 0xFFFD;
                    break;
                }
                cp = (cp << 6) | (c & 0x3F);
            }
        }
        i += std::size_t(len > 0 && i + std::size_t(len) <= s.size() ? len : 1);
        if (cp >= 0x10000 && cp <= 0x10FFFF) {
            cp -= 0x10000;
            out += static_cast<char16_t>(0xD800 + (cp >> 10));
            out += static_cast<char16_t>(0xDC00 + (cp & 0x3FF));
        } else {
            out += static_cast<char16_t>(cp > 0x10FFFF ? 0xFFFD : cp);
        }
    }
    return env->NewString(reinterpret_cast<const jchar*>(out.data()), static_cast<jsize>(out.size()));
}

std::vector<unsigned char> read_asset(AAssetManager* mgr, const std::string& name) {
    AAsset* asset = AAssetManager_open(mgr, name.c_str(), AASSET_MODE_BUFFER);
    if (asset == nullptr) {
        throw std::runtime_error("asset \"" + name + "\" is not in the APK: package a model with `edgecompress android "
                                 "package RESULT_DIR --app android_demo/` and rebuild the app");
    }
    struct Close {
        AAsset* a;
        ~Close() { AAsset_close(a); }
    } close{asset};
    const auto length = static_cast<std::size_t>(AAsset_getLength64(asset));
    std::vector<unsigned char> data(length);
    std::size_t done = 0;
    while (done < length) {
        const int n = AAsset_read(asset, data.data() + done, length - done);
        if (n <= 0) throw std::runtime_error("reading asset \"" + name + "\" failed");
        done += std::size_t(n);
    }
    return data;
}

std::string as_text(const std::vector<unsigned char>& bytes) { return std::string(bytes.begin(), bytes.end()); }

std::vector<float> from_float_array(JNIEnv* env, jfloatArray a) {
    if (a == nullptr) throw std::invalid_argument("null array");
    std::vector<float> v(std::size_t(env->GetArrayLength(a)));
    if (!v.empty()) env->GetFloatArrayRegion(a, 0, static_cast<jsize>(v.size()), v.data());
    return v;
}

jfloatArray to_float_array(JNIEnv* env, const std::vector<float>& v) {
    jfloatArray a = env->NewFloatArray(static_cast<jsize>(v.size()));
    if (a == nullptr) throw std::runtime_error("out of memory");
    env->SetFloatArrayRegion(a, 0, static_cast<jsize>(v.size()), v.data());
    return a;
}

jintArray to_int_array(JNIEnv* env, const std::vector<jint>& v) {
    jintArray a = env->NewIntArray(static_cast<jsize>(v.size()));
    if (a == nullptr) throw std::runtime_error("out of memory");
    env->SetIntArrayRegion(a, 0, static_cast<jsize>(v.size()), v.data());
    return a;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeLoad(JNIEnv* env, jobject /*self*/,
                                                                              jobject asset_manager,
                                                                              jstring model_json_asset, jint threads) {
    return guarded(env, jlong(0), [&]() -> jlong {
        AAssetManager* mgr = AAssetManager_fromJava(env, asset_manager);
        if (mgr == nullptr) throw std::invalid_argument("no AssetManager");
        auto c = std::make_unique<Classifier>();
        c->cfg = ec::parse_model_json(as_text(read_asset(mgr, from_jstring(env, model_json_asset))));
        const std::vector<unsigned char> param = read_asset(mgr, c->cfg.param);
        ec::check_file_size(c->cfg, c->cfg.param, param.size());
        std::vector<unsigned char> bin = read_asset(mgr, c->cfg.bin);
        ec::check_file_size(c->cfg, c->cfg.bin, bin.size());
        const std::vector<unsigned char> labels = read_asset(mgr, c->cfg.labels);
        ec::check_file_size(c->cfg, c->cfg.labels, labels.size());
        c->labels = ec::parse_labels(as_text(labels), c->cfg.output.classes);
        c->runner.load(c->cfg, as_text(param), std::move(bin), threads);
        __android_log_print(ANDROID_LOG_INFO, kTag, "loaded %s (%s, %dx%d, %d classes, %d threads)", c->cfg.name.c_str(),
                            c->cfg.precision.c_str(), c->cfg.input.width, c->cfg.input.height, c->cfg.output.classes,
                            c->runner.threads());
        return reinterpret_cast<jlong>(c.release());
    });
}

JNIEXPORT void JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeRelease(JNIEnv* /*env*/, jobject /*self*/,
                                                                                jlong handle) {
    delete reinterpret_cast<Classifier*>(handle);
}

JNIEXPORT jstring JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeDescribe(JNIEnv* env, jobject /*self*/,
                                                                                    jlong handle) {
    return guarded(env, jstring(nullptr), [&]() -> jstring {
        const Classifier* c = classifier(handle);
        const ec::ModelConfig& m = c->cfg;
        return to_jstring(env, m.name + " | " + m.precision + " | input " + std::to_string(m.input.width) + "x" +
                                   std::to_string(m.input.height) + " " + m.input.color + " | " +
                                   std::to_string(m.output.classes) + " classes | " +
                                   std::to_string(c->runner.threads()) + " threads");
    });
}

JNIEXPORT jintArray JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeInputInfo(JNIEnv* env, jobject /*self*/,
                                                                                       jlong handle) {
    return guarded(env, jintArray(nullptr), [&]() -> jintArray {
        const Classifier* c = classifier(handle);
        std::vector<jint> info(kInputInfoSize);
        info[kWidth] = c->cfg.input.width;
        info[kHeight] = c->cfg.input.height;
        info[kChannels] = c->cfg.input.channels;
        info[kClasses] = c->cfg.output.classes;
        info[kTopK] = c->cfg.top_k;
        info[kThreads] = c->runner.threads();
        return to_int_array(env, info);
    });
}

JNIEXPORT jobjectArray JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeLabels(JNIEnv* env, jobject /*self*/,
                                                                                       jlong handle) {
    return guarded(env, jobjectArray(nullptr), [&]() -> jobjectArray {
        const Classifier* c = classifier(handle);
        jclass string_class = env->FindClass("java/lang/String");
        if (string_class == nullptr) throw std::runtime_error("java.lang.String not found");
        jobjectArray out = env->NewObjectArray(static_cast<jsize>(c->labels.size()), string_class, nullptr);
        if (out == nullptr) throw std::runtime_error("out of memory");
        for (std::size_t i = 0; i < c->labels.size(); ++i) {
            jstring s = to_jstring(env, c->labels[i]);
            env->SetObjectArrayElement(out, static_cast<jsize>(i), s);
            env->DeleteLocalRef(s);
        }
        return out;
    });
}

JNIEXPORT jfloatArray JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeClassify(JNIEnv* env, jobject /*self*/,
                                                                                        jlong handle, jintArray pixels,
                                                                                        jint width, jint height) {
    return guarded(env, jfloatArray(nullptr), [&]() -> jfloatArray {
        Classifier* c = classifier(handle);
        if (pixels == nullptr) throw std::invalid_argument("pixels is null");
        if (width < 1 || height < 1) {
            throw std::invalid_argument("image size must be at least 1x1, got " + std::to_string(width) + "x" +
                                        std::to_string(height));
        }
        const auto count = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
        if (static_cast<std::size_t>(env->GetArrayLength(pixels)) < count) {
            throw std::invalid_argument("pixels holds fewer than width * height values");
        }
        std::vector<std::uint32_t> argb(count);  // 0xAARRGGBB, as Bitmap.getPixels returns them
        env->GetIntArrayRegion(pixels, 0, static_cast<jsize>(count), reinterpret_cast<jint*>(argb.data()));
        std::lock_guard<std::mutex> lock(c->mu);
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<float> input = ec::preprocess_argb(argb.data(), width, height, c->cfg.input);
        c->last_preprocess_ms = ms_since(t0);
        const auto t1 = std::chrono::steady_clock::now();
        const std::vector<float> logits = c->runner.run(input);
        c->last_inference_ms = ms_since(t1);
        return to_float_array(env, logits);
    });
}

JNIEXPORT jdoubleArray JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeLastTimingMs(JNIEnv* env,
                                                                                             jobject /*self*/,
                                                                                             jlong handle) {
    return guarded(env, jdoubleArray(nullptr), [&]() -> jdoubleArray {
        Classifier* c = classifier(handle);
        jdouble ms[2];
        {
            std::lock_guard<std::mutex> lock(c->mu);
            ms[0] = c->last_preprocess_ms;
            ms[1] = c->last_inference_ms;
        }
        jdoubleArray a = env->NewDoubleArray(2);
        if (a == nullptr) throw std::runtime_error("out of memory");
        env->SetDoubleArrayRegion(a, 0, 2, ms);
        return a;
    });
}

JNIEXPORT jfloatArray JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeSoftmax(JNIEnv* env, jobject /*self*/,
                                                                                       jfloatArray logits) {
    return guarded(env, jfloatArray(nullptr),
                   [&]() -> jfloatArray { return to_float_array(env, ec::softmax(from_float_array(env, logits))); });
}

JNIEXPORT jintArray JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeTopK(JNIEnv* env, jobject /*self*/,
                                                                                  jfloatArray scores, jint k) {
    return guarded(env, jintArray(nullptr), [&]() -> jintArray {
        const std::vector<int> idx = ec::top_k(from_float_array(env, scores), k);
        return to_int_array(env, std::vector<jint>(idx.begin(), idx.end()));
    });
}

JNIEXPORT jstring JNICALL Java_com_edgecompress_demo_NativeClassifier_nativeBenchmark(JNIEnv* env, jobject /*self*/,
                                                                                     jlong handle, jint runs,
                                                                                     jint warmup, jint threads,
                                                                                     jint powersave) {
    return guarded(env, jstring(nullptr), [&]() -> jstring {
        Classifier* c = classifier(handle);
        if (runs < 1) throw std::invalid_argument("runs must be >= 1, got " + std::to_string(runs));
        if (warmup < 0) throw std::invalid_argument("warm-up must be >= 0, got " + std::to_string(warmup));
        if (threads < 0) throw std::invalid_argument("threads must be >= 1 (0: the model's setting)");
        const int t = threads > 0 ? threads : c->runner.threads();
        const std::vector<float> input = ec::benchmark_input(c->cfg.input);
        std::lock_guard<std::mutex> ps_lock(g_powersave_mu);
        std::lock_guard<std::mutex> lock(c->mu);
        struct Restore {
            int previous;
            ~Restore() {
                try {
                    ec::NcnnRunner::set_powersave(previous);
                } catch (...) {
                }
            }
        } restore{ec::NcnnRunner::set_powersave(powersave)};
        const std::vector<double> ms = c->runner.time_runs(input, runs, warmup, t);
        const std::string line =
            ec::bench_line(c->cfg.name, c->cfg.precision, t, powersave, warmup, runs, ec::timing_stats(ms));
        return to_jstring(env, line);
    });
}

}  // extern "C"
