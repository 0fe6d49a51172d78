"""A simulated ``adb`` with one or more pretend Android devices, for testing the adb runner where
no phone exists (this project's machines have none).

It is a simulator, not a device: a folder holds the device's file system, ``config.json`` its
state, and ``calls.jsonl`` every command line received. ``shell`` understands what the runner
sends (``mkdir -p``, ``chmod``, ``cd``, ``rm -rf``, ``getprop``, ``&&``) and runs a pushed
``edgecompress_bench`` by loading the pushed ``model.json`` / param / bin in the host's ncnn and
timing it, so the files and the command line the runner produces are really exercised; the
latencies are this host's, not a phone's.

    make_fake_adb(tmp_path, devices=[("SIM123", "device")]) -> path of an ``adb`` executable
    FAKE_ADB_STATE=folder python path/to/fake_adb.py ARGS...
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import sys
import time
from pathlib import Path

PROPS = {"ro.product.model": "Simulated Phone", "ro.product.manufacturer": "edgecompress-sim",
         "ro.board.platform": "sim", "ro.soc.model": "SIM8", "ro.product.cpu.abi": "arm64-v8a",
         "ro.build.version.release": "14", "ro.build.version.sdk": "34"}


def make_fake_adb(folder: str | os.PathLike, devices=(("SIM123", "device"),), disconnect_after: int | None = None,
                  props: dict | None = None) -> Path:
    """Create the state folder and an executable ``adb`` script in ``folder/bin``; returns its path."""
    folder = Path(folder)
    (folder / "fs").mkdir(parents=True, exist_ok=True)
    cfg = {"devices": [list(d) for d in devices], "disconnect_after": disconnect_after, "props": props or PROPS,
           "commands": 0}
    (folder / "config.json").write_text(json.dumps(cfg))
    exe = folder / "bin" / "adb"
    exe.parent.mkdir(exist_ok=True)
    # run this file as a script: importing the edgecompress.testing package would load torch per call
    exe.write_text(f"#!/bin/sh\nFAKE_ADB_STATE={shlex.quote(str(folder))} exec {shlex.quote(sys.executable)} "
                   f"{shlex.quote(str(Path(__file__).resolve()))} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def calls(folder: str | os.PathLike) -> list[list[str]]:
    p = Path(folder) / "calls.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []


def device_files(folder: str | os.PathLike) -> list[str]:
    """Every file left on the simulated device, as device paths."""
    root = Path(folder) / "fs"
    return sorted("/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class _Fail(Exception):
    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class _Device:
    def __init__(self, state: Path):
        self.state = state
        self.cfg = json.loads((state / "config.json").read_text())
        self.fs = state / "fs"

    def save(self):
        (self.state / "config.json").write_text(json.dumps(self.cfg))

    def path(self, p: str, cwd: str = "/") -> Path:
        full = os.path.normpath(os.path.join(cwd, p))
        return self.fs / full.lstrip("/")

    def main(self, argv: list[str]) -> int:
        with open(self.state / "calls.jsonl", "a") as f:
            f.write(json.dumps(argv) + "\n")
        serial = None
        if argv[:1] == ["-s"]:
            serial, argv = argv[1], argv[2:]
        if argv[:1] == ["devices"]:
            print("List of devices attached")
            for s, st in self.cfg["devices"]:
                print(f"{s}\t{st}")
            print()
            return 0
        try:
            self.select(serial)
            return self.command(argv)
        except _Fail as e:
            print(str(e), file=sys.stderr)
            return e.code

    def select(self, serial: str | None):
        devs = self.cfg["devices"]
        if serial is not None:
            devs = [d for d in devs if d[0] == serial]
            if not devs:
                raise _Fail(f"adb: device '{serial}' not found")
        if not devs:
            raise _Fail("adb: no devices/emulators found")
        if len(devs) > 1:
            raise _Fail("adb: more than one device/emulator")
        s, st = devs[0]
        if st == "unauthorized":
            raise _Fail("adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
                        "Try 'adb kill-server' if that seems wrong.\nOtherwise check for a confirmation dialog on your device.")
        if st == "offline":
            raise _Fail("adb: device offline")
        self.cfg["commands"] += 1
        limit = self.cfg.get("disconnect_after")
        if limit is not None and self.cfg["commands"] > limit:  # unplugged: gone from `adb devices` too
            self.cfg["devices"] = [d for d in self.cfg["devices"] if d[0] != s]
            self.save()
            raise _Fail(f"adb: device '{s}' not found")
        self.save()

    def command(self, argv: list[str]) -> int:
        if argv[:1] == ["push"] and len(argv) == 3:
            src, dst = Path(argv[1]), self.path(argv[2])
            if not src.is_file():
                raise _Fail(f"adb: error: cannot stat '{src}': No such file or directory")
            if not dst.parent.is_dir():
                raise _Fail(f"adb: error: failed to copy '{src}' to '{argv[2]}': remote No such file or directory")
            shutil.copyfile(src, dst)
            print(f"{src}: 1 file pushed, 0 skipped. ({src.stat().st_size} bytes)")
            return 0
        if argv[:1] == ["shell"]:
            return self.shell(" ".join(argv[1:]))
        raise _Fail(f"adb: unknown command {' '.join(argv)}")

    def shell(self, line: str) -> int:
        cwd = "/"
        for part in line.split("&&"):
            t = shlex.split(part)
            if not t:
                continue
            cmd, args = t[0], t[1:]
            if cmd == "cd":
                cwd = os.path.normpath(os.path.join(cwd, args[0]))
                if not self.path(cwd).is_dir():
                    raise _Fail(f"/system/bin/sh: cd: {args[0]}: No such file or directory", 2)
            elif cmd == "mkdir":
                for a in (a for a in args if not a.startswith("-")):
                    self.path(a, cwd).mkdir(parents=True, exist_ok=True)
            elif cmd == "chmod":
                self.path(args[1], cwd).chmod(int(args[0], 8))
            elif cmd == "rm":
                for a in (a for a in args if not a.startswith("-")):
                    p = self.path(a, cwd)
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            elif cmd == "getprop":
                for k, v in sorted(self.cfg["props"].items()):
                    print(f"[{k}]: [{v}]")
            elif Path(cmd).name == "edgecompress_bench":
                exe = self.path(cmd, cwd)
                if not exe.is_file():
                    raise _Fail(f"/system/bin/sh: {cmd}: inaccessible or not found", 127)
                if not exe.stat().st_mode & stat.S_IXUSR:
                    raise _Fail(f"/system/bin/sh: {cmd}: can't execute: Permission denied", 126)
                self.run_bench(args, cwd)
            else:
                raise _Fail(f"/system/bin/sh: {cmd}: inaccessible or not found", 127)
        return 0

    def run_bench(self, args: list[str], cwd: str) -> None:
        """What bench_main.cpp does, on the host's ncnn: load DIR/model.json and its model, time it."""
        import numpy as np

        opts = {"--threads": "1", "--powersave": "0", "--warmup": "10", "--runs": "50"}
        it = iter(args)
        for a in it:
            opts[a] = next(it)
        d = self.path(opts["--dir"], cwd)
        try:
            meta = json.loads((d / "model.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise _Fail(f"edgecompress_bench: cannot read {opts['--dir']}/model.json: {e}", 2) from e
        import ncnn

        net = ncnn.Net()
        net.opt.num_threads = int(opts["--threads"])
        net.opt.use_vulkan_compute = False
        if net.load_param(str(d / meta["param"])) != 0 or net.load_model(str(d / meta["bin"])) != 0:
            raise _Fail("edgecompress_bench: ncnn could not load the model", 3)
        inp = meta["input"]
        x = np.linspace(-1, 1, inp["channels"] * inp["height"] * inp["width"], dtype=np.float32)
        x = x.reshape(inp["channels"], inp["height"], inp["width"])
        mat = ncnn.Mat(x)

        def once() -> float:
            t0 = time.perf_counter()
            with net.create_extractor() as ex:
                ex.input(inp["blob"], mat)
                ret, _ = ex.extract(meta["output"]["blob"])
            if ret != 0:
                raise _Fail(f"edgecompress_bench: extract failed ({ret})", 4)
            return (time.perf_counter() - t0) * 1e3

        for _ in range(int(opts["--warmup"])):
            once()
        ms = np.array([once() for _ in range(int(opts["--runs"]))])
        print(f"EC_BENCH model={meta['name']} precision={meta['precision']} threads={opts['--threads']} "
              f"powersave={opts['--powersave']} warmup={opts['--warmup']} runs={opts['--runs']} "
              f"min_ms={ms.min():.4f} median_ms={np.median(ms):.4f} max_ms={ms.max():.4f} mean_ms={ms.mean():.4f} "
              f"p90_ms={np.percentile(ms, 90):.4f}")


if __name__ == "__main__":
    sys.exit(_Device(Path(os.environ["FAKE_ADB_STATE"])).main(sys.argv[1:]))
