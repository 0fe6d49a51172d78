"""cpp_kernels benchmark: our int8 conv vs onnxruntime's QLinearConv on the same quantized layer vs torch
fp32 conv, per ResNet-20 / ResNet-50 conv shape at batch 1 and 8; our sparse conv at 50/70/90%
unstructured sparsity vs torch dense fp32 on ResNet-50's 3x3 and 1x1 layers at batch 1; and the u8 x s8
GEMM peak (onnxruntime MatMulInteger 2048^3, and our kernel on the same GEMM as a 1x1 conv).

Contenders are interleaved call by call in one process, in a new shuffled order every round (onnxruntime
with allow_spinning=0), the same thread count everywhere; median and p90 over many calls.

    python benchmarks/bench_kernels.py --threads 2 --out benchmarks/results/kernels
    python benchmarks/bench_kernels.py --quick          # a few shapes, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.kernels import ops


def conv_shapes(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Unique conv configurations of a model with the input size each one sees."""
    seen, out = set(), []

    def hook(mod, args):
        h, w = args[0].shape[-2:]
        key = (mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0], mod.groups, h, w)
        if key not in seen:
            seen.add(key)
            out.append(dict(c=mod.in_channels, oc=mod.out_channels, k=mod.kernel_size[0], s=mod.stride[0],
                            p=mod.padding[0], g=mod.groups, h=h, w=w))

    hs = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return out


