"""cpp_kernels: int8 affine conv and CSR sparse conv against independent references, on every CPU path
this machine has; opcheck; argument errors; the fallback when the library cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from edgecompress.kernels import ops, reference

CL = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def _loaded():
    ops.load()
    yield
    if ops.compiled():
        ops.set_kernel_isa(_best_isa())


def _best_isa() -> str:
    for isa in ("amx", "avx512_vnni", "avx2", "ref"):
        try:
            torch.ops.edgecompress.set_kernel_isa(isa)
            return isa
        except RuntimeError:
            continue
    return "ref"


def _isas() -> list[str]:
    if not ops.compiled():
        return ["python"]
    have = []
    prev = torch.ops.edgecompress.kernel_isa()
    for isa in ("ref", "avx2", "avx512_vnni", "amx"):
        try:
            torch.ops.edgecompress.set_kernel_isa(isa)
            have.append(isa)
        except RuntimeError:
            pass
    torch.ops.edgecompress.set_kernel_isa(prev)
    return have


def int64_conv(x, x_zp, w, w_zp, stride, padding, dilation, groups):
    """sum (x - x_zp)(w - w_zp) in int64, written from the definition (shifted slices + einsum)."""
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    xi = F.pad(x.to(torch.int64) - x_zp, (padding[1], padding[1], padding[0], padding[0]))  # real 0 = x_zp
    wi = w.to(torch.int64) - w_zp.to(torch.int64).view(-1, 1, 1, 1)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = torch.zeros(n, groups, oc // groups, ho, wo, dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xi[:, :, i * dilation[0]: i * dilation[0] + (ho - 1) * stride[0] + 1: stride[0],
                       j * dilation[1]: j * dilation[1] + (wo - 1) * stride[1] + 1: stride[1]]
            patch = patch.reshape(n, groups, icg, ho, wo)
            out += torch.einsum("ngchw,goc->ngohw", patch, wi[:, :, i, j].reshape(groups, oc // groups, icg))
    return out.reshape(n, oc, ho, wo)


# n, c, h, w, oc, k, stride, pad, dilation, groups
CASES = [
    (2, 3, 9, 11, 16, 3, 1, 1, 1, 1),      # stem-like: 3 input channels
    (1, 16, 8, 8, 32, 3, 2, 1, 1, 1),      # stride 2
    (3, 64, 7, 7, 70, 1, 1, 0, 1, 1),      # 1x1 direct path, output channels not a multiple of 16
    (2, 10, 9, 9, 20, 3, 1, 2, 2, 2),      # dilation + groups
    (2, 32, 10, 10, 32, 3, 1, 1, 1, 32),   # depthwise
    (1, 20, 11, 9, 20, 5, 2, 2, 1, 20),    # depthwise 5x5 stride 2, channels not a multiple of 16
    (1, 48, 6, 6, 96, 1, 2, 0, 1, 1),      # 1x1 stride 2 (im2col path)
    (4, 8, 5, 5, 24, 3, 1, 0, 1, 4),       # grouped, no padding
    (1, 7, 13, 5, 9, (3, 1), (2, 1), (1, 0), 1, 1),  # rectangular kernel / stride / padding
    # patch rows copied as whole kernel-row runs of the padded input (AVX-512): a 7x7 stride-2 RGB stem
    # over 760 output pixels (several 128-row steps, the last one partial), and dilation along H only
    (2, 3, 40, 37, 64, 7, 2, 3, 1, 1),
    (1, 3, 20, 21, 16, 3, 1, 2, (2, 1), 1),
    # space-to-depth (AMX, stride 2, no weight zero points; otherwise the patch rows): 35-pixel lines (a 32-row
    # tile pair + VNNI rows), 20 channels (a 16-channel tail), no padding, a 9x9 kernel (60-byte chunks),
    # and the same packed weights at stride 1 (patch rows)
    (1, 3, 45, 71, 20, 7, 2, 2, 1, 1),
    (2, 3, 64, 64, 64, 7, 2, 0, 1, 1),
    (1, 3, 33, 40, 16, 9, 2, 4, 1, 1),
    (1, 3, 20, 24, 16, 7, 1, 3, 1, 1),
    # Kp % 64 == 0: the AMX tile path where the CPU has it (16-row groups, VNNI row tails, 16-channel tails)
    (2, 64, 20, 20, 48, 3, 1, 1, 1, 1),    # implicit GEMM, 64 channels per tap, 20-pixel lines
    (1, 128, 9, 9, 40, 3, 2, 1, 1, 1),     # patch matrix, Kp = 1152
    (2, 64, 10, 17, 33, 1, 1, 0, 1, 1),    # pointwise, 340 rows, 33 channels
    (1, 128, 16, 16, 64, 3, 1, 1, 1, 2),   # grouped, 64 channels per group
]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)).replace(" ", ""))
@pytest.mark.parametrize("w_zp_on", [False, True], ids=["wzp0", "wzp"])
def test_int8_conv_exact(isa, case, w_zp_on):
    if isa != "python":
        ops.set_kernel_isa(isa)
    n, c, h, w, oc, k, s, p, d, g = case
    k, s, p, d = _pair(k), _pair(s), _pair(p), _pair(d)
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen).contiguous(memory_format=CL)
    wq = torch.randint(-127, 128, (oc, c // g, *k), dtype=torch.int8, generator=gen)
    wz = torch.randint(-20, 21, (oc,), dtype=torch.int32, generator=gen) if w_zp_on else torch.zeros(oc, dtype=torch.int32)
    ws = torch.rand(oc, generator=gen) * 0.01 + 1e-3
    bias = torch.randn(oc, generator=gen)
    pk = ops.int8_pack_weight(wq, g)
    assert torch.equal(pk, reference.pack_weight(wq, g))  # C++ and Python pack the same bytes
    x_zp = 7
    acc = ops.int8_conv2d(x, 0.05, x_zp, pk, ws, wz, None, oc, k, s, p, d, g, 0, 1.0, 0, torch.int32)
    want = int64_conv(x, x_zp, wq, wz, s, p, d, g)
    assert acc.dtype == torch.int32 and acc.is_contiguous(memory_format=CL)
    assert torch.equal(acc.to(torch.int64), want)  # exact integer sums
    for act, dtype in [(0, torch.float32), (1, torch.float32), (2, torch.uint8), (1, torch.uint8)]:
        y = ops.int8_conv2d(x, 0.05, x_zp, pk, ws, wz, bias, oc, k, s, p, d, g, act, 0.03, 3, dtype)
        y_ref = reference.epilogue(want.to(torch.int32), 0.05, ws, bias, act, 0.03, 3, dtype)
        assert y.dtype == dtype
        assert torch.equal(y, y_ref), f"act={act} {dtype}: max diff {(y.double() - y_ref.double()).abs().max()}"


@pytest.mark.parametrize("isa", _isas())
def test_int8_u8_requantization_edges(isa):
    """u8 outputs at the clamp's edges (an out_scale so small that |v / out_scale| passes 2^15 and 2^31 both
    ways, one so large that everything rounds near the zero point; zero points 0 / 128 / 255; no activation,
    ReLU, ReLU6) equal the reference epilogue on every path: the AMX blocks of 32 channels clamp the upper
    bound in float and the lower one on 16-bit lanes after rounding."""
    if isa != "python":
        ops.set_kernel_isa(isa)
    gen = torch.Generator().manual_seed(11)
    for c, oc, k, s, p, hw in [(64, 64, 3, 1, 1, 18), (3, 64, 7, 2, 3, 40), (16, 48, 1, 1, 0, 9)]:
        x = torch.randint(0, 256, (1, c, hw, hw), dtype=torch.uint8, generator=gen).contiguous(memory_format=CL)
        wq = torch.randint(-127, 128, (oc, c, k, k), dtype=torch.int8, generator=gen)
        ws, wz = torch.rand(oc, generator=gen) * 0.01 + 1e-3, torch.zeros(oc, dtype=torch.int32)
        bias = torch.randn(oc, generator=gen) * 50
        pk = ops.int8_pack_weight(wq)
        acc = int64_conv(x, 9, wq, wz, (s, s), (p, p), (1, 1), 1).to(torch.int32)
        for out_scale in (1e-12, 1e-6, 0.05, 1e3):
            for zp in (0, 128, 255):
                for act in (0, 1, 2):
                    y = ops.int8_conv2d(x, 0.05, 9, pk, ws, wz, bias, oc, [k, k], [s, s], [p, p], [1, 1], 1, act, out_scale,
                                        zp, torch.uint8)
                    want = reference.epilogue(acc, 0.05, ws, bias, act, out_scale, zp, torch.uint8)
                    assert torch.equal(y, want), (c, out_scale, zp, act, (y.int() - want.int()).abs().max())


def test_int8_conv_blob_without_s2d_weights():
    """A blob packed before the space-to-depth copy existed (its header's size ends at the column sums) still
    runs, through the patch rows, with the same result."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 3, 40, 37), dtype=torch.uint8, generator=gen).contiguous(memory_format=CL)
    wq = torch.randint(-127, 128, (64, 3, 7, 7), dtype=torch.int8, generator=gen)
    pk = ops.int8_pack_weight(wq)
    plan = reference.pack_plan(64, 3, 7, 7, 1)
    assert plan["s2d_kp"] == 4 * 48 and pk.numel() == plan["total"]
    old = pk[: plan["cs_off"] + 4 * 64].clone()
    header = old[:64].view(torch.int32)
    header[15] = old.numel()
    wz = torch.zeros(64, dtype=torch.int32)

    def conv(blob):
        return ops.int8_conv2d(x, 0.05, 9, blob, torch.full((64,), 0.01), wz, None, 64, [7, 7], [2, 2], [3, 3], [1, 1], 1, 0,
                               1.0, 0, torch.int32)

    want = int64_conv(x, 9, wq, wz, (2, 2), (3, 3), (1, 1), 1)
    assert torch.equal(conv(pk).to(torch.int64), want)
    assert torch.equal(conv(old).to(torch.int64), want)
    if "amx" in _isas():
        # the AMX path really reads the space-to-depth copy: with it zeroed the sums are the zero-point terms only
        ops.set_kernel_isa("amx")
        blank = pk.clone()
        blank[plan["s2d_off"]:] = 0
        assert not torch.equal(conv(blank).to(torch.int64), want)


def test_int8_conv_matches_float_conv_of_dequantized_tensors():
    """The float output is the float conv of the dequantized input and weight (within fp32 rounding)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 16, 12, 12), dtype=torch.uint8, generator=gen).contiguous(memory_format=CL)
    wq = torch.randint(-127, 128, (32, 16, 3, 3), dtype=torch.int8, generator=gen)
    ws, bias = torch.rand(32, generator=gen) * 0.01 + 1e-3, torch.randn(32, generator=gen)
    y = ops.int8_conv2d(x, 0.02, 100, ops.int8_pack_weight(wq), ws, torch.zeros(32, dtype=torch.int32), bias, 32,
                        (3, 3), (1, 1), (1, 1), (1, 1), 1, 0)
    xf = (x.double() - 100) * 0.02
    wf = wq.double() * ws.double().view(-1, 1, 1, 1)
    want = F.conv2d(xf, wf, bias.double(), 1, 1).float()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_quantize_u8_matches_reference_half_to_even():
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, 1e9, -1e9, 12.5, 13.5]).view(1, 8, 1, 1)
    q = ops.quantize_u8(x, 0.5, 10)
    assert q.flatten().tolist() == [10, 12, 12, 10, 255, 0, 35, 37]  # 0.5, 1.5, 2.5 -> 0, 2, 2 (half to even)
    big = torch.randn(3, 40, 9, 9).contiguous(memory_format=CL)
    for isa in _isas():
        if isa != "python":
            ops.set_kernel_isa(isa)
        qb = ops.quantize_u8(big, 0.017, 128)
        assert torch.equal(qb, reference.quantize_u8(big, 0.017, 128)) and qb.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("case", [  # n, c, h, w, oc, k, stride, pad, dilation, density
    (1, 64, 14, 14, 32, 1, 1, 0, 1, 0.1),
    (2, 16, 9, 11, 24, 3, 1, 1, 1, 0.3),
    (1, 16, 10, 10, 8, 3, 2, 1, 1, 0.5),
    (1, 8, 12, 12, 8, 3, 1, 2, 2, 0.3),
    (1, 12, 7, 7, 5, 1, 2, 0, 1, 0.0),       # an all-zero weight: bias only
    (1, 4, 5, 67, 3, 3, 1, 0, 1, 1.0),       # dense, width > one vector tile
    (1, 256, 14, 14, 40, 1, 1, 0, 1, 0.3),   # 1x1, H*W % 16 != 0 (aligned copy), one input-channel block
    (1, 96, 8, 8, 24, 1, 1, 0, 1, 0.3),      # 1x1 on the input planes themselves
    (2, 64, 20, 20, 16, 3, 1, 1, 1, 0.3),    # stride 1, output through the scratch rows, 2 blocks
    (1, 48, 21, 17, 12, 3, 2, 1, 1, 0.3),    # stride 2: 4 phases, odd sizes, 2 blocks
    (1, 8, 23, 23, 6, 5, 3, 2, 2, 0.5),      # stride 3, dilation 2: 9 phases
    (1, 4, 6, 75, 3, 3, 2, 0, 1, 0.5),       # stride 2, rows of 37 phase columns (3 vectors), even and odd starts
    (1, 6, 26, 26, 5, 3, 5, 1, 1, 0.5),      # stride 5: 25 phases > 16, patch matrix
    # task column ranges other than 128 wide (balanced over the threads; two threads in this suite)
    (1, 32, 14, 14, 64, 1, 1, 0, 1, 0.2),    # 196 columns in one range, the threads split the channels
    (1, 16, 28, 28, 40, 1, 1, 0, 1, 0.2),    # 784 columns in 112-column ranges
    (1, 16, 12, 12, 24, 1, 1, 0, 1, 0.2),    # 144 columns in 80-column ranges
])
def test_sparse_conv_matches_dense(isa, case):
    if isa != "python":
        ops.set_kernel_isa(isa)
    n, c, h, w, oc, k, s, p, d, density = case
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(oc, c, k, k, generator=gen) * (torch.rand(oc, c, k, k, generator=gen) < density)
    x, bias = torch.randn(n, c, h, w, generator=gen), torch.randn(oc, generator=gen)
    rp, ci, v = ops.sparse_pack(weight)
    assert ci.numel() == int((weight != 0).sum())
    for act in (0, 1, 2):
        y = ops.sparse_conv2d(x, rp, ci, v, bias, (k, k), (s, s), (p, p), (d, d), act)
        want = F.conv2d(x, weight, bias, s, p, d)
        want = want.clamp_min(0) if act == 1 else (want.clamp(0, 6) if act == 2 else want)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_parallel_loops_use_the_requested_threads():
    """The library is built with OpenMP: without it at::parallel_for silently runs on one thread."""
    if not ops.compiled():
        pytest.skip("the Python fallback runs torch ops")
    before = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.ops.edgecompress.kernel_threads() == n
    finally:
        torch.set_num_threads(before)


def test_sparse_conv_rectangular_geometry_and_unsorted_columns():
    """Different strides / padding / dilation per axis, and a CSR whose columns are not ascending
    within a row (valid CSR; the plan then reads each row in one block)."""
    gen = torch.Generator().manual_seed(5)
    for (kh, kw), st, pad, dil in [((3, 1), (2, 1), (1, 0), (1, 1)), ((1, 3), (1, 2), (0, 2), (1, 2)),
                                   ((3, 3), (1, 3), (2, 1), (2, 1))]:
        weight = torch.randn(10, 70, kh, kw, generator=gen) * (torch.rand(10, 70, kh, kw, generator=gen) < 0.4)
        x, bias = torch.randn(1, 70, 19, 23, generator=gen), torch.randn(10, generator=gen)
        rp, ci, v = ops.sparse_pack(weight)
        want = F.conv2d(x, weight, bias, st, pad, dil)
        torch.testing.assert_close(ops.sparse_conv2d(x, rp, ci, v, bias, (kh, kw), st, pad, dil), want,
                                   rtol=1e-5, atol=1e-5)
        perm = torch.cat([torch.randperm(int(rp[i + 1] - rp[i]), generator=gen) + int(rp[i]) for i in range(10)])
        torch.testing.assert_close(ops.sparse_conv2d(x, rp, ci[perm], v[perm], bias, (kh, kw), st, pad, dil), want,
                                   rtol=1e-5, atol=1e-5)


def test_sparse_plan_is_reused_and_checked():
    from edgecompress.kernels.modules import SparseConv2d

    gen = torch.Generator().manual_seed(6)
    conv = torch.nn.Conv2d(32, 16, 3, 2, 1).eval()
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=gen) < 0.2)
    sp = SparseConv2d.from_conv(conv)
    with torch.no_grad():
        for hw in [(15, 15), (15, 15), (8, 12), (15, 15)]:  # two sizes: two plans, each built once
            x = torch.randn(2, 32, *hw, generator=gen)
            torch.testing.assert_close(sp(x), conv(x), rtol=1e-5, atol=1e-5)
    assert len(sp._plans) == 2
    rp, ci, v = sp.row_ptr, sp.col_idx, sp.values
    plan = ops.sparse_plan(rp, ci, 32, 15, 15, (3, 3), (2, 2), (1, 1))
    x = torch.randn(1, 32, 15, 15, generator=gen)
    torch.testing.assert_close(ops.sparse_conv2d_planned(x, plan, rp, v, None, (3, 3), (2, 2), (1, 1)),
                               F.conv2d(x, conv.weight, None, 2, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="plan was built for a 32x15x15 input"):
        ops.sparse_conv2d_planned(torch.randn(1, 32, 16, 15), plan, rp, v, None, (3, 3), (2, 2), (1, 1))
    if ops.compiled():
        with pytest.raises(RuntimeError, match="differ from the plan"):
            ops.sparse_conv2d_planned(x, plan, rp, v, None, (3, 3), (1, 1), (1, 1))
        with pytest.raises(RuntimeError, match="not a sparse_plan result"):
            ops.sparse_conv2d_planned(x, plan[:-1].clone(), rp, v, None, (3, 3), (2, 2), (1, 1))
        with pytest.raises(RuntimeError, match="col_idx"):
            ops.sparse_plan(rp, ci, 8, 15, 15, (3, 3), (2, 2), (1, 1))


def test_sparse_plan_blocks_and_the_module_times_both():
    """By default the plan splits a wide layer's input channels into L1-sized blocks (a per-row block
    table follows the nonzero offsets); block_channels >= C gives one block. Both compute the conv, and
    SparseConv2d times the two on its first input and keeps one."""
    from edgecompress.kernels.modules import SPARSE_PLAN_HEADER, SparseConv2d

    if not ops.compiled():
        pytest.skip("the Python fallback has no block table")
    gen = torch.Generator().manual_seed(9)
    for k in (1, 3):
        p = (k - 1) // 2
        w = torch.randn(64, 512, k, k, generator=gen) * (torch.rand(64, 512, k, k, generator=gen) < 0.1)
        rp, ci, v = ops.sparse_pack(w)
        x = torch.randn(1, 512, 14, 14, generator=gen)
        want = F.conv2d(x, w, None, 1, p)
        blocked = ops.sparse_plan(rp, ci, 512, 14, 14, (k, k), (1, 1), (p, p))
        one = ops.sparse_plan(rp, ci, 512, 14, 14, (k, k), (1, 1), (p, p), block_channels=512)
        assert blocked.numel() > SPARSE_PLAN_HEADER + ci.numel() and one.numel() == SPARSE_PLAN_HEADER + ci.numel()
        for plan in (blocked, one):
            torch.testing.assert_close(ops.sparse_conv2d_planned(x, plan, rp, v, None, (k, k), (1, 1), (p, p)), want,
                                       rtol=1e-4, atol=1e-4)
        conv = torch.nn.Conv2d(512, 64, k, 1, p, bias=False)
        with torch.no_grad():
            conv.weight.copy_(w)
            sp = SparseConv2d.from_conv(conv)
            torch.testing.assert_close(sp(x), want, rtol=1e-4, atol=1e-4)
        assert sp.plan_choices[(512, 14, 14)] in ("L1 blocks", "one block")
    with pytest.raises(RuntimeError, match="block_channels must be >= 0"):
        ops.sparse_plan(rp, ci, 512, 14, 14, (3, 3), (1, 1), (1, 1), block_channels=-1)


def test_sparse_outputs_are_recycled_never_shared():
    """Outputs of >= 256 KiB come from the op's buffer cache: a live output is never handed out again,
    a freed one is reused by the next call of the same size (no fresh pages to fault in)."""
    if not ops.compiled():
        pytest.skip("the Python fallback allocates with torch")
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(32, 16, 1, 1, generator=gen) * (torch.rand(32, 16, 1, 1, generator=gen) < 0.3)
    rp, ci, v = ops.sparse_pack(w)
    x = torch.randn(1, 16, 64, 64, generator=gen)  # output 32 x 64 x 64 floats = 512 KiB

    def run(inp):
        return ops.sparse_conv2d(inp, rp, ci, v, None, (1, 1), (1, 1), (0, 0))

    y1, y2 = run(x), run(x)
    assert y1.data_ptr() != y2.data_ptr()
    freed = y2.data_ptr()
    del y2
    y3 = run(2 * x)
    assert y3.data_ptr() == freed
    torch.testing.assert_close(y1, F.conv2d(x, w), rtol=1e-5, atol=1e-5)  # not overwritten by the third call
    torch.testing.assert_close(y3, F.conv2d(2 * x, w), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.edgecompress.sparse_conv2d, (x, rp, ci, v, None, [1, 1], [1, 1], [0, 0], [1, 1], 0))


def test_int8_outputs_are_recycled_never_shared():
    """The int8 conv's outputs come from the same buffer cache, channels_last, with the same guarantees."""
    if not ops.compiled():
        pytest.skip("the Python fallback allocates with torch")
    gen = torch.Generator().manual_seed(9)
    x = torch.randint(0, 256, (1, 3, 130, 130), dtype=torch.uint8, generator=gen).contiguous(memory_format=CL)
    wq = torch.randint(-127, 128, (32, 3, 7, 7), dtype=torch.int8, generator=gen)
    pk = ops.int8_pack_weight(wq, 1)
    ws, wz = torch.full((32,), 0.01), torch.zeros(32, dtype=torch.int32)

    def run(inp):  # a stride-2 7x7 stem: padded input, patch rows; output 32 x 65 x 65 int32 = 528 KiB
        return ops.int8_conv2d(inp, 0.05, 3, pk, ws, wz, None, 32, (7, 7), (2, 2), (3, 3), (1, 1), 1, 0, 1.0, 0,
                               torch.int32)

    y1, y2 = run(x), run(x)
    assert y1.data_ptr() != y2.data_ptr() and y1.is_contiguous(memory_format=CL)
    freed = y2.data_ptr()
    del y2
    x2 = (255 - x).contiguous(memory_format=CL)
    y3 = run(x2)
    assert y3.data_ptr() == freed
    assert torch.equal(y1.to(torch.int64), int64_conv(x, 3, wq, wz, (2, 2), (3, 3), (1, 1), 1))  # not overwritten
    assert torch.equal(y3.to(torch.int64), int64_conv(x2, 3, wq, wz, (2, 2), (3, 3), (1, 1), 1))


