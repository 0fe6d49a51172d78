"""The Android demo's C++ core (android_demo/app/src/main/cpp/core), built and run on the host
through host_tool, against the NumPy reference and the project's CIFAR-10 loader.

The rest of the app cannot be built here (no Android SDK, NDK or ncnn C++ library), so the last
group of tests checks it statically: JNI names and types against the Kotlin declarations, asset
names, resource ids, versions, and a compile of the ncnn/JNI code against small stand-in headers
(declarations of just the ncnn/Android API it uses), with edgecompress_bench run end to end on a
stand-in ncnn.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgecompress.android import native
from edgecompress.android import preprocess as ref
from edgecompress.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, ArrayLoader
from edgecompress.errors import BackendUnavailableError

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "android_demo"
CPP = APP / "app/src/main/cpp"
KT = APP / "app/src/main/java/com/edgecompress/demo"
RES = APP / "app/src/main/res"


def _compiler() -> str | None:
    names = (os.environ.get("CXX") or "", "c++", "g++", "clang++")
    return next((shutil.which(c) for c in names if c and shutil.which(c)), None)


@pytest.fixture(scope="module")
def tool():
    if shutil.which("cmake") is None or _compiler() is None:
        pytest.skip("cmake and a C++ compiler are needed to build the Android demo's host tool")
    return native.build_host_tool()


# --------------------------------------------------------------------------------------------
# preprocessing


def test_preprocess_equals_cifar10_loader(cifar10, tool):
    """1,000 real test images: C++ (RGB bytes, RGBA bytes, ARGB ints) == the loader's tensor."""
    x, y = cifar10["test"]
    imgs, labels = x[:1000], y[:1000]
    assert imgs.shape == (1000, 32, 32, 3) and imgs.dtype == np.uint8
    loader = next(iter(ArrayLoader(imgs, labels, batch_size=1000)))[0].numpy()
    alpha = np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 1), dtype=np.uint8)
    rgba = np.concatenate([imgs, alpha], axis=-1)
    argb = ((alpha[..., 0].astype(np.int64) << 24) | (imgs[..., 0].astype(np.int64) << 16)
            | (imgs[..., 1].astype(np.int64) << 8) | imgs[..., 2]).astype(np.int64)
    outs = {"rgb": native.preprocess(imgs, exe=tool), "rgba": native.preprocess(rgba, exe=tool),
            "argb": native.preprocess_argb(argb, exe=tool), "numpy": ref.preprocess(imgs)}
    for name, out in outs.items():
        assert out.shape == loader.shape == (1000, 3, 32, 32) and out.dtype == np.float32
        diff = float(np.abs(out - loader).max())
        assert diff <= 1e-5, f"{name}: max abs diff {diff:.3g} vs the CIFAR-10 loader > 1e-5"


def test_resize_matches_numpy_reference(tool):
    """57x45 RGBA bytes and ARGB ints down to 32x32, plus up/down-scaling, BGR and equal sizes."""
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (4, 45, 57, 4), dtype=np.uint8)
    argb = rng.integers(0, 2**32, (4, 45, 57), dtype=np.uint64).astype(np.int64)
    cases = [
        (native.preprocess(rgba, exe=tool), ref.preprocess(rgba)),
        (native.preprocess_argb(argb, exe=tool), ref.preprocess(argb)),
    ]
    odd = rng.integers(0, 256, (2, 20, 17, 3), dtype=np.uint8)
    for spec in ({"width": 40, "height": 9}, {"width": 5, "height": 31, "color": "BGR"},
                 {"width": 17, "height": 20, "mean": [0.5, 0.25, 0.125], "std": [0.5, 1, 2], "scale": 1.0}):
        cases.append((native.preprocess(odd, spec, exe=tool), ref.preprocess(odd, spec)))
    for i, (c, r) in enumerate(cases):
        assert c.shape == r.shape, f"case {i}: {c.shape} vs {r.shape}"
        diff = float(np.abs(c - r).max())
        assert diff <= 1e-4, f"case {i}: C++ vs NumPy max abs diff {diff:.3g} > 1e-4"
    # equal sizes copy the pixels: the last case is then just the normalisation
    m = np.float32([0.5, 0.25, 0.125]) * np.float32(1.0)
    s = np.float32([0.5, 1, 2]) * np.float32(1.0)
    exact = (odd.astype(np.float32) - m) / s
    np.testing.assert_array_equal(cases[-1][0], exact.transpose(0, 3, 1, 2))


