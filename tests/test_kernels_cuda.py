"""cpp_kernels/src/cuda: the CUDA int8 / sparse convolutions.

* Everywhere nvcc exists (CI included): both .cu files compile with plain nvcc (they include no torch
  header), for sm_80.
* On a GPU (``-m gpu``): the CUDA ops against the CPU ops and the Python reference, exactly (int32,
  float32 and uint8 outputs) on stride, padding, dilation, groups, depthwise and weight zero points;
  sparse conv against a float64 dense conv; the argument checks; opcheck; a latency comparison with
  cuDNN fp16 at batch 64 (printed and written to JSON, no speed assertion).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgecompress.kernels import _build, ops, reference

CL = torch.channels_last
CUDA_FORMAT = 2  # kFormatCudaK4 in kernels.h

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    for root in filter(None, roots):
        cand = Path(root) / "bin" / "nvcc"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def test_cuda_sources_compile_with_nvcc(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (not on PATH, no $CUDA_HOME/bin/nvcc)")
    src = _build.source_dir()
    if src is None or not (src / "cuda" / "int8_conv.cu").is_file():
        pytest.skip("the CUDA sources are not shipped with this installation")
    for name in ("int8_conv.cu", "sparse_conv.cu"):
        obj = tmp_path / (name[:-3] + ".o")
        cmd = [nvcc, "-c", "-O3", "-std=c++17", "-gencode", "arch=compute_80,code=sm_80", str(src / "cuda" / name),
               "-o", str(obj)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(cmd)} failed ({time.perf_counter() - t0:.1f} s):\n{r.stdout}\n{r.stderr}"
        assert obj.is_file() and obj.stat().st_size > 0


# ---- GPU ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_ops():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if _build.disabled():
        pytest.skip("EDGECOMPRESS_DISABLE_KERNELS is set")
    ops.load()
    if not ops.compiled():
        pytest.fail(f"the C++/CUDA kernels did not build on a CUDA machine: {ops.fallback_reason()}")
    return torch.ops.edgecompress


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


# n, c, h, w, oc, k, stride, pad, dilation, groups
INT8_CASES = [
    (2, 32, 9, 7, 64, 3, 1, 1, 1, 1),                 # GEMM, 32-bit gathers, several K steps, pixel tail
    (1, 64, 8, 8, 80, 1, 1, 0, 1, 1),                 # 1x1, two channel tiles (80 = 64 + 16)
    (2, 16, 11, 10, 24, 3, 2, 1, 1, 1),               # stride 2
    (1, 3, 15, 13, 32, 7, 2, 3, 1, 1),                # stem: 3 input channels (byte gathers)
    (1, 6, 9, 9, 18, 3, 1, 2, 2, 1),                  # dilation 2, 18 channels (scalar stores)
    (1, 64, 6, 6, 64, 3, (1, 2), (1, 0), 1, 4),       # groups=4 (16 channels per group: GEMM per group)
    (1, 32, 5, 9, 160, 3, 1, 1, 1, 2),                # groups=2 x two channel tiles
    (3, 12, 13, 11, 96, 3, (2, 1), (1, 2), (1, 2), 3),  # mixed stride / padding / dilation, groups=3
    (1, 32, 7, 7, 32, 3, 1, 1, 1, 8),                 # narrow groups (4 channels): direct kernel
    (2, 24, 9, 9, 24, 3, 1, 1, 1, 24),                # depthwise
    (1, 20, 10, 9, 20, 5, 2, 2, 1, 20),               # depthwise 5x5 stride 2
    (1, 16, 12, 12, 16, 3, 1, 2, 2, 16),              # depthwise dilated
    (1, 8, 7, 7, 16, 3, 1, 1, 1, 8),                  # depthwise, channel multiplier 2
    (1, 40, 5, 5, 70, 3, 1, 0, 1, 1),                 # K = 360 (12 K steps), 70 channels
    (1, 7, 13, 5, 9, (3, 1), (2, 1), (1, 0), 1, 1),   # rectangular kernel, 9 channels (direct)
    (4, 128, 14, 14, 256, 3, 1, 1, 1, 1),             # many tiles both ways
]


def _int8_inputs(case, w_zp_on, seed):
    n, c, h, w, oc, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen).contiguous(memory_format=CL)
    wq = torch.randint(-128, 128, (oc, c // g, *_pair(k)), dtype=torch.int8, generator=gen)
    wz = (torch.randint(-128, 128, (oc,), dtype=torch.int32, generator=gen) if w_zp_on
          else torch.zeros(oc, dtype=torch.int32))
    ws = torch.rand(oc, generator=gen) * 2e-3 + 1e-4
    bias = torch.randn(oc, generator=gen)
    x_zp = int(torch.randint(0, 256, (1,), generator=gen))
    return x, wq, wz, ws, bias, x_zp


@gpu
@needs_cuda
@pytest.mark.parametrize("case", INT8_CASES, ids=lambda c: "x".join(map(str, c)).replace(" ", ""))
@pytest.mark.parametrize("w_zp_on", [False, True], ids=["wzp0", "wzp"])
def test_int8_conv_cuda_equals_cpu_and_reference(cuda_ops, case, w_zp_on):
    n, c, h, w, oc, k, s, p, d, g = case
    k, s, p, d = _pair(k), _pair(s), _pair(p), _pair(d)
    seed = len(INT8_CASES) * int(w_zp_on) + INT8_CASES.index(case)
    x, wq, wz, ws, bias, x_zp = _int8_inputs(case, w_zp_on, seed)
    dev = torch.device("cuda")
    pk_cpu = ops.int8_pack_weight(wq, g)
    pk = ops.int8_pack_weight(wq.to(dev), g)
    assert pk.is_cuda and pk.dtype == torch.int8
    hdr = reference.read_header(pk.cpu())
    assert hdr["format"] == CUDA_FORMAT and (hdr["oc"], hdr["icg"], hdr["kh"], hdr["kw"], hdr["groups"]) == (
        oc, c // g, k[0], k[1], g)
    colsum = pk.cpu()[hdr["cs_offset"]:].view(torch.int32)
    assert torch.equal(colsum, wq.to(torch.int32).flatten(1).sum(1))
    xg, wsg, wzg, bg = x.to(dev), ws.to(dev), wz.to(dev), bias.to(dev)
    assert xg.is_contiguous(memory_format=CL)
    x_scale = 0.02

    # raw int32 sums
    acc_cpu = ops.int8_conv2d(x, x_scale, x_zp, pk_cpu, ws, wz, None, oc, k, s, p, d, g, 0, 1.0, 0, torch.int32)
    acc = ops.int8_conv2d(xg, x_scale, x_zp, pk, wsg, wzg, None, oc, k, s, p, d, g, 0, 1.0, 0, torch.int32)
    assert acc.is_cuda and acc.dtype == torch.int32 and acc.is_contiguous(memory_format=CL)
    assert acc.shape == acc_cpu.shape
    assert torch.equal(acc.cpu(), acc_cpu)
    want = reference.int8_conv2d_acc(x, x_zp, wq, wz, s, p, d, g)
    assert torch.equal(acc.cpu(), want)

    # float32 and requantized uint8 outputs, every activation, with and without bias
    f_cpu = ops.int8_conv2d(x, x_scale, x_zp, pk_cpu, ws, wz, bias, oc, k, s, p, d, g, 0, 1.0, 0, torch.float32)
    out_scale = float(f_cpu.abs().max()) / 100 + 1e-3
    for act, dtype, use_bias in [(0, torch.float32, True), (1, torch.float32, False), (2, torch.float32, True),
                                 (0, torch.uint8, True), (1, torch.uint8, True), (2, torch.uint8, False)]:
        b_cpu, b_gpu = (bias, bg) if use_bias else (None, None)
        y_cpu = ops.int8_conv2d(x, x_scale, x_zp, pk_cpu, ws, wz, b_cpu, oc, k, s, p, d, g, act, out_scale, 128, dtype)
        y = ops.int8_conv2d(xg, x_scale, x_zp, pk, wsg, wzg, b_gpu, oc, k, s, p, d, g, act, out_scale, 128, dtype)
        assert y.is_cuda and y.dtype == dtype and y.is_contiguous(memory_format=CL)
        y_ref = reference.epilogue(want, x_scale, ws, b_cpu, act, out_scale, 128, dtype)
        yc = y.cpu()
        for other, what in ((y_cpu, "cpu"), (y_ref, "reference")):
            diff = (yc.double() - other.double()).abs().max()
            assert torch.equal(yc, other), f"act={act} {dtype}: max |cuda - {what}| = {diff}"


@gpu
@needs_cuda
def test_quantize_u8_cuda_equals_cpu(cuda_ops):
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, 1e9, -1e9, 12.5, 13.5]).view(1, 8, 1, 1)
    q = ops.quantize_u8(x.cuda(), 0.5, 10)
    assert q.is_cuda and q.flatten().tolist() == [10, 12, 12, 10, 255, 0, 35, 37]  # half to even
    gen = torch.Generator().manual_seed(0)
    ties = (torch.randint(-600, 600, (2, 16, 5, 7), generator=gen).float() + 0.5) * 0.25  # exact .5 quotients
    for big in (torch.randn(3, 40, 9, 9, generator=gen).contiguous(memory_format=CL),
                torch.randn(5, 333, generator=gen) * 9, ties, ties.contiguous(memory_format=CL)):
        for scale, zp in ((0.017, 128), (0.25, 3)):
            qc = ops.quantize_u8(big, scale, zp)
            qg = ops.quantize_u8(big.cuda(), scale, zp)
            assert qg.dtype == torch.uint8 and qg.stride() == qc.stride()
            assert torch.equal(qg.cpu(), qc)


@gpu
@needs_cuda
@pytest.mark.parametrize("case", [  # n, c, h, w, oc, k, stride, pad, dilation, density
    (1, 64, 14, 14, 32, 1, 1, 0, 1, 0.1),
    (2, 16, 9, 11, 24, 3, 1, 1, 1, 0.3),
    (1, 16, 10, 10, 8, 3, 2, 1, 1, 0.5),
    (1, 8, 12, 12, 8, 3, 1, 2, 2, 0.3),
    (1, 12, 7, 7, 5, 1, 2, 0, 1, 0.0),        # all-zero weight: bias only
    (1, 300, 5, 5, 4, 1, 1, 0, 1, 0.95),      # > 256 nonzeros per row (several shared-memory chunks)
    (2, 3, 23, 19, 6, 5, 2, 2, 1, 0.5),       # > 256 output pixels per image
    (1, 4, 5, 67, 3, 3, 1, 0, 1, 1.0),        # dense
])
def test_sparse_conv_cuda_matches_dense(cuda_ops, case):
    n, c, h, w, oc, k, s, p, d, density = case
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(oc, c, k, k, generator=gen) * (torch.rand(oc, c, k, k, generator=gen) < density)
    x, bias = torch.randn(n, c, h, w, generator=gen), torch.randn(oc, generator=gen)
    rp, ci, v = ops.sparse_pack(weight)
    dense = F.conv2d(x.double(), weight.double(), bias.double(), s, p, d)
    for act in (0, 1, 2):
        for b in (bias, None):
            y = ops.sparse_conv2d(x.cuda(), rp.cuda(), ci.cuda(), v.cuda(), None if b is None else b.cuda(), (k, k),
                                  (s, s), (p, p), (d, d), act)
            assert y.is_cuda and y.dtype == torch.float32 and y.is_contiguous()
            want = dense if b is not None else dense - bias.double().view(1, -1, 1, 1)
            want = want.clamp_min(0) if act == 1 else (want.clamp(0, 6) if act == 2 else want)
            torch.testing.assert_close(y.cpu().double(), want, rtol=1e-4, atol=1e-4)
            y_cpu = ops.sparse_conv2d(x, rp, ci, v, b, (k, k), (s, s), (p, p), (d, d), act)
            torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-5, atol=1e-5)
    # a non-contiguous (channels_last) input is accepted and gives the same result
    y_cl = ops.sparse_conv2d(x.cuda().contiguous(memory_format=CL), rp.cuda(), ci.cuda(), v.cuda(), bias.cuda(),
                             (k, k), (s, s), (p, p), (d, d), 0)
    torch.testing.assert_close(y_cl.cpu().double(), dense, rtol=1e-4, atol=1e-4)


def _cuda_conv_args(**over):
    dev = torch.device("cuda")
    x = torch.randint(0, 256, (1, 8, 6, 6), dtype=torch.uint8).contiguous(memory_format=CL).to(dev)
    w = torch.randint(-127, 128, (16, 8, 3, 3), dtype=torch.int8)
    a = dict(x=x, x_scale=0.05, x_zero_point=3, w_packed=ops.int8_pack_weight(w.to(dev)),
             w_scale=torch.full((16,), 0.01, device=dev), w_zero_point=torch.zeros(16, dtype=torch.int32, device=dev),
             bias=None, out_channels=16, kernel_size=[3, 3], stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1,
             activation=0, out_scale=0.1, out_zero_point=0, out_dtype=torch.float32)
    for key, val in over.items():
        a[key] = val(a) if callable(val) else val
    return list(a.values())


@gpu
@needs_cuda
@pytest.mark.parametrize("over, message", [
    (dict(w_packed=lambda a: ops.int8_pack_weight(torch.zeros(16, 8, 3, 3, dtype=torch.int8))), "w_packed is on cpu"),
    (dict(w_packed=lambda a: ops.int8_pack_weight(torch.zeros(16, 8, 3, 3, dtype=torch.int8)).cuda()),
     "packed for another device"),
    (dict(w_scale=lambda a: a["w_scale"].cpu()), "w_scale is on cpu"),
    (dict(bias=torch.zeros(16)), "bias is on cpu"),
    (dict(x=lambda a: a["x"].cpu()), "x is on cpu"),
    (dict(w_scale=lambda a: a["w_scale"].index_fill(0, torch.tensor([3], device="cuda"), 0.0)), r"w_scale\[3\]"),
    (dict(w_zero_point=lambda a: a["w_zero_point"].index_fill(0, torch.tensor([5], device="cuda"), 200)),
     r"w_zero_point\[5\] = 200"),
    (dict(x=lambda a: a["x"].contiguous()), "channels_last"),
    (dict(kernel_size=[1, 1]), "do not match w_packed"),
    (dict(x=lambda a: torch.zeros(1, 8, 2, 2, dtype=torch.uint8, device="cuda").contiguous(memory_format=CL),
          padding=[0, 0], stride=[2, 2]), "smaller than the dilated kernel"),
    (dict(out_dtype=torch.int32, activation=1), "raw accumulators"),
])
def test_int8_conv_cuda_argument_errors(cuda_ops, over, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.edgecompress.int8_conv2d(*_cuda_conv_args(**over))


@gpu
@needs_cuda
def test_sparse_conv_cuda_argument_errors(cuda_ops):
    x = torch.randn(1, 4, 6, 6, device="cuda")
    w = torch.randn(3, 4, 3, 3) * (torch.rand(3, 4, 3, 3) < 0.5)
    rp, ci, v = (t.cuda() for t in ops.sparse_pack(w))
    args = [(3, 3), (1, 1), (1, 1), (1, 1), 0]
    with pytest.raises(RuntimeError, match="row_ptr is on cpu"):
        ops.sparse_conv2d(x, rp.cpu(), ci, v, None, *args)
    bad = ci.clone()
    bad[-1] = 4 * 9
    with pytest.raises(RuntimeError, match=r"col_idx\[\d+\] = 36 is outside"):
        ops.sparse_conv2d(x, rp, bad, v, None, *args)
    if rp.numel() > 2 and int(rp[1]) > 0:
        rp_bad = rp.clone()
        rp_bad[1] = rp[2] + 1
        with pytest.raises(RuntimeError, match="non-decreasing|end at nnz"):
            ops.sparse_conv2d(x, rp_bad, ci, v, None, *args)
    with pytest.raises(RuntimeError, match="end at nnz"):
        ops.sparse_conv2d(x, rp, ci[:-1], v[:-1], None, *args)


@gpu
@needs_cuda
def test_opcheck_cuda(cuda_ops):
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=gen).contiguous(memory_format=CL).to(dev)
    torch.library.opcheck(torch.ops.edgecompress.quantize_u8, (x, 0.05, 128))
    w = torch.randint(-127, 128, (16, 8, 3, 3), dtype=torch.int8, generator=gen).to(dev)
    q, pk = ops.quantize_u8(x, 0.05, 128), ops.int8_pack_weight(w)
    for out_dtype, act, bias in [(torch.uint8, 1, torch.randn(16, device=dev)), (torch.float32, 2, None),
                                 (torch.int32, 0, None)]:
        torch.library.opcheck(torch.ops.edgecompress.int8_conv2d,
                              (q, 0.05, 128, pk, torch.full((16,), 0.01, device=dev),
                               torch.zeros(16, dtype=torch.int32, device=dev), bias, 16, [3, 3], [2, 2], [1, 1],
                               [1, 1], 1, act, 0.1, 3, out_dtype))
    wf = torch.randn(16, 8, 3, 3, generator=gen) * (torch.rand(16, 8, 3, 3, generator=gen) > 0.7)
    rp, ci, v = (t.to(dev) for t in ops.sparse_pack(wf))
    torch.library.opcheck(torch.ops.edgecompress.sparse_conv2d,
                          (torch.randn(2, 8, 9, 9, device=dev), rp, ci, v, torch.randn(16, device=dev), [3, 3],
                           [1, 1], [1, 1], [1, 1], 1))


@gpu
@needs_cuda
@pytest.mark.parametrize("shape, groups", [((16, 8, 3, 3), 1), ((32, 1, 3, 3), 32), ((24, 3, 7, 7), 1),
                                           ((64, 16, 3, 3), 4)])
def test_opcheck_cuda_pack_weight(cuda_ops, shape, groups):
    """The fake must give the CUDA blob's size: the CUDA layout (launch.h) differs from the CPU one."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randint(-127, 128, shape, dtype=torch.int8, generator=gen).cuda()
    torch.library.opcheck(torch.ops.edgecompress.int8_pack_weight, (w, groups))