def test_opcheck_all_ops():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=gen).contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.edgecompress.quantize_u8, (x, 0.05, 128))
    w = torch.randint(-127, 128, (16, 8, 3, 3), dtype=torch.int8, generator=gen)
    torch.library.opcheck(torch.ops.edgecompress.int8_pack_weight, (w, 1))
    q = ops.quantize_u8(x, 0.05, 128)
    pk = ops.int8_pack_weight(w)
    for out_dtype, act, bias in [(torch.uint8, 1, torch.randn(16)), (torch.float32, 2, None), (torch.int32, 0, None)]:
        torch.library.opcheck(torch.ops.edgecompress.int8_conv2d,
                              (q, 0.05, 128, pk, torch.full((16,), 0.01), torch.zeros(16, dtype=torch.int32), bias,
                               16, [3, 3], [2, 2], [1, 1], [1, 1], 1, act, 0.1, 3, out_dtype))
    wf = torch.randn(16, 8, 3, 3, generator=gen) * (torch.rand(16, 8, 3, 3, generator=gen) > 0.7)
    rp, ci, v = ops.sparse_pack(wf)
    torch.library.opcheck(torch.ops.edgecompress.sparse_conv2d,
                          (torch.randn(2, 8, 9, 9), rp, ci, v, torch.randn(16), [3, 3], [1, 1], [1, 1], [1, 1], 1))
    plan = ops.sparse_plan(rp, ci, 8, 9, 9, (3, 3), (2, 2), (1, 1))
    torch.library.opcheck(torch.ops.edgecompress.sparse_conv2d_planned,
                          (torch.randn(2, 8, 9, 9), plan, rp, v, torch.randn(16), [3, 3], [2, 2], [1, 1], [1, 1], 2))