def test_numpy_resize_is_torch_bilinear_half_pixel():
    """The reference's sampling is torch's interpolate(bilinear, align_corners=False, no antialias)."""
    import torch
    import torch.nn.functional as F

    img = np.random.default_rng(2).integers(0, 256, (2, 45, 57, 3), dtype=np.uint8)
    for h, w in ((32, 32), (9, 40), (90, 114), (45, 20)):
        got = ref.resize_bilinear(img, h, w)
        want = F.interpolate(torch.from_numpy(img).permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear",
                             align_corners=False, antialias=False).permute(0, 2, 3, 1).numpy()
        diff = float(np.abs(got - want).max())
        assert diff <= 1e-3, f"{h}x{w}: NumPy reference vs torch max abs diff {diff:.3g} (in 0..255 units)"


# --------------------------------------------------------------------------------------------
# top-k and softmax


def _numpy_top5(logits: np.ndarray) -> np.ndarray:
    return np.argsort(-logits, axis=-1, kind="stable")[:, :5]


def test_top5_equals_numpy_on_resnet20_logits(cifar10, tool):
    """Top-5 of the shipped ResNet-20 on 1,000 C++-preprocessed test images: C++ == NumPy."""
    import torch

    from edgecompress.models import load_pretrained

    x, y = cifar10["test"]
    inp = native.preprocess(x[:1000], exe=tool)
    with torch.no_grad():
        logits = load_pretrained("resnet20")(torch.from_numpy(inp)).numpy()
    top = native.top_k(logits, 5, exe=tool)
    agree = float((top == _numpy_top5(logits)).all(axis=1).mean())
    assert agree == 1.0, f"C++ top-5 equals NumPy's on {agree:.1%} of 1000 images"
    acc = float((top[:, 0] == y[:1000]).mean())
    assert acc > 0.85, f"ResNet-20 top-1 on C++-preprocessed images is {acc:.1%}"


