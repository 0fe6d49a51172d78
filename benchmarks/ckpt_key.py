"""The checkpoint key the benchmark scripts share: a short hash of a model's weights and of the
settings of the run, so a resumed run never picks up a student trained from other weights."""

from __future__ import annotations

import hashlib

import torch


def ckpt_key(*parts) -> str:
    """sha256 (12 hex digits) over each part: a module's state_dict (sorted by name), else str(part)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.nn.Module):
            for k, v in sorted(p.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(str(p).encode())
    return h.hexdigest()[:12]
