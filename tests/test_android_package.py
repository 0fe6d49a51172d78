"""edgecompress android package + bench --device android against a simulated adb."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import edgecompress as ec
from edgecompress.android import PACKAGED, package
from edgecompress.android.adb import Adb, bench_android, parse_bench_line
from edgecompress.bench import bench, discover
from edgecompress.cli import main
from edgecompress.errors import (AdbError, ArtifactNotFoundError, BackendUnavailableError, ConfigError, EdgeCompressError,
                                 DeviceDisconnectedError, DeviceUnauthorizedError, DeviceUnavailableError,
                                 PackagingError, UnsafePathError)
from edgecompress.models import create_model
from edgecompress.testing import randomize_bn_, synthetic_loaders
from edgecompress.testing.fake_adb import calls, device_files, make_fake_adb

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A compressed (pruned + int8) tiny ResNet for ncnn, as compress() writes it."""
    out = tmp_path_factory.mktemp("result") / "tiny_ncnn_int8"
    train, val = synthetic_loaders(n_train=128, n_val=64, batch_size=32)
    m = randomize_bn_(create_model("tiny_resnet"), seed=0)
    ec.compress(m, "ncnn-int8", train_data=train, val_data=val, prune=ec.PruneConfig(ratio=0.5), distill=False,
                quantize=ec.QuantConfig(calibration="minmax", calib_batches=2, stability_splits=0),
                bench=False, output_dir=out, validate_samples=32)
    return out


@pytest.fixture()
def app(tmp_path):
    """A copy of the repository's android_demo (the packager writes into its assets)."""
    dst = tmp_path / "android_demo"
    shutil.copytree(REPO / "android_demo", dst, ignore=shutil.ignore_patterns("build", ".gradle"))
    return dst


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if not p.name.startswith(".")}


def test_package_writes_exactly_the_assets_and_is_idempotent(result, app):
    meta = package(result, app)
    assets = app / "app/src/main/assets"
    assert sorted(p.name for p in assets.iterdir() if not p.name.startswith(".")) == sorted(PACKAGED)
    mj = json.loads((assets / "model.json").read_text())
    assert mj["precision"] == "int8" and mj["output"]["classes"] == 10 and mj["input"]["blob"] == "in0"
    assert (mj["input"]["width"], mj["input"]["height"]) == (32, 32) and mj["output"]["blob"] == "out0"
    param = next(result.glob("*.int8.ncnn.param"))
    assert (assets / "model.param").read_bytes() == param.read_bytes()
    assert (assets / "model.bin").read_bytes() == param.with_suffix(".bin").read_bytes()
    for name, f in mj["files"].items():  # sizes and hashes in model.json describe the files written
        data = (assets / name).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert len((assets / "labels.txt").read_text().split()) == 10 and meta["name"] == "tiny_ncnn_int8"
    first = _digest(assets)
    package(result, app)
    assert _digest(assets) == first  # byte-identical on a re-run
    assert not [p for p in assets.iterdir() if p.name.startswith(".model")]  # no temp files left
    assert all((assets / n).stat().st_mode & 0o044 == 0o044 for n in PACKAGED)  # readable as a normal file is


def test_package_fp32_replaces_and_removes_stale_files(result, app):
    package(result, app, precision="int8")
    assets = app / "app/src/main/assets"
    mj = json.loads((assets / "model.json").read_text())
    mj["files"]["old_model.bin"] = {"bytes": 1, "sha256": "x"}  # as if an earlier packaging wrote it
    (assets / "model.json").write_text(json.dumps(mj))
    (assets / "old_model.bin").write_bytes(b"x")
    package(result, app, precision="fp32")
    assert json.loads((assets / "model.json").read_text())["precision"] == "fp32"
    assert not (assets / "old_model.bin").exists()


def test_package_refuses_escapes_and_bad_input(result, app, tmp_path):
    assets = app / "app/src/main/assets"
    shutil.rmtree(assets)
    outside = tmp_path / "outside"
    outside.mkdir()
    assets.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside the app folder"):
        package(result, app)
    assert list(outside.iterdir()) == []  # nothing written anywhere
    assets.unlink()
    with pytest.raises(PackagingError, match="not the android_demo app"):
        package(result, tmp_path)
    with pytest.raises(ArtifactNotFoundError, match="no fp16 ncnn model"):
        package(result, app, precision="fp16")
    with pytest.raises(PackagingError, match="2 labels for a model with 10 outputs"):
        package(result, app, labels=["cat", "dog"])
    with pytest.raises(ArtifactNotFoundError, match="is not a folder"):
        package(tmp_path / "nope", app)
    assert not assets.exists() or not any(assets.iterdir())