def test_top_k_ties_nan_and_k(tool):
    """Ties go to the lower index, NaN last, k clamped to the number of classes."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((1000, 10)).astype(np.float32)
    logits[:400] = np.round(logits[:400] * 2) / 2  # many exact ties
    logits[400:450] = 0.5  # all equal
    logits[450:500, 1::2] = logits[450:500, ::2]  # pairs
    logits[500:510, 3] = np.nan
    logits[510:520, ::3] = np.inf
    logits[520:530] = -np.inf
    logits[530:540, ::2] = -0.0
    logits[530:540, 1::2] = 0.0
    ties = sum(len(np.unique(r)) < 10 for r in logits)
    assert ties > 500, f"only {ties} rows with ties"
    top5 = native.top_k(logits, 5, exe=tool)
    agree = float((top5 == _numpy_top5(logits)).all(axis=1).mean())
    assert agree == 1.0, f"C++ top-5 equals NumPy's on {agree:.1%} of rows with ties"
    np.testing.assert_array_equal(ref.top_k(logits, 5), _numpy_top5(logits))
    for k in (1, 10, 12):
        np.testing.assert_array_equal(native.top_k(logits[:50], k, exe=tool), ref.top_k(logits[:50], k)[:, :10])
    probs = native.softmax(logits[540:], exe=tool)
    diff = float(np.abs(probs - ref.softmax(logits[540:])).max())
    assert diff <= 1e-6, f"softmax max abs diff {diff:.3g}"


# --------------------------------------------------------------------------------------------
# model.json


def _model_json() -> dict:
    """A model.json as `edgecompress android package` writes it, plus keys the app must ignore."""
    return {
        "format": 1, "name": "résnet 20 \"q\" \\ \u2603", "precision": "int8",
        "param": "model.param", "bin": "model.bin", "labels": "labels.txt",
        "input": {"blob": "in0", "width": 32, "height": 32, "channels": 3, "color": "RGB",
                  "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD), "scale": 255.0, "layout": "CHW"},
        "output": {"blob": "out0", "classes": 10, "kind": "logits"},
        "threads": 4, "top_k": 5,
        "files": {"model.param": {"bytes": 1234, "sha256": "ab" * 32}, "model.bin": {"bytes": 567, "sha256": "cd" * 32},
                  "labels.txt": {"bytes": 89, "sha256": "ef" * 32}},
        "edgecompress": "0.1.0", "future": [1, 2.5e-3, None, True, {"nested": ["x"]}],
    }


def test_model_json_round_trip(tool, tmp_path):
    d = _model_json()
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\r\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                    "ship", "trück 🚢"]).encode() + b"\r\n\n")
    for indent, ascii_only in ((1, True), (None, False)):
        f = tmp_path / "model.json"
        f.write_text(json.dumps(d, indent=indent, ensure_ascii=ascii_only), encoding="utf-8")
        got = native.parse_model_json(f, labels=labels, exe=tool)
        for k in ("format", "name", "precision", "param", "bin", "labels", "output", "threads", "top_k", "files",
                  "edgecompress"):
            want = {kk: vv for kk, vv in d[k].items() if kk != "kind"} if k == "output" else d[k]
            assert got[k] == want, k
        gi, di = got["input"], d["input"]
        assert {k: gi[k] for k in ("blob", "width", "height", "channels", "color", "scale")} == \
            {k: di[k] for k in ("blob", "width", "height", "channels", "color", "scale")}
        assert gi["mean"] == [float(np.float32(m)) for m in di["mean"]]  # float32, as the loader's tensor
        assert gi["std"] == [float(np.float32(s)) for s in di["std"]]
        assert got["label_names"][-1] == "trück 🚢" and len(got["label_names"]) == 10


def _drop(path: str):
    def f(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        del d[last]
    return f


def _set(path: str, value):
    def f(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value
    return f


@pytest.mark.parametrize("change, message", [
    (_drop("input.mean"), 'missing key "input.mean"'),
    (_drop("output"), 'missing key "output"'),
    (_drop("param"), 'missing key "param"'),
    (_drop("output.classes"), 'missing key "output.classes"'),
    (_set("input.width", "32"), '"input.width" must be an integer, got a string'),
    (_set("input.width", 0), '"input.width" must be an integer >= 1, got 0'),
    (_set("input.height", 31.5), '"input.height" must be an integer >= 1, got 31.5'),
    (_set("format", 2), '"format" is 2; this app reads format 1'),
    (_set("input.mean", [0.5, 0.5]), '"input.mean" must have 3 entries'),
    (_set("input.std", [0.2, 0, 0.2]), '"input.std[1]" must be a positive number'),
    (_set("input.color", "RGBA"), '"input.color" must be "RGB" or "BGR"'),
    (_set("input.channels", 1), '"input.channels" is 1'),
    (_set("bin", "../outside.bin"), '"bin" must be a relative file name'),
    (_set("labels", "/etc/passwd"), '"labels" must be a relative file name'),
    (lambda d: d["files"]["model.bin"].update(bytes=-1), '"files.model.bin.bytes" must be a non-negative integer'),
    (_set("input", [1, 2]), '"input" must be an object, got an array'),
])
def test_model_json_errors_name_the_key(tool, change, message):
    d = _model_json()
    change(d)
    with pytest.raises(native.HostToolError) as e:
        native.parse_model_json(d, exe=tool)
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ('{"format": 1,}', "invalid JSON at byte 13: expected a string key"),
    ('{"format": 1', "invalid JSON at byte 12: unterminated object"),
    ('{"a": "\\x"}', "bad escape"),
    ('{"a": 01}', "expected ',' or '}'"),
    ('{"a": 1} x', "unexpected text after the JSON value"),
    ('[1, 2]', "the document must be an object"),
    ('', "unexpected end of input"),
])
def test_model_json_syntax_errors(tool, tmp_path, text, message):
    f = tmp_path / "model.json"
    f.write_text(text)
    with pytest.raises(native.HostToolError, match=re.escape(message)):
        native.parse_model_json(f, exe=tool)


def test_labels_count_must_match_classes(tool, tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\n".join(f"c{i}" for i in range(9)) + "\n")
    with pytest.raises(native.HostToolError, match="labels file has 9 lines but model.json says output.classes = 10"):
        native.parse_model_json(_model_json(), labels=f, exe=tool)


# --------------------------------------------------------------------------------------------
# timing statistics and the EC_BENCH line

_LINE = re.compile(r"EC_BENCH model=(\S+) precision=(\S+) threads=(\d+) powersave=([012]) warmup=(\d+) runs=(\d+) "
                   r"min_ms=(\d+\.\d{4}) median_ms=(\d+\.\d{4}) max_ms=(\d+\.\d{4}) mean_ms=(\d+\.\d{4}) "
                   r"p90_ms=(\d+\.\d{4})")


@pytest.mark.parametrize("n", [1, 2, 4, 7, 10, 101, 1000])
def test_bench_line_matches_numpy(tool, n):
    rng = np.random.default_rng(n)
    s = rng.lognormal(1.0, 0.5, n) if n != 4 else np.array([4.0, 1.0, 3.0, 2.0])
    line = native.bench_line(s, model="resnet 20=x", precision="int8", threads=4, powersave=2, warmup=10, exe=tool)
    m = _LINE.fullmatch(line)
    assert m, line
    assert m.groups()[:6] == ("resnet_20_x", "int8", "4", "2", "10", str(n))
    got = dict(zip(("min", "median", "max", "mean", "p90"), m.groups()[6:]))
    want = {"min": s.min(), "median": np.median(s), "max": s.max(), "mean": s.mean(), "p90": np.percentile(s, 90)}
    for k in ("min", "median", "max", "p90"):  # same arithmetic as numpy: the same digits
        assert got[k] == f"{want[k]:.4f}", f"{k}: {got[k]} vs numpy {want[k]:.6f}"
    assert abs(float(got["mean"]) - want["mean"]) <= 5.1e-5, f"mean {got['mean']} vs numpy {want['mean']:.6f}"
    if n == 4:
        assert (got["median"], got["p90"]) == ("2.5000", "3.7000")


# --------------------------------------------------------------------------------------------
# building


def test_build_errors_name_the_fix(monkeypatch):
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="cmake not found"):
        native.build_host_tool()
    monkeypatch.setattr(native.shutil, "which", lambda name: "/usr/bin/cmake" if name == "cmake" else None)
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(BackendUnavailableError, match="no C\\+\\+ compiler found"):
        native.build_host_tool()


def test_build_key_follows_the_sources(tmp_path):
    src = tmp_path / "cpp"
    shutil.copytree(CPP, src)
    before = native.build_key(src, "/usr/bin/c++")
    assert native.build_key(src, "/usr/bin/c++") == before
    with open(src / "core/ec_core.cpp", "a") as f:
        f.write("\n// changed\n")
    assert native.build_key(src, "/usr/bin/c++") != before


# --------------------------------------------------------------------------------------------
# the Android project, checked statically

_KOTLIN_TO_JNI = {"Long": "jlong", "Int": "jint", "Float": "jfloat", "Double": "jdouble", "Boolean": "jboolean",
                  "String": "jstring", "IntArray": "jintArray", "FloatArray": "jfloatArray",
                  "DoubleArray": "jdoubleArray", "Array<String>": "jobjectArray", "AssetManager": "jobject",
                  "Unit": "void"}


def _kotlin_externals() -> dict[str, list[str]]:
    text = (KT / "NativeClassifier.kt").read_text()
    out = {}
    for name, params, ret in re.findall(r"external fun (\w+)\(([^)]*)\)(?:\s*:\s*([\w<>]+))?", text):
        types = [p.split(":")[1].strip() for p in params.split(",") if p.strip()]
        out[name] = [_KOTLIN_TO_JNI[ret or "Unit"], *(_KOTLIN_TO_JNI[t] for t in types)]
    return out


def _jni_functions() -> dict[str, list[str]]:
    text = (CPP / "jni_bridge.cpp").read_text()
    out = {}
    for ret, name, params in re.findall(r"JNIEXPORT (\w+) JNICALL Java_com_edgecompress_demo_NativeClassifier_(\w+)"
                                        r"\(([^)]*)\)", text):
        types = [re.sub(r"/\*.*?\*/", "", p).split()[0] for p in params.split(",")]
        assert types[:2] == ["JNIEnv*", "jobject"], (name, types)
        out[name] = [ret, *types[2:]]
    return out


def test_jni_functions_match_the_kotlin_externals():
    kotlin, jni = _kotlin_externals(), _jni_functions()
    assert len(kotlin) >= 6 and set(kotlin) == set(jni), (sorted(kotlin), sorted(jni))
    for name in kotlin:
        assert kotlin[name] == jni[name], f"{name}: Kotlin {kotlin[name]} vs JNI {jni[name]}"
    others = [p.name for p in KT.glob("*.kt") if p.name != "NativeClassifier.kt" and "external fun" in p.read_text()]
    assert not others, f"external declarations outside NativeClassifier.kt: {others}"
    assert 'System.loadLibrary("edgecompress_demo")' in (KT / "NativeClassifier.kt").read_text()
    assert "add_library(edgecompress_demo SHARED" in (CPP / "CMakeLists.txt").read_text()
    assert "add_executable(edgecompress_bench" in (CPP / "CMakeLists.txt").read_text()


def test_asset_names_come_from_model_json():
    from edgecompress.android.package import MODEL_JSON

    kt = (KT / "NativeClassifier.kt").read_text()
    assert f'const val MODEL_JSON = "{MODEL_JSON}"' in kt  # the packager's name for it
    literal = re.compile(r'"[^"\n]*\.(?:json|param|bin|txt)"')
    sources = [*KT.glob("*.kt"), *CPP.glob("*.cpp"), *CPP.glob("*.h"), *CPP.glob("core/*")]
    found = {p.name: literal.findall(p.read_text()) for p in sources}
    found = {k: v for k, v in found.items() if v}
    assert found == {"NativeClassifier.kt": ['"model.json"'], "bench_main.cpp": ['"model.json"']}, found
    assert "Assets.MODEL_JSON" in kt
    assets = APP / "app/src/main/assets"
    assert (assets / ".gitignore").read_text() == "*\n!.gitignore\n"


def test_only_ncnn_runner_includes_ncnn():
    inc = re.compile(r'#include\s*[<"](?:ncnn/)?(?:net|cpu|mat|datareader|option|layer)\.h[">]')
    users = sorted(p.name for p in CPP.rglob("*.[ch]*") if inc.search(p.read_text()))
    assert users == ["ncnn_runner.cpp"], users
    core = (CPP / "core/ec_core.cpp").read_text() + (CPP / "core/ec_core.h").read_text()
    includes = re.findall(r'#include\s*([<"][^>"]+[>"])', core)
    assert all(i == '"ec_core.h"' or re.fullmatch(r"<[a-z_]+>", i) for i in includes), includes  # std only


def test_gradle_project_versions():
    app = (APP / "app/build.gradle.kts").read_text()
    root = (APP / "build.gradle.kts").read_text()
    wrapper = (APP / "gradle/wrapper/gradle-wrapper.properties").read_text()
    props = (APP / "gradle.properties").read_text()
    assert re.search(r'id\("com\.android\.application"\) version "8\.7\.\d+"', root)
    assert re.search(r'id\("org\.jetbrains\.kotlin\.android"\) version "2\.0\.\d+"', root)
    assert "distributionUrl=https\\://services.gradle.org/distributions/gradle-8.9-bin.zip" in wrapper
    for needle in ("compileSdk = 35", "minSdk = 24", "targetSdk = 35", 'ndkVersion = "27.2.12479018"',
                   'path = file("src/main/cpp/CMakeLists.txt")', 'version = "3.22.1"', '"arm64-v8a"',
                   '"armeabi-v7a"', '"-DANDROID_STL=c++_shared"', '"-Dncnn_DIR=$ncnnCmakeDir"',
                   'gradleProperty("ncnnDir")'):
        assert needle in app, needle
    assert "ncnnDir=../ncnn-android/${ANDROID_ABI}/lib/cmake/ncnn" in props
    assert not list(APP.rglob("gradle-wrapper.jar"))


def test_android_resources_are_consistent():
    android = "{http://schemas.android.com/apk/res/android}"
    for f in [APP / "app/src/main/AndroidManifest.xml", *RES.rglob("*.xml")]:
        ET.parse(f)  # well-formed
    manifest = ET.parse(APP / "app/src/main/AndroidManifest.xml").getroot()
    activities = {a.get(f"{android}name") for a in manifest.iter("activity")}
    assert activities == {".MainActivity", ".BenchmarkActivity"}
    for a in activities:
        assert (KT / f"{a[1:]}.kt").is_file(), a
    ids = set()
    for f in (RES / "layout").glob("*.xml"):
        ids |= set(re.findall(r'android:id="@\+id/(\w+)"', f.read_text()))
    strings = {s.get("name") for s in ET.parse(RES / "values/strings.xml").getroot().iter("string")}
    layouts = {f.stem for f in (RES / "layout").glob("*.xml")}
    styles = {s.get("name") for s in ET.parse(RES / "values/themes.xml").getroot().iter("style")}
    kotlin = "".join(p.read_text() for p in KT.glob("*.kt"))
    xml = "".join(p.read_text() for p in [APP / "app/src/main/AndroidManifest.xml", *RES.rglob("*.xml")])
    for kind, known in (("id", ids), ("string", strings), ("layout", layouts)):
        used = set(re.findall(rf"R\.{kind}\.(\w+)", kotlin))
        assert used and used <= known, f"R.{kind} missing: {sorted(used - known)}"
    assert set(re.findall(r"@string/(\w+)", xml)) <= strings
    assert set(re.findall(r"@style/([\w.]+)", xml)) <= styles


# Stand-in declarations of the ncnn and Android NDK APIs the app uses (signatures as in ncnn's
# net.h / datareader.h / cpu.h and the NDK's asset_manager*.h / log.h), plus a toy ncnn
# implementation: enough to compile the sources and to run edgecompress_bench on the host.
_STUBS = {
    "net.h": """#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>
