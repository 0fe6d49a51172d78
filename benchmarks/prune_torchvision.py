"""Every classifier constructor in torchvision.models through structured pruning (ℓ2, ratio 0.5) on a
64x64 input: does it run, how much of the MACs went, which groups were left intact and why.

    python benchmarks/prune_torchvision.py --out benchmarks/results/prune_torchvision
    python benchmarks/prune_torchvision.py --only swin_t,swin_s --tag _swin   # a subset, own files
    python benchmarks/prune_torchvision.py --combine   # join every run's rows (newest per model)

A run prints one JSON row per model as it goes (keep its stdout as ``*.jsonl`` to combine a run that
was cut off).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
import torchvision

from edgecompress.prune import PruneConfig, prune_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--out", default="benchmarks/results/prune_torchvision")
    ap.add_argument("--combine", action="store_true", help="join the rows of all runs in --out into *_all files")
    a = ap.parse_args()
    if a.combine:
        combine(Path(a.out))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, a.size, a.size)
    rows, details = [], {}
    names = torchvision.models.list_models(module=torchvision.models)
    if a.only:
        names = [n for n in names if n in a.only.split(",")]
    for name in names:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
        row = {"model": name}
        try:
            with torch.no_grad():
                model(x)
        except Exception as e:  # noqa: BLE001 - recorded, not pruned
            row.update(status="does not run at this size", reason=f"{type(e).__name__}: {str(e)[:120]}")
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        t0 = time.time()
        try:
            rep = prune_(model, PruneConfig(method="l2", ratio=a.ratio), (x,))
            with torch.no_grad():
                model(x)
            frac = rep["macs_after"] / rep["macs_before"]
            row.update(status="pruned" if frac <= 0.8 else "barely pruned", macs_left=round(frac, 4),
                       groups=f"{rep['groups_pruned']}/{rep['groups_found']}", skipped=len(rep["skipped"]),
                       partitioned=rep.get("partitioned", False), seconds=round(time.time() - t0, 1))
            details[name] = rep["skipped"]
        except Exception as e:  # noqa: BLE001 - a crash is a finding: recorded
            row.update(status="error", reason=f"{type(e).__name__}: {str(e)[:200]}", seconds=round(time.time() - t0, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = KEYS
    with open(out / f"torchvision_l2_0.5{a.tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (out / f"torchvision_l2_0.5{a.tag}_skipped.json").write_text(json.dumps(details, indent=1))
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    (out / f"summary{a.tag}.json").write_text(json.dumps({"ratio": a.ratio, "input": [1, 3, a.size, a.size],
                                                  "torchvision": torchvision.__version__, "counts": counts}, indent=1))
    print(counts)


KEYS = ["model", "status", "macs_left", "groups", "skipped", "partitioned", "seconds", "reason"]


def combine(out: Path) -> None:
    """One table over every constructor from the runs' CSV and JSONL files (later files win)."""
    rows: dict[str, dict] = {}
    for f in sorted(out.glob("torchvision_l2_0.5*.jsonl")) + sorted(out.glob("torchvision_l2_0.5*.csv")):
        if f.stem.endswith("_all"):
            continue
        if f.suffix == ".jsonl":
            got = [json.loads(line) for line in f.read_text().splitlines() if line.startswith("{")]
        else:
            with open(f, newline="") as fh:
                got = list(csv.DictReader(fh))
        for r in got:
            rows[r["model"]] = {**r, "source": f.name}
    names = torchvision.models.list_models(module=torchvision.models)
    missing = [n for n in names if n not in rows]
    with open(out / "torchvision_l2_0.5_all.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=KEYS + ["source"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows[n] for n in names if n in rows)
    counts: dict[str, int] = {}
    for n in names:
        if n in rows:
            counts[rows[n]["status"]] = counts.get(rows[n]["status"], 0) + 1
    summary = {"constructors": len(names), "measured": len(names) - len(missing), "missing": missing,
               "counts": counts, "torchvision": torchvision.__version__, "torch": torch.__version__}
    (out / "summary_all.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