def _conv_args(**over):
    x = torch.randint(0, 256, (1, 8, 6, 6), dtype=torch.uint8).contiguous(memory_format=CL)
    w = torch.randint(-127, 128, (16, 8, 3, 3), dtype=torch.int8)
    a = dict(x=x, x_scale=0.05, x_zero_point=3, w_packed=ops.int8_pack_weight(w), w_scale=torch.full((16,), 0.01),
             w_zero_point=torch.zeros(16, dtype=torch.int32), bias=None, out_channels=16, kernel_size=[3, 3],
             stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, activation=0, out_scale=0.1,
             out_zero_point=0, out_dtype=torch.float32)
    a.update(over)
    return list(a.values())


@pytest.mark.parametrize("over, message", [
    (dict(x=torch.zeros(1, 8, 6, 6, dtype=torch.float32).contiguous(memory_format=CL)), "x must be uint8"),
    (dict(x=torch.zeros(1, 8, 6, 6, dtype=torch.uint8)), "channels_last"),
    (dict(x=torch.zeros(1, 4, 6, 6, dtype=torch.uint8).contiguous(memory_format=CL)), "x has 4 channels"),
    (dict(w_scale=torch.full((15,), 0.01)), "w_scale must be float32 with one scale per output channel"),
    (dict(w_scale=torch.zeros(16)), "w_scale[0] = 0"),
    (dict(w_scale=torch.full((16,), -0.1)), "w_scale[0] = -0.1"),
    (dict(w_zero_point=torch.zeros(16, dtype=torch.int64)), "w_zero_point must be int32"),
    (dict(w_zero_point=torch.full((16,), 200, dtype=torch.int32)), "outside int8"),
    (dict(x_scale=0.0), "x_scale: expected a finite scale > 0"),
    (dict(x_scale=float("nan")), "x_scale: expected a finite scale > 0"),
    (dict(x_zero_point=300), "x_zero_point must be in [0, 255]"),
    (dict(out_dtype=torch.uint8, out_scale=-1.0), "out_scale"),
    (dict(out_dtype=torch.float16), "out_dtype must be"),
    (dict(out_dtype=torch.int32, bias=torch.zeros(16)), "raw accumulators"),
    (dict(out_channels=32), "do not match w_packed"),
    (dict(w_packed=torch.zeros(100, dtype=torch.int8)), "not produced by int8_pack_weight"),
    (dict(bias=torch.zeros(16, dtype=torch.float64)), "bias must be a float32"),
    (dict(activation=3), "activation must be"),
    (dict(stride=[0, 1]), "stride"),
    (dict(x=torch.zeros(1, 8, 1, 1, dtype=torch.uint8).contiguous(memory_format=CL), padding=[0, 0]), "smaller than"),
])
def test_int8_conv_bad_input_names_the_argument(over, message):
    if not ops.compiled():
        pytest.skip("argument checks are the C++ TORCH_CHECKs")
    with pytest.raises(RuntimeError) as ei:
        torch.ops.edgecompress.int8_conv2d(*_conv_args(**over))
    assert message in str(ei.value), str(ei.value)