namespace ncnn {
struct Option { bool lightmode = true; int num_threads = 1; bool use_vulkan_compute = false, use_fp16_storage = true,
                use_fp16_packed = true, use_fp16_arithmetic = true, use_bf16_storage = false; };
class Mat {
public:
    Mat() {}
    Mat(int w, int h, int c, std::size_t elemsize = 4u, void* allocator = nullptr);
    bool empty() const { return data == nullptr || w * h * d * c == 0; }
    Mat channel(int q);
    const Mat channel(int q) const;
    template <typename T> operator T*() { return (T*)data; }
    template <typename T> operator const T*() const { return (const T*)data; }
    void* data = nullptr; std::size_t elemsize = 4; int elempack = 1, dims = 0, w = 0, h = 0, d = 1, c = 0;
    std::size_t cstep = 0; std::shared_ptr<std::vector<float>> store;
};
class DataReader { public: virtual ~DataReader() {} };
class Net;
class Extractor { public:
    void set_light_mode(bool) {} void set_num_threads(int) {}
    int input(const char* name, const Mat& m); int extract(const char* name, Mat& m, int type = 0);
    const Net* net = nullptr; Mat in; };
class Net { public: Option opt; int load_param_mem(const char* mem); int load_model(const DataReader& dr); void clear();
    Extractor create_extractor() const; int classes = 0; };
}
""",
    "datareader.h": """#pragma once
