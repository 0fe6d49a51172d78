"""Pure-PyTorch implementations of the kernel ops: the same packed layout, the same integer sums, the
same float epilogue (operation by operation), so the C++ paths can be compared with them exactly.
They are the fallback when the C++ library cannot be built, and the tests' second opinion.

Integer sums are computed as float64 convolutions of integer-valued tensors: every product
(|u8 - zp| * |s8 - zp| <= 255 * 255) and every partial sum (< 2^53) is exact, whatever the order."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAGIC, VERSION, FORMAT_CPU = 0x50384345, 1, 1
ACT_NONE, ACT_RELU, ACT_RELU6 = 0, 1, 2


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def pack_plan(oc: int, icg: int, kh: int, kw: int, groups: int) -> dict:
    """Sizes of the packed blob, mirrored from ops.cpp's plan_pack (the fake kernel uses it too)."""
    depthwise = groups > 1 and icg == 1 and oc == groups and kh * kw <= 64
    if depthwise:
        g_eff, np_, kp = 1, _round_up(oc, 16), _round_up(kh * kw, 4)
    else:
        g_eff, np_, kp = groups, _round_up(oc // groups, 16), _round_up(icg * kh * kw, 4)
    wbytes = g_eff * np_ * kp
    cs_off = 64 + _round_up(wbytes, 64)
    total = cs_off + 4 * oc
    # the space-to-depth copy of a few-channel, large-kernel weight (a 7x7 RGB stem), after the column sums
    kg, kh2, s2d_run = icg * kh * kw, (kh + 1) // 2, (kw + 1) // 2 * 4 * icg
    s2d_kp = s2d_off = 0
    if groups == 1 and s2d_run <= 64 and kg > 128 and kh2 <= (kg + 63) // 64 + 1:
        s2d_kp, s2d_off = kh2 * s2d_run, _round_up(total, 64)
        total = s2d_off + np_ * s2d_kp
    return {"depthwise": depthwise, "g_eff": g_eff, "np": np_, "kp": kp, "wbytes": wbytes, "cs_off": cs_off,
            "s2d_kp": s2d_kp, "s2d_off": s2d_off, "total": total}


def pack_plan_cuda(oc: int, icg: int, kh: int, kw: int, groups: int) -> dict:
    """Blob size of the CUDA packing (cpp_kernels/src/cuda/launch.h): 64x32 dp4a tiles, or rows for
    depthwise / narrow groups."""
    depthwise = groups > 1 and icg == 1 and oc == groups
    ocg, kg = oc // groups, icg * kh * kw
    wbytes = groups * _round_up(ocg, 64) * _round_up(kg, 32) if (not depthwise and ocg >= 16) else oc * _round_up(kg, 4)
    cs_off = 64 + _round_up(wbytes, 64)
    return {"total": cs_off + 4 * oc}


def pack_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    oc, icg, kh, kw = weight.shape
    p = pack_plan(oc, icg, kh, kw, groups)
    w = weight.to(torch.int8)
    if p["depthwise"]:
        wk = w.reshape(1, oc, kh * kw)
    else:
        wk = w.permute(0, 2, 3, 1).reshape(groups, oc // groups, kh * kw * icg)  # k in (kh, kw, ic) order
    g_eff, np_, kp = p["g_eff"], p["np"], p["kp"]
    full = torch.zeros(g_eff, np_, kp, dtype=torch.int8)
    full[:, : wk.shape[1], : wk.shape[2]] = wk
    body = full.view(g_eff, np_ // 16, 16, kp // 4, 4).permute(0, 1, 3, 2, 4).reshape(-1)
    blob = torch.zeros(p["total"], dtype=torch.int8)
    header = torch.tensor([MAGIC, VERSION, FORMAT_CPU, oc, icg, kh, kw, groups, icg * kh * kw, kp, oc // groups, np_,
                           int(p["depthwise"]), 64, p["cs_off"], p["total"]], dtype=torch.int32)
    blob[:64] = header.view(torch.int8)
    blob[64: 64 + body.numel()] = body
    blob[p["cs_off"]: p["cs_off"] + 4 * oc] = w.to(torch.int32).flatten(1).sum(1).to(torch.int32).view(torch.int8)
    if p["s2d_kp"]:
        # tap (2r + a, 2j + b) of channel c at reduction index ((r * kw2 + j) * 2 + a) * 2 * icg + b * icg + c
        kh2, kw2 = (kh + 1) // 2, (kw + 1) // 2
        w8 = torch.zeros(oc, icg, 2 * kh2, 2 * kw2, dtype=torch.int8)
        w8[:, :, :kh, :kw] = w
        w2 = w8.view(oc, icg, kh2, 2, kw2, 2).permute(0, 2, 4, 3, 5, 1).reshape(oc, p["s2d_kp"])
        full2 = torch.zeros(np_, p["s2d_kp"], dtype=torch.int8)
        full2[:oc] = w2
        body2 = full2.view(np_ // 16, 16, p["s2d_kp"] // 4, 4).permute(0, 2, 1, 3).reshape(-1)
        blob[p["s2d_off"]: p["s2d_off"] + body2.numel()] = body2
    return blob


def read_header(blob: torch.Tensor) -> dict:
    h = blob[:64].clone().view(torch.int32).tolist()
    keys = ["magic", "version", "format", "oc", "icg", "kh", "kw", "groups", "kg", "kp", "ocg", "np", "depthwise",
            "w_offset", "cs_offset", "total"]
    return dict(zip(keys, h))


def unpack_weight(blob: torch.Tensor) -> torch.Tensor:
    """The int8 weight [OC, IC/groups, KH, KW] stored in a packed blob."""
    h = read_header(blob)
    if h["magic"] != MAGIC or h["version"] != VERSION or h["format"] != FORMAT_CPU:
        raise ValueError("w_packed was not produced by int8_pack_weight for the CPU; repack the weight")
    oc, icg, kh, kw, groups = h["oc"], h["icg"], h["kh"], h["kw"], h["groups"]
    p = pack_plan(oc, icg, kh, kw, groups)
    g_eff, np_, kp = p["g_eff"], p["np"], p["kp"]
    body = blob[64: 64 + p["wbytes"]].view(g_eff, np_ // 16, kp // 4, 16, 4).permute(0, 1, 3, 2, 4)
    full = body.reshape(g_eff, np_, kp)
    if p["depthwise"]:
        return full[0, :oc, : kh * kw].reshape(oc, 1, kh, kw).contiguous()
    return (full[:, : oc // groups, : kh * kw * icg].reshape(groups, oc // groups, kh, kw, icg)
            .permute(0, 1, 4, 2, 3).reshape(oc, icg, kh, kw).contiguous())


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    s = torch.tensor(scale, dtype=torch.float32)
    q = torch.round(x.float() / s) + zero_point  # torch.round: half to even, as the kernels' cvtps
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return q.nan_to_num(0.0).clamp(0, 255).to(torch.uint8).contiguous(memory_format=fmt)


def int8_conv2d_acc(x: torch.Tensor, x_zero_point: int, w: torch.Tensor, w_zero_point: torch.Tensor, stride, padding,
                    dilation, groups: int) -> torch.Tensor:
    """Exact int32 sums  sum (x_q - x_zp)(w_q - w_zp[oc])  (padding contributes the real value 0)."""
    xi = x.to(torch.float64) - float(x_zero_point)
    wi = w.to(torch.float64) - w_zero_point.to(torch.float64).view(-1, 1, 1, 1)
    return F.conv2d(xi, wi, None, tuple(stride), tuple(padding), tuple(dilation), groups).round().to(torch.int32)


def epilogue(acc: torch.Tensor, x_scale: float, w_scale: torch.Tensor, bias, activation: int, out_scale: float,
             out_zero_point: int, out_dtype: torch.dtype) -> torch.Tensor:
    if out_dtype == torch.int32:
        return acc
    mult = torch.tensor(x_scale, dtype=torch.float32) * w_scale.float()
    v = acc.float() * mult.view(1, -1, 1, 1)
    v = v + (bias.float().view(1, -1, 1, 1) if bias is not None else torch.zeros((), dtype=torch.float32))
    if activation == ACT_RELU:
        v = v.clamp_min(0.0)
    elif activation == ACT_RELU6:
        v = v.clamp(0.0, 6.0)
    if out_dtype == torch.float32:
        return v
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(out_scale, dtype=torch.float32)  # float32 1/s
    q = torch.round(v * inv) + out_zero_point  # requantize: multiply by the reciprocal, as the kernels do
    return q.clamp(0, 255).to(torch.uint8)


def int8_conv2d(x, x_scale, x_zero_point, w_packed, w_scale, w_zero_point, bias, out_channels, kernel_size, stride,
                padding, dilation, groups, activation, out_scale, out_zero_point, out_dtype):
    h = read_header(w_packed)
    if (h["oc"], h["kh"], h["kw"], h["groups"]) != (out_channels, kernel_size[0], kernel_size[1], groups):
        raise ValueError("int8_conv2d: out_channels/kernel_size/groups do not match w_packed")
    w = unpack_weight(w_packed)
    acc = int8_conv2d_acc(x, x_zero_point, w, w_zero_point, stride, padding, dilation, groups)
    y = epilogue(acc, x_scale, w_scale, bias, activation, out_scale, out_zero_point, out_dtype)
    return y.contiguous(memory_format=torch.channels_last)


def sparse_conv2d(x, row_ptr, col_idx, values, bias, kernel_size, stride, padding, dilation, activation):
    oc = row_ptr.numel() - 1
    c = x.shape[1]
    kh, kw = kernel_size
    rows = torch.repeat_interleave(torch.arange(oc), (row_ptr[1:] - row_ptr[:-1]).to(torch.int64))
    dense = torch.zeros(oc, c * kh * kw, dtype=torch.float32)
    dense[rows, col_idx.to(torch.int64)] = values.float()
    dense = dense.view(oc, c, kh, kw)
    y = F.conv2d(x.float(), dense, bias, tuple(stride), tuple(padding), tuple(dilation))
    if activation == ACT_RELU:
        y = y.clamp_min(0.0)
    elif activation == ACT_RELU6:
        y = y.clamp(0.0, 6.0)
    return y


# The Python fallback's "plan" is a header [C, H, W, OC, nnz, 0, 0, 0] followed by col_idx: the
# reference conv needs nothing else (the compiled plan holds source offsets instead).
_PLAN_HEADER = 8


def sparse_plan(row_ptr, col_idx, in_channels, height, width, kernel_size, stride, padding, dilation, block_channels=0):
    if block_channels < 0:
        raise RuntimeError(f"sparse_plan: block_channels must be >= 0 (0: chosen for L1), got {block_channels}")
    oc, nnz = row_ptr.numel() - 1, col_idx.numel()
    k = in_channels * kernel_size[0] * kernel_size[1]
    if nnz and (int(col_idx.min()) < 0 or int(col_idx.max()) >= k):
        raise RuntimeError(f"sparse_plan: col_idx has entries outside [0, C*KH*KW = {k})")
    head = torch.tensor([in_channels, height, width, oc, nnz, 0, 0, 0], dtype=torch.int32)
    return torch.cat([head, col_idx.to(torch.int32)])


def sparse_conv2d_planned(x, plan, row_ptr, values, bias, kernel_size, stride, padding, dilation, activation):
    c, h, w, oc, nnz = (int(v) for v in plan[:5])
    if (x.shape[1], x.shape[2], x.shape[3]) != (c, h, w) or row_ptr.numel() != oc + 1 or values.numel() != nnz:
        raise RuntimeError(f"sparse_conv2d_planned: the plan was built for a {c}x{h}x{w} input with {nnz} nonzeros; "
                           "build one for this input with sparse_plan")
    return sparse_conv2d(x, row_ptr, plan[_PLAN_HEADER:], values, bias, kernel_size, stride, padding, dilation,
                         activation)


def conv_out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return math.floor((n + 2 * p - d * (k - 1) - 1) / s) + 1
