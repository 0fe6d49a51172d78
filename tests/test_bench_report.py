import time

from edgecompress.analysis.report import to_html, to_markdown, write_report
from edgecompress.bench import measure_interleaved


def test_interleaved_latency_stats():
    calls = []
    stats = measure_interleaved({"a": lambda: (calls.append("a"), time.sleep(0.002)), "b": lambda: calls.append("b")},
                                threads=1, warmup=2, iters=10)
    assert calls[:8] == ["a", "a", "b", "b", "a", "b", "a", "b"] and len(calls) == 24  # warm-up, then interleaved
    a, b = stats["a"], stats["b"]
    assert a.iters == 10 and a.ms_median >= 2.0 and a.ms_p90 >= a.ms_median and a.ms_p99 >= a.ms_p90
    assert b.ms_median < a.ms_median


def test_block_interleaving_rewarms_and_cools_down():
    calls, sleeps = [], []
    stats = measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, threads=1,
                                warmup=0, iters=5, block=3, rewarm=1, cooldown_s={"a": 0.01},
                                setups={"b": lambda: sleeps.append(1)}, keep_times=True)
    # blocks of 3 timed calls, each after 1 untimed one; the last block holds the remaining 2
    assert "".join(calls) == "aaaa" "bbbb" "aaa" "bbb"
    assert len(stats["a"].times) == len(stats["b"].times) == 5 and stats["a"].iters == 5
    assert len(sleeps) == 7  # setups run before every call of b, timed or not


def test_report_renders_numbers(tmp_path):
    r = {"target": "ncnn", "edgecompress": "0", "torch": "x",
         "before": {"params": 1000, "macs": 4000, "top1": 0.9, "val_images": 10},
         "after": {"params": 250, "macs": 1000, "top1": 0.85, "agreement_with_original": 0.9, "val_images": 10},
         "artifacts": {"onnx": {"runtime": "onnxruntime", "files": ["model.onnx"], "bytes": 123, "max_abs_diff": 1e-6,
                                "sqnr_db": 120.0, "top1_agreement": 1.0, "samples": 10, "passed": True}},
         "latency": {"torch": {"batch": 1, "threads": 1, "iters": 5, "ms_median": 1.5, "ms_p90": 2.0, "ms_p99": 2.1,
                               "ms_mean": 1.6}}}
    md = to_markdown(r)
    assert "| params | 1,000 | 250 | 0.250 |" in md and "| top-1 | 90.00% | 85.00% |  |" in md
    assert "| onnx | onnxruntime | model.onnx | 123 | 1.00e-06 | 120.0 | 100.00% | 10 | True |" in md
    assert "1.500" in md and "<td>85.00%</td>" in to_html(r)
    files = write_report(r, tmp_path)
    assert all(p.exists() for p in files.values())