#include "net.h"
namespace ncnn { class DataReaderFromMemory : public DataReader { public:
    explicit DataReaderFromMemory(const unsigned char*& mem) : p(mem) {} const unsigned char* p; }; }
""",
    "cpu.h": """#pragma once
namespace ncnn { int get_cpu_powersave(); int set_cpu_powersave(int powersave); }
""",
    "android/asset_manager.h": """#pragma once
#include <sys/types.h>
#include <cstddef>
extern "C" {
struct AAssetManager; struct AAsset;
enum { AASSET_MODE_UNKNOWN = 0, AASSET_MODE_RANDOM = 1, AASSET_MODE_STREAMING = 2, AASSET_MODE_BUFFER = 3 };
AAsset* AAssetManager_open(AAssetManager* mgr, const char* filename, int mode);
int AAsset_read(AAsset* asset, void* buf, std::size_t count);
off64_t AAsset_getLength64(AAsset* asset);
void AAsset_close(AAsset* asset);
}
""",
    "android/asset_manager_jni.h": """#pragma once
#include <jni.h>
#include "asset_manager.h"
extern "C" AAssetManager* AAssetManager_fromJava(JNIEnv* env, jobject assetManager);
""",
    "android/log.h": """#pragma once
extern "C" {
enum { ANDROID_LOG_INFO = 4, ANDROID_LOG_ERROR = 6 };
int __android_log_print(int prio, const char* tag, const char* fmt, ...);
}
""",
    # toy ncnn: the param text is "7767517", a newline and the class count; input blob in0, output blob out0; output[i]
    # = mean of input channel i % c. Channels are padded to 16 bytes like ncnn's cstep, and extract
    # fails (-2) unless every channel was written exactly up to w*h, as ncnn_runner must copy them.
    "fake_ncnn.cpp": """#include "net.h"