def _time_ms(fn, iters=20, warmup=5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


@gpu
@needs_cuda
def test_latency_vs_cudnn_fp16(cuda_ops, tmp_path):
    """Median latency at batch 64: int8 (u8 in, u8 out) and 90%-sparse fp32 against cuDNN fp16
    (channels_last) and fp32. Reported, not asserted; the int8/sparse ops include their one host sync."""
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    n = 64
    layers = [  # name, c, oc, hw, k, stride, pad, groups
        ("conv3x3 128->128 28x28", 128, 128, 28, 3, 1, 1, 1),
        ("conv3x3/2 64->128 56x56", 64, 128, 56, 3, 2, 1, 1),
        ("conv1x1 256->256 14x14", 256, 256, 14, 1, 1, 0, 1),
        ("dw3x3 256 28x28", 256, 256, 28, 3, 1, 1, 256),
    ]
    rows = []
    for name, c, oc, hw, k, s, p, g in layers:
        xf = torch.randn(n, c, hw, hw, generator=gen)
        wf = torch.randn(oc, c // g, k, k, generator=gen) * 0.1
        xh = xf.to(dev, torch.half).contiguous(memory_format=CL)
        wh = wf.to(dev, torch.half).contiguous(memory_format=CL)
        row = {"layer": name, "batch": n,
               "cudnn_fp16_ms": _time_ms(lambda: F.conv2d(xh, wh, None, s, p, 1, g))}
        xq = ops.quantize_u8(xf.to(dev).contiguous(memory_format=CL), 0.05, 128)
        wq = torch.randint(-127, 128, wf.shape, dtype=torch.int8, generator=gen).to(dev)
        pk = ops.int8_pack_weight(wq, g)
        wsc, wzp, bias = torch.full((oc,), 1e-3, device=dev), torch.zeros(oc, dtype=torch.int32, device=dev), \
            torch.zeros(oc, device=dev)
        row["int8_u8out_ms"] = _time_ms(lambda: torch.ops.edgecompress.int8_conv2d(
            xq, 0.05, 128, pk, wsc, wzp, bias, oc, [k, k], [s, s], [p, p], [1, 1], g, 1, 0.05, 0, torch.uint8))
        if g == 1:
            x32 = xf.to(dev)
            w32 = wf.to(dev)
            row["cudnn_fp32_ms"] = _time_ms(lambda: F.conv2d(x32, w32, None, s, p, 1, 1))
            ws = wf * (torch.rand(wf.shape, generator=gen) < 0.1)
            rp, ci, v = (t.to(dev) for t in ops.sparse_pack(ws))
            row["sparse90_fp32_ms"] = _time_ms(lambda: torch.ops.edgecompress.sparse_conv2d(
                x32, rp, ci, v, None, [k, k], [s, s], [p, p], [1, 1], 0))
        row["int8_vs_fp16"] = row["int8_u8out_ms"] / row["cudnn_fp16_ms"]
        rows.append(row)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "layers": rows}
    out = tmp_path / "cuda_kernel_latency.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nCUDA kernel latency ({report['device']}), median ms at batch {n}; written to {out}")
    for r in rows:
        extra = "".join(f"  {key}={r[key]:.3f}" for key in ("cudnn_fp32_ms", "sparse90_fp32_ms") if key in r)
        print(f"  {r['layer']:<26} cudnn fp16 {r['cudnn_fp16_ms']:.3f}  int8 {r['int8_u8out_ms']:.3f} "
              f"(x{r['int8_vs_fp16']:.2f}){extra}")
    assert out.is_file() and all(r["int8_u8out_ms"] > 0 for r in rows)