def test_package_cli(result, app, capsys):
    assert main(["android", "package", str(result), "--app", str(app)]) == 0
    out = capsys.readouterr().out
    assert "packaged tiny_ncnn_int8 (int8, 10 classes, input 32x32)" in out and "gradlew installDebug" in out
    assert main(["android", "package", str(result), "--app", str(app), "--precision", "fp64"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_parse_bench_line():
    r = parse_bench_line("noise\nEC_BENCH model=m precision=int8 threads=4 powersave=0 warmup=10 runs=50 "
                         "min_ms=1.0000 median_ms=1.5000 max_ms=3.0000 mean_ms=1.6000 p90_ms=2.0000\n")
    assert r["threads"] == 4 and r["median_ms"] == 1.5 and r["precision"] == "int8"
    with pytest.raises(AdbError, match="no EC_BENCH line"):
        parse_bench_line("Segmentation fault")
    with pytest.raises(AdbError, match="lacks"):
        parse_bench_line("EC_BENCH model=m threads=1")


@pytest.fixture()
def binary(tmp_path):
    b = tmp_path / "edgecompress_bench"
    b.write_bytes(b"\x7fELF-placeholder: the simulated device runs the pushed model with the host's ncnn")
    return b


def test_adb_bench_pushes_runs_parses_and_cleans_up(result, tmp_path, binary):
    state = tmp_path / "device"
    adb = make_fake_adb(state)
    arts = discover([result], runtimes=("ncnn",))
    rows = bench_android(arts, threads=(1, 2), warmup=2, iters=5, adb=str(adb), binary=binary)
    assert len(rows) == 2 * len(arts) and {r["threads"] for r in rows} == {1, 2}
    assert all(r["device"] == "android edgecompress-sim Simulated Phone" and r["runtime"] == "ncnn" for r in rows)
    assert all(0 < r["ms_min"] <= r["ms_median"] <= r["ms_p90"] and r["iters"] == 5 for r in rows)
    assert all(r["macs"] and r["params"] for r in rows)
    log = [" ".join(c) for c in calls(state)]
    pushes = [c for c in log if c.startswith("-s SIM123 push ")]
    assert {Path(c.split()[-1]).name for c in pushes} == {"model.param", "model.bin", "labels.txt", "model.json",
                                                          "edgecompress_bench"}
    assert any("./edgecompress_bench --dir /data/local/tmp/edgecompress-" in c and "--threads 2" in c for c in log)
    assert any(c.startswith("-s SIM123 shell rm -rf /data/local/tmp/edgecompress-") for c in log)
    assert device_files(state) == []  # cleaned up


def test_bench_cli_device_android(result, tmp_path, binary, capsys):
    adb = make_fake_adb(tmp_path / "device")
    assert main(["bench", str(result), "--device", "android", "--runtime", "ncnn", "--adb", str(adb), "--binary",
                 str(binary), "--threads", "1", "--warmup", "1", "--iters", "3", "--out", str(tmp_path / "o")]) == 0
    assert "android" in (tmp_path / "o" / "bench.csv").read_text()


@pytest.mark.parametrize("devices,disconnect_after,error,match", [
    ([], None, DeviceUnavailableError, "no Android device"),
    ([("SIM123", "unauthorized")], None, DeviceUnauthorizedError, "Allow USB debugging"),
    ([("SIM123", "offline")], None, DeviceDisconnectedError, "offline"),
    ([("A", "device"), ("B", "device")], None, ConfigError, "pick one with --serial"),
    ([("SIM123", "device")], 4, DeviceDisconnectedError, "went away"),  # unplugged while pushing
])
def test_adb_failures_are_typed_and_leave_nothing(result, tmp_path, binary, devices, disconnect_after, error, match):
    state = tmp_path / "device"
    adb = make_fake_adb(state, devices=devices, disconnect_after=disconnect_after)
    arts = discover([result], runtimes=("ncnn",))[:1]
    with pytest.raises(error, match=match):
        bench_android(arts, threads=(1,), warmup=1, iters=2, adb=str(adb), binary=binary)
    if disconnect_after is not None:  # the files pushed before the unplug stay on the (gone) device
        assert any("mkdir -p" in " ".join(c) for c in calls(state))


def test_adb_serial_and_missing_tools(tmp_path, binary, result):
    adb = make_fake_adb(tmp_path / "device", devices=[("A", "device"), ("B", "device")])
    assert Adb("B", str(adb)).check() == "B"
    with pytest.raises(DeviceUnavailableError, match="'C'"):
        Adb("C", str(adb)).check()
    with pytest.raises(BackendUnavailableError, match="platform-tools"):
        Adb(adb=str(tmp_path / "no-adb"))
    with pytest.raises(ArtifactNotFoundError, match="--binary"):
        bench([result], runtimes=("ncnn",), device="android",
              android={"adb": str(adb), "serial": "A", "binary": str(tmp_path / "missing")}, iters=2)
    with pytest.raises(ConfigError, match="cannot run on device 'android'"):
        bench([result], device="android", iters=2)  # the result's model.pt2 is a torch artifact


def test_the_app_core_reads_what_packaging_writes(result, app):
    """The C++ core (host build of the app's own source) parses the packaged model.json: the files it
    will open exist in the assets with the sizes it checks, and the input spec is the exporter's."""
    native = pytest.importorskip("edgecompress.android.native")
    try:
        exe = native.build_host_tool()
    except EdgeCompressError as e:  # no compiler / cmake on this machine
        pytest.skip(str(e))
    package(result, app)
    assets = app / "app/src/main/assets"
    got = native.parse_model_json(assets / "model.json", labels=assets / "labels.txt", exe=exe)
    opened = {got["param"], got["bin"], got["labels"]}
    assert opened | {"model.json"} == set(PACKAGED)
    for name in opened:
        assert got["files"][name]["bytes"] == (assets / name).stat().st_size
    assert (got["input"]["blob"], got["output"]["blob"], got["output"]["classes"]) == ("in0", "out0", 10)
    assert len(got["label_names"]) == 10