def conv_macs(shape: dict, batch: int = 1) -> int:
    """Multiply-adds of one conv shape (``conv_shapes``' keys) at ``batch``."""
    c, oc, k, s, p, g, h, w = (shape[x] for x in ("c", "oc", "k", "s", "p", "g", "h", "w"))
    return batch * ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1) * oc * (c // g) * k * k


def _stats(ts: list[float]) -> dict:
    ts = sorted(ts)
    return {"median_ms": statistics.median(ts) * 1e3, "p90_ms": ts[int(0.9 * (len(ts) - 1))] * 1e3, "n": len(ts)}


def interleaved(fns: dict, iters: int, warmup: int = 3, min_time: float = 0.3, seed: int = 0) -> dict:
    """Each round calls every contender once, in a new shuffled order: in a fixed order each contender
    always runs after the same one and inherits its cache state (``sparse_plan_ab.py --order fixed``: of two
    plans of the same layer, the one always run right after torch's conv measured 1.30x slower than the
    other, 1.04x slower when shuffled)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    rng = random.Random(seed)
    t_end = time.perf_counter() + min_time
    i = 0
    while i < iters or time.perf_counter() < t_end:
        order = list(fns.items())
        rng.shuffle(order)
        for k, f in order:
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
        i += 1
        if i >= 20 * iters:
            break
    return {k: _stats(v) for k, v in times.items()}


def ort_session(model, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def qlinearconv_model(wq, w_scale, bias_i32, x_scale, x_zp, y_scale, y_zp, shape, stride, pad, groups):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, np.uint8), "xz"),
             numpy_helper.from_array(wq, "w"), numpy_helper.from_array(w_scale.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(len(w_scale), np.int8), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, np.uint8), "yz"), numpy_helper.from_array(bias_i32, "b")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            strides=[stride, stride], pads=[pad] * 4, group=groups,
                            kernel_shape=list(wq.shape[2:]))
    g = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def matmulinteger_model(n: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = rng.integers(-127, 128, (n, n), dtype=np.int8)
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    g = helper.make_graph([node], "mm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                          [numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def bench_int8(shape: dict, batch: int, threads: int, iters: int) -> dict:
    rng = np.random.default_rng(0)
    c, oc, k, s, p, g, h, w = (shape[x] for x in ("c", "oc", "k", "s", "p", "g", "h", "w"))
    x_f = torch.randn(batch, c, h, w)
    x_q = torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8)
    x_cl = x_q.contiguous(memory_format=torch.channels_last)
    wq = torch.randint(-127, 128, (oc, c // g, k, k), dtype=torch.int8)
    w_scale = torch.rand(oc) * 0.01 + 1e-3
    x_scale, x_zp, y_scale, y_zp = 0.02, 128, 0.05, 0
    bias_i32 = rng.integers(-1000, 1000, oc).astype(np.int32)
    bias_f = torch.from_numpy(bias_i32.astype(np.float32)) * (x_scale * w_scale)
    packed = ops.int8_pack_weight(wq, g)
    wz = torch.zeros(oc, dtype=torch.int32)
    E = torch.ops.edgecompress

    def ours():
        return E.int8_conv2d(x_cl, x_scale, x_zp, packed, w_scale, wz, bias_f, oc, [k, k], [s, s], [p, p], [1, 1], g,
                             1, y_scale, y_zp, torch.uint8)

    sess = ort_session(qlinearconv_model(wq.numpy(), w_scale.numpy(), bias_i32, x_scale, x_zp, y_scale, y_zp,
                                         list(x_q.shape), s, p, g), threads)
    xn = x_q.numpy()
    conv = nn.Conv2d(c, oc, k, s, p, groups=g).eval()
    conv_cl = nn.Conv2d(c, oc, k, s, p, groups=g).eval().to(memory_format=torch.channels_last)
    x_f_cl = x_f.contiguous(memory_format=torch.channels_last)

    def ort_run():
        return sess.run(None, {"x": xn})

    def torch_fp32():
        with torch.no_grad():
            return conv(x_f)

    def torch_fp32_cl():
        with torch.no_grad():
            return conv_cl(x_f_cl)

    # same numbers? (ours vs onnxruntime: u8 codes within 1 of each other; ORT rounds its own way)
    ref = ort_run()[0]
    got = ours().contiguous().numpy()
    agree = float(np.mean(np.abs(ref.astype(np.int32) - got.astype(np.int32)) <= 1))
    res = interleaved({"ours_int8": ours, "onnxruntime_int8": ort_run, "torch_fp32": torch_fp32,
                       "torch_fp32_channels_last": torch_fp32_cl}, iters)
    macs = conv_macs(shape, batch)
    for r in res.values():
        r["gmacs"] = macs / (r["median_ms"] * 1e-3) / 1e9
    return {"shape": shape, "batch": batch, "macs": macs, "codes_within_1_of_ort": agree, **res,
            "speedup_vs_ort": res["onnxruntime_int8"]["median_ms"] / res["ours_int8"]["median_ms"],
            "speedup_vs_torch_fp32": res["torch_fp32"]["median_ms"] / res["ours_int8"]["median_ms"],
            # against the faster of torch's two layouts (NCHW default, channels_last)
            "speedup_vs_best_torch_fp32": min(res["torch_fp32"]["median_ms"], res["torch_fp32_channels_last"]["median_ms"])
            / res["ours_int8"]["median_ms"]}


def _peak_contenders(threads: int, n: int) -> dict:
    """The u8 x s8 GEMM n^3: onnxruntime MatMulInteger, and our kernel on the same GEMM as a 1x1 conv over
    n pixels with n input and n output channels (int32 out)."""
    sess = ort_session(matmulinteger_model(n), threads)
    a = np.random.default_rng(1).integers(0, 256, (n, n), dtype=np.uint8)
    x = torch.from_numpy(a).view(1, 1, n, n).permute(0, 3, 1, 2)  # logical [1, C=n, H=1, W=n], NHWC memory
    wq = torch.randint(-127, 128, (n, n, 1, 1), dtype=torch.int8)
    packed = ops.int8_pack_weight(wq)
    ws, wz = torch.full((n,), 1e-3), torch.zeros(n, dtype=torch.int32)
    E = torch.ops.edgecompress

    def ours():
        return E.int8_conv2d(x, 0.02, 0, packed, ws, wz, None, n, [1, 1], [1, 1], [0, 0], [1, 1], 1, 0, 1.0, 0,
                             torch.int32)

    return {"onnxruntime_matmulinteger": lambda: sess.run(None, {"a": a}), "ours_int8_gemm": ours}


def bench_peak(threads: int, iters: int, n: int = 2048) -> dict:
    res = interleaved(_peak_contenders(threads, n), max(15, iters // 2))
    for r in res.values():
        r["gmacs"] = n ** 3 / (r["median_ms"] * 1e-3) / 1e9
    return {"n": n, **res}


def _ours_int8_conv(shape: dict, batch: int):
    """Our int8 conv on random codes of one layer shape (u8 out, ReLU): (callable, MACs)."""
    c, oc, k, s, p, g, h, w = (shape[x] for x in ("c", "oc", "k", "s", "p", "g", "h", "w"))
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8, generator=gen).contiguous(memory_format=torch.channels_last)
    packed = ops.int8_pack_weight(torch.randint(-127, 128, (oc, c // g, k, k), dtype=torch.int8, generator=gen), g)
    ws, wz, bias = torch.rand(oc, generator=gen) * 0.01 + 1e-3, torch.zeros(oc, dtype=torch.int32), torch.zeros(oc)
    E = torch.ops.edgecompress

    def run():
        return E.int8_conv2d(x, 0.02, 128, packed, ws, wz, bias, oc, [k, k], [s, s], [p, p], [1, 1], g, 1, 0.05, 0,
                             torch.uint8)

    return run, conv_macs(shape, batch)


def bench_largest_vs_peak(shapes: list[dict], threads: int, iters: int, batch: int = 8, n: int = 2048) -> dict:
    """The largest layer shapes and the u8 x s8 GEMM peak in ONE interleaved loop: onnxruntime
    MatMulInteger n^3, our kernel on the same GEMM, and our int8 conv on each shape at ``batch``. The
    fraction of the peak is then a ratio of medians taken over the same rounds, so the host's drift
    (2x within a minute here) cancels instead of landing between a peak reading and a layer reading."""
    fns = _peak_contenders(threads, n)
    macs = dict.fromkeys(fns, n ** 3)
    for i, sh in enumerate(shapes):
        fns[i], macs[i] = _ours_int8_conv(sh, batch)
    res = interleaved(fns, max(15, iters // 2))
    peak = macs["onnxruntime_matmulinteger"] / (res["onnxruntime_matmulinteger"]["median_ms"] * 1e-3) / 1e9
    for k, r in res.items():
        r["gmacs"] = macs[k] / (r["median_ms"] * 1e-3) / 1e9
        r["fraction_of_ort_gemm_peak"] = r["gmacs"] / peak
    return {"n": n, "batch": batch, "onnxruntime_matmulinteger": res["onnxruntime_matmulinteger"],
            "ours_int8_gemm": res["ours_int8_gemm"], "shapes": [dict(shape=sh, **res[i]) for i, sh in enumerate(shapes)]}


def largest_shapes(shapes: list[dict]) -> list[dict]:
    """By MACs the largest shape (ResNet-50's 3-channel 7x7 stem), then the shapes tied for the most MACs
    among those with >= 16 input channels (ResNet-50's seven 3x3 layers)."""
    body = [s for s in shapes if s["c"] >= 16]
    most = max(map(conv_macs, body))
    return [max(shapes, key=conv_macs)] + [s for s in body if conv_macs(s) == most]


def summarize_same_loop(loops: list[dict]) -> dict:
    """Per same-loop run: the ORT GEMM peak, our GEMM on it, the stem's fraction of the peak and the
    median fraction of the tied 3x3 shapes; then min / median / max of the stem's fraction."""
    per = [{"ort_gemm_peak_gmacs": lp["onnxruntime_matmulinteger"]["gmacs"], "ours_gemm_gmacs": lp["ours_int8_gemm"]["gmacs"],
            "stem_gmacs": lp["shapes"][0]["gmacs"], "stem_fraction": lp["shapes"][0]["fraction_of_ort_gemm_peak"],
            "non_stem_median_fraction": statistics.median(r["fraction_of_ort_gemm_peak"] for r in lp["shapes"][1:])}
           for lp in loops]
    fr = [p["stem_fraction"] for p in per]
    return {"loops": per, "stem_fraction_min": min(fr), "stem_fraction_median": statistics.median(fr),
            "stem_fraction_max": max(fr), "loops_stem_at_or_above_0.70": sum(f >= 0.70 for f in fr)}


def bench_sparse(shape: dict, sparsity: float, threads: int, iters: int) -> dict:
    c, oc, k, s, p, h, w = (shape[x] for x in ("c", "oc", "k", "s", "p", "h", "w"))
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c, oc, k, s, p).eval()
    with torch.no_grad():
        wt = conv.weight
        thresh = wt.abs().flatten().kthvalue(max(1, int(sparsity * wt.numel()))).values
        wt.mul_(wt.abs() > thresh)
    from edgecompress.kernels.modules import SparseConv2d

    sp = SparseConv2d.from_conv(conv)
    x = torch.randn(1, c, h, w, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(sp(x), conv(x), rtol=1e-4, atol=1e-4)
        res = interleaved({"ours_sparse": lambda: sp(x), "torch_dense_fp32": lambda: conv(x)}, iters)
    return {"shape": shape, "sparsity": round(1 - sp.density, 4), **res,
            "speedup_vs_dense": res["torch_dense_fp32"]["median_ms"] / res["ours_sparse"]["median_ms"]}


def summarize_int8(result: dict) -> dict:
    """Median speed-ups over every int8 row, and our GMAC/s on the largest shapes against the u8 x s8
    GEMM peak (the larger of the run's two onnxruntime MatMulInteger readings). By MACs the largest
    shape is ResNet-50's 3-channel 7x7 stem at batch 8 (147-byte patch rows); the next seven, tied at
    the same MACs, are ResNet-50's 3x3 layers at batch 8: their median and minimum are reported."""
    rows = result["int8"]
    out = {
        "median_speedup_vs_ort": statistics.median(r["speedup_vs_ort"] for r in rows),
        "median_speedup_vs_torch_fp32": statistics.median(r["speedup_vs_torch_fp32"] for r in rows),
        "median_speedup_vs_best_torch_fp32": statistics.median(r["speedup_vs_best_torch_fp32"] for r in rows),
    }
    biggest = max(rows, key=lambda r: r["macs"])
    out["largest_shape"] = {"shape": biggest["shape"], "batch": biggest["batch"], "gmacs": biggest["ours_int8"]["gmacs"]}
    body = [r for r in rows if r["shape"]["c"] >= 16]
    tied = [r for r in body if r["macs"] == max(b["macs"] for b in body)]
    out["largest_non_stem_shapes"] = {
        "shapes": [dict(r["shape"], batch=r["batch"], gmacs=r["ours_int8"]["gmacs"]) for r in tied],
        "median_gmacs": statistics.median(r["ours_int8"]["gmacs"] for r in tied),
        "min_gmacs": min(r["ours_int8"]["gmacs"] for r in tied)}
    if "peak" in result:
        readings = [result[k]["onnxruntime_matmulinteger"]["gmacs"] for k in ("peak", "peak_after_int8") if k in result]
        peak = max(readings)
        out["ort_gemm_peak_gmacs"] = peak
        out["largest_shape"]["fraction_of_ort_gemm_peak"] = out["largest_shape"]["gmacs"] / peak
        for k in ("median", "min"):
            out["largest_non_stem_shapes"][f"{k}_fraction_of_ort_gemm_peak"] = out["largest_non_stem_shapes"][f"{k}_gmacs"] / peak
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/kernels")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9", help="sparse section: comma list of sparsities")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: int8,sparse,peak (peak: also the "
                    "same-loop runs)")
    ap.add_argument("--peak-loops", type=int, default=3,
                    help="same-loop runs of the largest shapes with the GEMM peak (each its own interleaved loop)")
    ap.add_argument("--peak-loop-gap", type=float, default=0.0, metavar="S",
                    help="seconds to wait between the same-loop runs (to sample the host at different times)")
    ap.add_argument("--resummarize", default=None, metavar="JSON",
                    help="recompute the int8 summary of a saved result with this script's summarize_int8, and exit")
    args = ap.parse_args(argv)
    if args.peak_loops < 0 or args.peak_loop_gap < 0:
        ap.error("--peak-loops and --peak-loop-gap must be >= 0 (0 loops: no same-loop runs)")
    if args.resummarize:
        path = Path(args.resummarize)
        saved = json.loads(path.read_text())
        saved["summary_int8"] = summarize_int8(saved)
        path.write_text(json.dumps(saved, indent=1))
        print(json.dumps(saved["summary_int8"], indent=1))
        return 0
    torch.set_num_threads(args.threads)
    isa = ops.load()
    from torchvision.models import resnet50

    from edgecompress.models import create_model

    skip = set(filter(None, args.skip.split(",")))
    r20 = conv_shapes(create_model("resnet20"), torch.randn(1, 3, 32, 32))
    r50 = conv_shapes(resnet50(), torch.randn(1, 3, 224, 224))
    for s in r20:
        s["model"] = "resnet20"
    for s in r50:
        s["model"] = "resnet50"
    shapes = r20 + r50
    if args.quick:
        shapes = [r20[1], r50[0], r50[2], r50[-2]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"isa": isa, "threads": args.threads, "torch": torch.__version__, "cpu": platform.processor(),
              "command": "python benchmarks/bench_kernels.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    if "peak" not in skip:
        result["peak"] = bench_peak(args.threads, args.iters)
        print("peak", {k: round(v["gmacs"], 1) for k, v in result["peak"].items() if isinstance(v, dict)}, flush=True)
    if "int8" not in skip:
        rows = []
        for shape in shapes:
            for batch in (1, 8):
                r = bench_int8(shape, batch, args.threads, args.iters)
                rows.append(r)
                print(f"{shape['model']:9s} c{shape['c']:>4} oc{shape['oc']:>4} k{shape['k']} s{shape['s']} "
                      f"{shape['h']:>3}x{shape['w']:<3} b{batch}: ours {r['ours_int8']['median_ms']:.3f} ms "
                      f"({r['ours_int8']['gmacs']:.0f} GMAC/s) ort {r['onnxruntime_int8']['median_ms']:.3f} "
                      f"fp32 {r['torch_fp32']['median_ms']:.3f} fp32-cl {r['torch_fp32_channels_last']['median_ms']:.3f}  "
                      f"x{r['speedup_vs_ort']:.2f} vs ort, x{r['speedup_vs_best_torch_fp32']:.2f} vs best fp32", flush=True)
        result["int8"] = rows
        if "peak" in result:
            # the GEMM peak is read again after the int8 section: the larger of the two readings counts
            result["peak_after_int8"] = bench_peak(args.threads, args.iters)
        result["summary_int8"] = summarize_int8(result)
        print(json.dumps(result["summary_int8"], indent=1), flush=True)
    if "peak" not in skip and args.peak_loops > 0:
        # the largest shapes at batch 8 interleaved with the GEMM peak in one loop (drift-free fractions),
        # repeated: between loops the host's AMX throughput moves by up to 5x, and the stem's fraction with it
        big = largest_shapes(shapes)
        result["largest_vs_peak_loops"] = []
        for i in range(args.peak_loops):
            if i:
                time.sleep(args.peak_loop_gap)
            result["largest_vs_peak_loops"].append(bench_largest_vs_peak(big, args.threads, args.iters, 8))
            lp = result["largest_vs_peak_loops"][-1]
            print(f"same loop {i + 1}/{args.peak_loops}: ORT peak {lp['onnxruntime_matmulinteger']['gmacs']:.0f} GMAC/s, "
                  f"stem {lp['shapes'][0]['fraction_of_ort_gemm_peak']:.0%} of it", flush=True)
        result["largest_vs_peak"] = result["largest_vs_peak_loops"][0]
        result["summary_same_loop"] = summarize_same_loop(result["largest_vs_peak_loops"])
        print(json.dumps({k: v for k, v in result["summary_same_loop"].items() if k != "loops"}, indent=1), flush=True)
    if "sparse" not in skip:
        rows = []
        sparsities = [float(v) for v in args.sparsities.split(",")]
        sp_shapes = [s for s in r50 if s["k"] in (1, 3) and s["g"] == 1]
        if args.quick:
            sp_shapes = sp_shapes[:3]
        for shape in sp_shapes:
            for sparsity in sparsities:
                r = bench_sparse(shape, sparsity, args.threads, args.iters)
                rows.append(r)
                print(f"sparse c{shape['c']:>4} oc{shape['oc']:>4} k{shape['k']} s{shape['s']} {shape['h']}x{shape['w']} "
                      f"{sparsity:.0%}: ours {r['ours_sparse']['median_ms']:.3f} ms dense "
                      f"{r['torch_dense_fp32']['median_ms']:.3f} ms  x{r['speedup_vs_dense']:.2f}", flush=True)
        result["sparse"] = rows
        result["summary_sparse"] = {
            f"{int(sp * 100)}%": {
                "median_speedup": statistics.median(r["speedup_vs_dense"] for r in rows if abs(r["sparsity"] - sp) < 0.01),
                "min_speedup": min(r["speedup_vs_dense"] for r in rows if abs(r["sparsity"] - sp) < 0.01)}
            for sp in sparsities}
        print(json.dumps(result["summary_sparse"], indent=1), flush=True)
    name = "bench_kernels_quick.json" if args.quick else "bench_kernels.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print("wrote", out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
