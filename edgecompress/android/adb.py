"""On-device latency over adb: ``edgecompress bench --device android [--serial S]``.

For each ncnn artifact: package it like the app does (``model.json`` + param/bin), push it and the
``edgecompress_bench`` binary (built from ``android_demo/app/src/main/cpp/bench_main.cpp`` with the
NDK) to a fresh folder under ``/data/local/tmp``, run it once per thread count, parse its
``EC_BENCH`` line into the benchmark schema, and remove the folder again, also when a run fails.

No phone was available to this project: the runner is tested against a simulated ``adb``
(``edgecompress.testing.fake_adb``) that keeps a fake device file system and runs the pushed model
with the host's ncnn.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from edgecompress.errors import (AdbError, ArtifactNotFoundError, BackendUnavailableError, ConfigError,
                                 DeviceDisconnectedError, DeviceUnauthorizedError, DeviceUnavailableError)

REMOTE_ROOT = "/data/local/tmp"
BENCH_BINARY = "edgecompress_bench"
_LINE = re.compile(r"^EC_BENCH\s+(.*)$", re.M)
_DISCONNECT = ("device offline", "not found", "no devices", "closed", "device still connecting",
               "protocol fault", "connection reset")


def parse_bench_line(text: str) -> dict:
    """The key=value fields of the last ``EC_BENCH`` line in ``text`` (numbers as float/int)."""
    lines = _LINE.findall(text)
    if not lines:
        raise AdbError(f"no EC_BENCH line in the benchmark's output: {text[-500:]!r}")
    out = {}
    for tok in lines[-1].split():
        k, _, v = tok.partition("=")
        try:
            out[k] = int(v) if re.fullmatch(r"-?\d+", v) else float(v)
        except ValueError:
            out[k] = v
    missing = [k for k in ("threads", "runs", "min_ms", "median_ms", "max_ms", "mean_ms", "p90_ms") if k not in out]
    if missing:
        raise AdbError(f"EC_BENCH line lacks {missing}: {lines[-1]!r}")
    return out


class Adb:
    """One Android device over adb; every failure becomes a typed error naming the fix."""

    def __init__(self, serial: str | None = None, adb: str = "adb", timeout: float = 300.0):
        exe = shutil.which(adb) if os.sep not in adb else (adb if Path(adb).is_file() else None)
        if exe is None:
            raise BackendUnavailableError(f"adb ({adb!r}) not found: install Android platform-tools "
                                          "(https://developer.android.com/tools/releases/platform-tools) and put adb on PATH, "
                                          "or pass --adb /path/to/adb")
        self.exe, self.serial, self.timeout = exe, serial, timeout
        self.calls: list[list[str]] = []

    def _run(self, *args: str, check: bool = True, serial: bool = True) -> str:
        cmd = [self.exe, *(["-s", self.serial] if self.serial and serial else []), *args]
        self.calls.append(cmd)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired as e:
            raise DeviceDisconnectedError(f"adb {' '.join(args[:2])} did not answer in {self.timeout:.0f} s; "
                                          "check the cable and `adb devices`") from e
        text = (p.stdout or "") + (p.stderr or "")
        low = text.lower()
        if "unauthorized" in low:
            raise DeviceUnauthorizedError("the device has not authorised this computer: unlock it and accept the "
                                          "'Allow USB debugging' prompt, then run `adb devices`")
        if p.returncode != 0 and any(s in low for s in _DISCONNECT):
            raise DeviceDisconnectedError(f"the device went away during `adb {' '.join(args[:2])}` ({text.strip()[:200]}); "
                                          "reconnect it (check `adb devices`) and run the benchmark again")
        if check and p.returncode != 0:
            raise AdbError(f"`adb {' '.join(args)}` failed with {p.returncode}: {text.strip()[:500]}")
        return p.stdout

    def check(self) -> str:
        """The serial of the one device to use; typed errors for none, unauthorised, offline, several."""
        out = self._run("devices", check=False, serial=False)
        devices = [ln.split()[:2] for ln in out.splitlines()[1:] if ln.strip() and not ln.startswith("*")]
        if self.serial:
            devices = [d for d in devices if d[0] == self.serial]
        if not devices:
            raise DeviceUnavailableError("no Android device " + (f"{self.serial!r} " if self.serial else "")
                                         + "is connected: plug in a phone with USB debugging on (Developer options) "
                                           "and check `adb devices`")
        if len(devices) > 1:
            raise ConfigError(f"{len(devices)} devices connected ({', '.join(d[0] for d in devices)}); "
                              "pick one with --serial")
        serial, state = devices[0][0], devices[0][1] if len(devices[0]) > 1 else "unknown"
        if state == "unauthorized":
            raise DeviceUnauthorizedError(f"device {serial} has not authorised this computer: unlock it and accept "
                                          "the 'Allow USB debugging' prompt")
        if state != "device":
            raise DeviceDisconnectedError(f"device {serial} is {state}; reconnect it and check `adb devices`")
        self.serial = serial
        return serial

    def info(self) -> dict:
        """Device facts from ``getprop``."""
        props = {}
        for ln in self._run("shell", "getprop").splitlines():
            m = re.match(r"^\[(.+?)\]: \[(.*)\]$", ln.strip())
            if m:
                props[m.group(1)] = m.group(2)
        keys = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer", "soc": "ro.soc.model",
                "board": "ro.board.platform", "abi": "ro.product.cpu.abi", "android": "ro.build.version.release",
                "sdk": "ro.build.version.sdk"}
        return {k: props.get(v) for k, v in keys.items()}

    def push(self, local: Path, remote: str) -> None:
        self._run("push", str(local), remote)

    def shell(self, command: str, check: bool = True) -> str:
        return self._run("shell", command, check=check)


def find_bench_binary(binary: str | os.PathLike | None) -> Path:
    cand = binary or os.environ.get("EDGECOMPRESS_ANDROID_BENCH")
    if not cand or not Path(cand).is_file():
        raise ArtifactNotFoundError(
            f"the on-device benchmark binary {cand or BENCH_BINARY!r} was not found: build `edgecompress_bench` from "
            "android_demo (see android_demo/README.md, 'Benchmark over adb') and pass --binary PATH or set "
            "EDGECOMPRESS_ANDROID_BENCH")
    return Path(cand)


def bench_android(arts, *, threads=(4,), warmup: int = 10, iters: int = 50, input_shape=(3, 32, 32),
                  serial: str | None = None, adb: str = "adb", binary=None, powersave: int = 0) -> list[dict]:
    """Rows of the benchmark schema for every ncnn artifact at each thread count, on the phone."""
    from edgecompress.android.package import package_folder

    arts = [a for a in arts if a.runtime == "ncnn"]
    if not arts:
        raise ConfigError("--device android times ncnn artifacts; none were given (pass a result folder with an "
                          "ncnn model)")
    exe = find_bench_binary(binary)
    dev = Adb(serial, adb)
    dev.check()
    info = dev.info()
    rows = []
    for a in arts:
        cost = a.cost(tuple(input_shape))  # parameters and MACs, read from the artifact on the host
        remote = f"{REMOTE_ROOT}/edgecompress-{uuid.uuid4().hex[:12]}"
        with tempfile.TemporaryDirectory(prefix="edgecompress-adb-") as tmp:
            files = package_folder(a.paths["ncnn_param"], a.paths["ncnn_bin"], Path(tmp), precision=a.precision,
                                   name=a.name, input_size=(input_shape[2], input_shape[1]))
            try:
                dev.shell(f"mkdir -p {remote}")
                for f in [*files, exe]:
                    dev.push(f, f"{remote}/{f.name}")
                dev.shell(f"chmod 755 {remote}/{exe.name}")
                for t in threads:
                    cmd = (f"cd {remote} && ./{exe.name} --dir {remote} --threads {int(t)} --powersave {int(powersave)} "
                           f"--warmup {int(warmup)} --runs {int(iters)}")
                    res = parse_bench_line(dev.shell(cmd))
                    rows.append(_row(a, res, t, info, iters, warmup, cost))
            finally:
                try:
                    dev.shell(f"rm -rf {shlex.quote(remote)}", check=False)
                except AdbError:
                    pass  # the device is gone; nothing left to clean on this side
    return rows


def _row(a, res: dict, threads: int, info: dict, iters: int, warmup: int, cost: tuple) -> dict:
    med = float(res["median_ms"])
    params, macs = cost
    return {
        "model": a.model or a.name, "target": a.exporter, "precision": a.precision, "runtime": "ncnn",
        "device": "android " + " ".join(v for v in (info.get("manufacturer"), info.get("model")) if v),
        "threads": int(threads), "batch": 1, "ms_median": med, "ms_p90": float(res["p90_ms"]), "ms_p99": None,
        "params": params, "macs": macs, "size_bytes": a.size_bytes, "top1": a.top1, "artifact": a.name,
        "ms_p10": None, "ms_mean": float(res["mean_ms"]), "ms_min": float(res["min_ms"]),
        "throughput_ips": 1e3 / med if med > 0 else None, "peak_mem_mb": None, "iters": int(res.get("runs", iters)),
        "warmup": int(res.get("warmup", warmup)),
    }
