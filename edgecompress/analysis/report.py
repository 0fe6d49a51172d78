"""report.json + report.md + report.html from the report dict of ``compress``."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _num(v) -> str:
    return "–" if v is None else f"{v:,}"


def report_tables(r: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables shared by the Markdown and HTML renderings."""
    b, a = r.get("before", {}), r.get("after", {})
    q = r.get("int8_simulated", {})
    tables = []
    rows = [
        ["params", _num(b.get("params")), _num(a.get("params")), f"{a['params'] / b['params']:.3f}" if b.get("params") else "–"],
        ["MACs / image", _num(b.get("macs")), _num(a.get("macs")), f"{a['macs'] / b['macs']:.3f}" if b.get("macs") else "–"],
        ["top-1", _pct(b.get("top1")), _pct(a.get("top1")), ""],
        ["agreement with original", "100.00%", _pct(a.get("agreement_with_original")), ""],
    ]
    if q:
        rows.append(["top-1, int8 simulated (" + q.get("scheme", "") + ")", "", _pct(q.get("top1")), ""])
    tables.append((f"Model (validation: {a.get('val_images', b.get('val_images', '–'))} images)",
                   ["", "original", "compressed", "ratio"], rows))
    arts = r.get("artifacts", {})
    if arts:
        tables.append(("Artifacts, re-run in their own runtime vs PyTorch",
                       ["artifact", "runtime", "files", "bytes", "max abs diff", "SQNR dB", "top-1 agreement", "samples", "passed"],
                       [[k, v["runtime"], "not written: " + v["skipped"][:120], "", "", "", "", "", ""] if "skipped" in v else
                        [k, v["runtime"], ", ".join(v["files"]), _num(v["bytes"]), f"{v['max_abs_diff']:.2e}",
                         f"{v['sqnr_db']:.1f}", _pct(v["top1_agreement"]), str(v["samples"]), str(v["passed"])]
                        for k, v in arts.items()]))
    lat = r.get("latency", {})
    if lat:
        any_ = next(iter(lat.values()))
        tables.append((f"CPU latency, batch {any_['batch']}, {any_['threads']} thread(s), {any_['iters']} interleaved runs",
                       ["runtime", "median ms", "p90 ms", "p99 ms", "mean ms"],
                       [[k, f"{v['ms_median']:.3f}", f"{v['ms_p90']:.3f}", f"{v['ms_p99']:.3f}", f"{v['ms_mean']:.3f}"]
                        for k, v in lat.items()]))
    p = r.get("prune")
    if p:
        wb, wa = p["widths_before"], p["widths_after"]
        c = p["config"]
        skipped = f", {len(p['skipped'])} group(s) left intact (see report.json)" if p.get("skipped") else ""
        tables.append((f"Pruning: {c['method']} {c['mode']} ratio {c['ratio']}, {p['groups_pruned']} groups, "
                       f"{p['channels_removed']} channels removed{skipped}",
                       ["layer", "in before", "out before", "in after", "out after"],
                       [[n, str(wb[n][0]), str(wb[n][1]), str(wa[n][0]), str(wa[n][1])] for n in wa if wb.get(n) != wa[n]]))
    if q.get("layers"):
        tables.append((f"int8 simulation: {q.get('contract', q.get('scheme'))} contract, {q.get('calibration')} "
                       f"calibration on {q.get('calib_batches')} batches",
                       ["layer", "act scale", "zero point", "range", "range spread", "weight SQNR dB", "int8"],
                       [[n, f"{v['act_scale']:.4g}", str(v["act_zero_point"]),
                         f"[{v['act_range'][0]:.3g}, {v['act_range'][1]:.3g}]",
                         "–" if v.get("stability") is None else f"{v['stability']:.1%}" + (" (unstable)" if n in q.get("unstable_layers", []) else ""),
                         "–" if v.get("weight_sqnr_db") is None else f"{v['weight_sqnr_db']:.1f}",
                         "float: " + q["float_layers"].get(n, "") if v.get("float") else "yes"]
                        for n, v in q["layers"].items()]))
    sim = r.get("similarity")
    if sim:
        tables.append((f"Functional similarity on {sim['samples']} validation images (softmax outputs)",
                       ["pair", "top-1 agreement", "mean KL(first ‖ second)", "mean JS"],
                       [[k.replace("|", " vs "), _pct(v["agreement"]), f"{v['kl_mean']:.4f}", f"{v['js_mean']:.4f}"]
                        for k, v in sim["pairs"].items()]))
    d = r.get("distill")
    if d:
        w = f", α={d['alpha']:.3g} β={d['beta']:.3g} T={d['temperature']:g}" if "alpha" in d else ""
        if d.get("weight_allocation"):
            a = d["weight_allocation"]
            w += f" (eq. 7 from probes: I_A={a['I_A']:.4f}, I_B={a['I_B']:.4f})"
        tables.append((f"Distillation (teacher: {d['teacher']}{w})", ["epoch", "loss", "val top-1", "seconds"],
                       [[str(h["epoch"]), f"{h['loss']:.4f}", _pct(h.get("val_top1")), str(h["seconds"])] for h in d["history"]]))
    return tables


def to_markdown(r: dict) -> str:
    lines = [f"# edgecompress report: target `{r.get('target')}`", "",
             f"edgecompress {r.get('edgecompress')}, torch {r.get('torch')}, wall time {r.get('wall_seconds', '–')} s", ""]
    for title, header, rows in report_tables(r):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    land = r.get("similarity", {}).get("landscape")
    if land:
        lines += ["## Functional landscape", "", f"![functional landscape]({land['file']})", ""]
    return "\n".join(lines)


def to_html(r: dict) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>edgecompress report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
             "td:first-child{text-align:left}</style></head><body>",
             f"<h1>edgecompress report: target <code>{e(str(r.get('target')))}</code></h1>",
             f"<p>edgecompress {e(str(r.get('edgecompress')))}, torch {e(str(r.get('torch')))}, "
             f"wall time {e(str(r.get('wall_seconds', '–')))} s</p>"]
    for title, header, rows in report_tables(r):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    land = r.get("similarity", {}).get("landscape")
    if land:
        parts.append(f"<h2>Functional landscape</h2><img src='{e(land['file'])}' alt='functional landscape'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(r: dict, directory: str | Path) -> dict[str, Path]:
    d = Path(directory)
    out = {"json": d / "report.json", "md": d / "report.md", "html": d / "report.html"}
    out["json"].write_text(json.dumps(r, indent=2, default=str))
    out["md"].write_text(to_markdown(r))
    out["html"].write_text(to_html(r))
    return out