def test_sparse_and_pack_bad_input():
    if not ops.compiled():
        pytest.skip("argument checks are the C++ TORCH_CHECKs")
    E = torch.ops.edgecompress
    with pytest.raises(RuntimeError, match="weight must be torch.int8"):
        E.int8_pack_weight(torch.zeros(4, 4, 3, 3), 1)
    with pytest.raises(RuntimeError, match="divisible by groups"):
        E.int8_pack_weight(torch.zeros(6, 4, 3, 3, dtype=torch.int8), 4)
    rp, ci, v = ops.sparse_pack(torch.randn(4, 2, 3, 3))
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(RuntimeError, match="col_idx"):
        E.sparse_conv2d(torch.randn(1, 1, 5, 5), rp, ci, v, None, [3, 3], [1, 1], [0, 0], [1, 1], 0)
    with pytest.raises(RuntimeError, match="values must be 1-D float32"):
        E.sparse_conv2d(x, rp, ci, v[:-1], None, [3, 3], [1, 1], [0, 0], [1, 1], 0)
    with pytest.raises(RuntimeError, match="x must be float32"):
        E.sparse_conv2d(x.double(), rp, ci, v, None, [3, 3], [1, 1], [0, 0], [1, 1], 0)
    with pytest.raises(RuntimeError, match="set_kernel_isa: isa='sse'"):
        E.set_kernel_isa("sse")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e,
                          timeout=600)