#include "cpu.h"
#include "datareader.h"
#include <cstdlib>
#include <cstring>
namespace ncnn {
static int g_powersave = 0;
int get_cpu_powersave() { return g_powersave; }
int set_cpu_powersave(int p) { if (p < 0 || p > 2) return -1; g_powersave = p; return 0; }
Mat::Mat(int w_, int h_, int c_, std::size_t, void*) : elemsize(4), elempack(1), dims(3), w(w_), h(h_), d(1), c(c_) {
    cstep = (std::size_t(w) * h * 4 + 15) / 16 * 16 / 4;
    store = std::make_shared<std::vector<float>>(cstep * c, -1e30f);
    data = store->data();
}
Mat Mat::channel(int q) { Mat m = *this; m.data = (float*)data + cstep * q; m.c = 1; return m; }
const Mat Mat::channel(int q) const { Mat m = *this; m.data = (float*)data + cstep * q; m.c = 1; return m; }
int Net::load_param_mem(const char* mem) {
    if (std::strncmp(mem, "7767517\\n", 8) != 0) return -1;
    classes = std::atoi(mem + 8); return classes > 0 ? 0 : -1; }
int Net::load_model(const DataReader&) { return classes > 0 ? 0 : -1; }
void Net::clear() { classes = 0; }
Extractor Net::create_extractor() const { Extractor e; e.net = this; return e; }
int Extractor::input(const char* name, const Mat& m) { if (std::string(name) != "in0") return -1; in = m; return 0; }
int Extractor::extract(const char* name, Mat& out, int) {
    if (std::string(name) != "out0" || in.empty()) return -1;
    for (int q = 0; q < in.c; ++q) {
        const float* p = in.channel(q);
        for (std::size_t k = 0; k < in.cstep; ++k)
            if ((p[k] == -1e30f) != (k >= std::size_t(in.w) * in.h)) return -2;
    }
    out = Mat(net->classes, 1, 1);
    for (int i = 0; i < net->classes; ++i) {
        const float* p = in.channel(i % in.c); double s = 0;
        for (int k = 0; k < in.w * in.h; ++k) s += p[k];
        ((float*)out.data)[i] = float(s / (in.w * in.h));
    }
    return 0;
}
}
""",
}


def _jni_include() -> Path | None:
    homes = [os.environ.get("JAVA_HOME", ""), *map(str, Path("/usr/lib/jvm").glob("*"))]
    return next((Path(h) / "include" for h in homes if h and (Path(h) / "include/jni.h").is_file()), None)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("stubs")
    for name, text in _STUBS.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return cxx, d


def _cxx(cxx, *args):
    p = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", *map(str, args)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-3000:]


def test_native_sources_compile_against_stand_in_headers(stubs):
    cxx, d = stubs
    for src in ("ncnn_runner.cpp", "bench_main.cpp"):
        _cxx(cxx, "-fsyntax-only", f"-I{d}", f"-I{CPP}", CPP / src)
    jni = _jni_include()
    if jni is None:
        pytest.skip("no JDK jni.h to compile jni_bridge.cpp against")
    _cxx(cxx, "-fsyntax-only", f"-I{d}", f"-I{jni}", f"-I{jni / sys.platform}", f"-I{CPP}", CPP / "jni_bridge.cpp")


def _configure(cxx, build: Path, ncnn_dir: str):
    cmake = shutil.which("cmake")
    return subprocess.run([cmake, "-S", str(CPP), "-B", str(build), "-DANDROID_ABI=arm64-v8a", "-DEC_BUILD_JNI=OFF",
                           f"-Dncnn_DIR={ncnn_dir}", "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_COMPILER={cxx}"],
                          capture_output=True, text=True)


def test_cmake_names_the_missing_ncnn_prebuilt(stubs, tmp_path, tool):
    p = _configure(stubs[0], tmp_path / "build", str(tmp_path / "nowhere/${ANDROID_ABI}/lib/cmake/ncnn"))
    assert p.returncode != 0
    out = " ".join((p.stdout + p.stderr).split())
    assert f"ncnnConfig.cmake not found in {tmp_path}/nowhere/arm64-v8a/lib/cmake/ncnn" in out, out
    assert "ncnn-YYYYMMDD-android.zip" in out and "ncnnDir" in out


def test_edgecompress_bench_runs_on_a_stand_in_ncnn(stubs, tmp_path, tool):
    """app/src/main/cpp/CMakeLists.txt as Gradle drives it (ncnn_DIR with a literal ${ANDROID_ABI}),
    on the host with the toy ncnn as the ncnn package; then the binary's command-line contract."""
    cxx, d = stubs
    pkg = d / "prefix/arm64-v8a/lib/cmake/ncnn"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "ncnnConfig.cmake").write_text(f"add_library(ncnn STATIC {d.as_posix()}/fake_ncnn.cpp)\n"
                                          f"target_include_directories(ncnn PUBLIC {d.as_posix()})\n")
    build = tmp_path / "build"
    p = _configure(cxx, build, f"{d.as_posix()}/prefix/${{ANDROID_ABI}}/lib/cmake/ncnn")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"ncnn_DIR:PATH={pkg.as_posix()}\n" in (build / "CMakeCache.txt").read_text()
    p = subprocess.run([shutil.which("cmake"), "--build", str(build), "--target", "edgecompress_bench", "-j", "1"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    exe = build / "edgecompress_bench"
    model = tmp_path / "model"
    model.mkdir()
    files = {"net.param": b"7767517\n10\n", "net.bin": b"\0" * 64}
    for k, v in files.items():
        (model / k).write_bytes(v)
    mj = _model_json()
    mj.update(name="tiny resnet", param="net.param", bin="net.bin",
              files={k: {"bytes": len(v), "sha256": ""} for k, v in files.items()})
    mj["input"].update(width=15, height=7)  # 15*7 floats per channel: not a multiple of 16 bytes
    (model / "model.json").write_text(json.dumps(mj))

    def bench(*args):
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)

    p = bench("--dir", model, "--threads", 2, "--powersave", 1, "--warmup", 1, "--runs", 7)
    assert p.returncode == 0, p.stderr
    m = _LINE.fullmatch(p.stdout.strip())
    assert m and m.groups()[:6] == ("tiny_resnet", "int8", "2", "1", "1", "7"), p.stdout
    p = bench("--dir", model)  # defaults: model.json's threads, 10 warm-up, 50 runs
    assert _LINE.fullmatch(p.stdout.strip()).groups()[2:6] == ("4", "0", "10", "50")
    for args, rc, err in [
        (("--dir", tmp_path / "nowhere"), 1, "cannot open"),
        (("--dir", model, "--runs", 0), 2, "--runs must be an integer >= 1"),
        (("--dir", model, "--powersave", 3), 2, "--powersave must be 0, 1 or 2"),
        (("--dir", model, "--bogus", 1), 2, "unknown argument --bogus"),
        ((), 2, "--dir is required"),
    ]:
        p = bench(*args)
        assert (p.returncode, p.stdout) == (rc, "") and err in p.stderr, (args, p.returncode, p.stderr)
    (model / "net.bin").write_bytes(b"\0" * 60)
    p = bench("--dir", model)
    assert p.returncode == 1 and "net.bin is 60 bytes but model.json says 64" in p.stderr
    (model / "net.bin").write_bytes(b"\0" * 64)
    (model / "net.param").write_bytes(b"7767517\n9\n")
    mj["files"]["net.param"]["bytes"] = 10
    (model / "model.json").write_text(json.dumps(mj))
    p = bench("--dir", model)
    assert p.returncode == 1 and "has 9 values but model.json says output.classes = 10" in p.stderr
    x = native.benchmark_input(mj, exe=tool)  # what was timed: a fixed, non-constant image
    assert x.shape == (3, 7, 15) and np.isfinite(x).all() and x.std() > 0.1
    np.testing.assert_array_equal(x, native.benchmark_input(mj, exe=tool))