def test_cpu_without_avx2_uses_reference_and_refuses_avx2():
    """EDGECOMPRESS_HIDE_CPU_FEATURES makes the dispatcher see a CPU without AVX2/VNNI (the default path
    becomes the portable one; asking for AVX2 is a clear error, not an illegal instruction)."""
    if not ops.compiled():
        pytest.skip("needs the compiled library")
    r = _run("""
        import torch
        from edgecompress.kernels import ops
        print(ops.load())
        try:
            ops.set_kernel_isa("avx2")
        except RuntimeError as e:
            print("ERR", str(e).splitlines()[0])
    """, EDGECOMPRESS_HIDE_CPU_FEATURES="avx2,avx512_vnni,amx")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "ref"
    assert lines[1].startswith("ERR set_kernel_isa: this CPU does not support 'avx2'")


def test_ncnn_depthwise_simulation_without_kernels_warns_and_uses_an_exact_reciprocal():
    r = _run("""
        import copy, warnings, torch, torch.nn as nn
        from edgecompress.quantize import QuantConfig, quantize_
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16)).eval()
        x = torch.randn(4, 3, 8, 8)
        quantize_(m, QuantConfig(calib_batches=1, stability_splits=0), [(x, None)], target="ncnn", progress=False)
        with warnings.catch_warnings(record=True) as w, torch.no_grad():
            warnings.simplefilter("always")
            y = m(x); m(x)
        print(len([a for a in w if "exact reciprocal" in str(a.message)]), bool(torch.isfinite(y).all()))
    """, EDGECOMPRESS_DISABLE_KERNELS="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "True"]  # one warning, a usable simulation


def test_disabled_kernels_fall_back_to_reference_exactly():
    r = _run("""
        import warnings, torch
        from edgecompress.kernels import ops, reference
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            print(ops.load())
        print(len([x for x in w if "kernels unavailable" in str(x.message)]))
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (1, 8, 6, 6), dtype=torch.uint8, generator=g).contiguous(memory_format=torch.channels_last)
        wq = torch.randint(-127, 128, (16, 8, 3, 3), dtype=torch.int8, generator=g)
        y = ops.int8_conv2d(x, 0.05, 3, ops.int8_pack_weight(wq), torch.full((16,), 0.01),
                            torch.zeros(16, dtype=torch.int32), None, 16, (3, 3), (1, 1), (1, 1), out_dtype=torch.int32)
        print(int(y.sum()))
    """, EDGECOMPRESS_DISABLE_KERNELS="1")
    assert r.returncode == 0, r.stderr
    backend, n_warn, total = r.stdout.strip().splitlines()
    assert backend == "python" and n_warn == "0"  # chosen explicitly: silent
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 8, 6, 6), dtype=torch.uint8, generator=g)
    wq = torch.randint(-127, 128, (16, 8, 3, 3), dtype=torch.int8, generator=g)
    assert int(total) == int(int64_conv(x, 3, wq, torch.zeros(16, dtype=torch.int32), (1, 1), (1, 1), (1, 1), 1).sum())


def test_build_failure_warns_once_and_falls_back(tmp_path):
    r = _run("""
        import warnings, torch
        from edgecompress.kernels import ops
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            print(ops.load()); print(ops.load())
            x = torch.randn(1, 4, 3, 3)
            print(int(ops.quantize_u8(x, 0.1, 128).numel()))
        print(sum("kernels unavailable" in str(x.message) for x in w))
    """, EDGECOMPRESS_CACHE=str(tmp_path / "cache"), CXX="/nonexistent/g++")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["python", "python", "36", "1"]


def test_wheel_ships_the_kernel_sources(tmp_path):
    """A non-editable install compiles from the sources inside the package (edgecompress/kernels/csrc)."""
    import zipfile
    from pathlib import Path

    from edgecompress.kernels import _build

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "whl")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "whl").glob("edgecompress-*.whl")
    zipfile.ZipFile(whl).extractall(tmp_path / "site")
    shipped = _build.source_dir(tmp_path / "site" / "edgecompress" / "kernels")
    assert shipped == tmp_path / "site" / "edgecompress" / "kernels" / "csrc" and not shipped.is_symlink()
    repo = root / "cpp_kernels" / "src"
    for name in _build.SOURCES + _build.HEADERS + _build.CUDA_SOURCES:
        assert (shipped / name).read_bytes() == (repo / name).read_bytes(), name


def test_kernel_modules_trace_under_compile_and_export():
    """Int8Conv2d and SparseConv2d run under torch.compile (one graph, through the ops' fake kernels) and
    torch.export with the eager results."""
    from edgecompress.kernels.modules import Int8Conv2d, SparseConv2d

    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 8, 10, 10, generator=gen)
    w = torch.randn(8, 8, 3, 3, generator=gen) * (torch.rand(8, 8, 3, 3, generator=gen) < 0.3)
    sp = SparseConv2d(*ops.sparse_pack(w), torch.randn(8, generator=gen), 8, (3, 3), padding=(1, 1))
    wq = torch.randint(-127, 128, (8, 8, 3, 3), dtype=torch.int8, generator=gen)
    q = Int8Conv2d(wq, torch.full((8,), 0.01), None, torch.zeros(8), 0.05, 3, (1, 1), (1, 1), (1, 1), 1)
    with torch.no_grad():
        for m in (sp, q):
            want = m(x)
            torch._dynamo.reset()
            assert torch.equal(torch.compile(m, fullgraph=True, backend="aot_eager")(x), want)
            assert torch.equal(torch.export.export(m, (x,)).module()(x), want)
