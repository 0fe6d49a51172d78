"""The ``edgecompress`` command line: demo, compress, prune, train, bench, env, targets, models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgecompress.errors import ConfigError, EdgeCompressError

DEMO_EPOCHS = 3


def _threads(a) -> None:
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)


def _cmd_train(a: argparse.Namespace) -> int:
    """Train (or, with --teacher, distil) a zoo model on CIFAR-10. Runs unchanged under
    ``torchrun --nproc_per_node=N`` (DDP; --batch-size is the global batch; rank 0 writes)."""
    from safetensors.torch import save_file

    from edgecompress.data import cifar10_loaders
    from edgecompress.distill import DistillConfig, TrainConfig, fit
    from edgecompress.distill.dist import init_from_env
    from edgecompress.models import create_model

    _threads(a)
    rank, _ = init_from_env()
    train, test = cifar10_loaders(a.data, batch_size=a.batch_size, train_subset=a.train_subset,
                                  test_subset=a.test_subset, seed=a.seed)
    model = create_model(a.model)
    if a.init:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(a.init))
    common = dict(epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay, warmup_epochs=a.warmup_epochs,
                  schedule=a.schedule, seed=a.seed, bf16=None if a.bf16 == "auto" else a.bf16 == "on")
    teacher = None
    if a.teacher:
        teacher = _load_model(argparse.Namespace(model=a.teacher_model or a.model, weights=a.teacher))
        cfg = DistillConfig(**common, temperature=a.temperature, alpha=a.alpha, beta=a.beta)
    else:
        cfg = TrainConfig(**common)
    out = Path(a.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "command.txt").write_text("edgecompress " + " ".join(sys.argv[1:]) + "\n")
        (out / "train_config.json").write_text(cfg.to_json())
    t0 = time.time()
    hist = fit(model, train, test, cfg, teacher=teacher, checkpoint_dir=out, resume=a.resume)
    if rank == 0:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / f"{a.model}.safetensors"))
        summary = {"model": a.model, "final_test_top1": hist[-1].get("val_top1"), "epochs": a.epochs,
                   "test_images": len(test.images), "wall_seconds": round(time.time() - t0, 1)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary))
    return 0


def _load_model(a):
    import torch

    from edgecompress.models import create_model, load_pretrained

    if a.weights == "pretrained":
        return load_pretrained(a.model)
    model = create_model(a.model)
    if a.weights:
        if a.weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(a.weights)
        else:
            state = torch.load(a.weights, weights_only=True, map_location="cpu")
        model.load_state_dict(state)
    return model.eval()


def _compress(a, load_model, *, defaults_epochs: int) -> int:
    """Check the target first (cheap, typed error), then load the model and data and compress."""
    import edgecompress as ec
    from edgecompress.data import cifar10_loaders
    from edgecompress.targets import get_target

    get_target(a.target)
    model = load_model()

    _threads(a)
    train, val = cifar10_loaders(a.data, batch_size=a.batch_size, train_subset=a.train_subset,
                                 test_subset=a.val_subset, seed=a.seed)
    prune = _prune_config(a) if a.ratio > 0 or a.macs_target else False
    epochs = defaults_epochs if a.epochs is None else a.epochs
    distill = ec.DistillConfig(epochs=epochs, lr=a.lr, temperature=a.temperature, alpha=a.alpha,
                               beta=1 - a.alpha, seed=a.seed) if epochs > 0 else False
    quant = ec.QuantConfig() if not a.no_quantize else False
    print(f"compressing {a.model} for target {a.target}: prune={a.method}@{a.ratio}, KD {epochs} epoch(s), "
          f"int8 simulation {'on' if quant else 'off'}; {train.num_samples} train / {val.num_samples} val images",
          flush=True)
    t0 = time.time()
    res = ec.compress(model, a.target, train_data=train, val_data=val, prune=prune, distill=distill, quantize=quant,
                      bench=ec.BenchConfig(threads=a.bench_threads), output_dir=a.out)
    r = res.report
    b, af, q = r["before"], r["after"], r.get("int8_simulated", {})
    print(f"\ntop-1 {b['top1']:.2%} -> {af['top1']:.2%} (int8 simulated {q.get('top1', float('nan')):.2%}); "
          f"MACs {b['macs']:,} -> {af['macs']:,} ({af['macs'] / b['macs']:.1%}); "
          f"params {b['params']:,} -> {af['params']:,}")
    for name, v in r["artifacts"].items():
        if "skipped" in v:
            print(f"  {name:5s} [{v['runtime']}] not written: {v['skipped'][:200]}")
            continue
        print(f"  {name:5s} [{v['runtime']}] {', '.join(v['files'])}: max|diff| {v['max_abs_diff']:.2e}, "
              f"agreement {v['top1_agreement']:.2%} on {v['samples']} images")
    for name, v in r.get("latency", {}).items():
        print(f"  latency {name:17s} median {v['ms_median']:.3f} ms  p90 {v['ms_p90']:.3f} ms ({v['threads']} thread)")
    print(f"report: {Path(a.out) / 'report.html'} ({time.time() - t0:.0f} s)")
    return 0


def _cmd_compress(a) -> int:
    return _compress(a, lambda: _load_model(a), defaults_epochs=DEMO_EPOCHS)


def _cmd_demo(a) -> int:
    from edgecompress.models import load_pretrained

    a.model, a.weights = "resnet20", "pretrained"
    return _compress(a, lambda: load_pretrained("resnet20"), defaults_epochs=DEMO_EPOCHS)


def _cmd_env(a) -> int:
    from edgecompress.envinfo import environment

    info = environment()
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"edgecompress {info['edgecompress']}  python {info['python']}  {info['machine']}")
    for name, v in info["backends"].items():
        print(f"  {name:14s} {v['version'] or '-':28s} {v['status']}")
    return 0


def _cmd_targets(a) -> int:
    from edgecompress.targets import get_target, list_targets

    for n in list_targets():
        t = get_target(n)
        print(f"{n:8s} artifacts: {', '.join(t.exporters):12s} int8: {t.quant_scheme:9s} {t.description}")
    return 0


def _cmd_models(a) -> int:
    from edgecompress.models import list_models

    print("\n".join(list_models(a.pattern)))
    return 0


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="fpgm", help="pruning criterion: fpgm, l1, l2, legr, random")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group (0 = no pruning)")
    p.add_argument("--prune-mode", default="local", choices=["local", "global"],
                   help="local: every group loses --ratio; global: one threshold across layers")
    p.add_argument("--macs-target", type=float, default=None, help="keep this fraction of MACs (global/legr)")
    p.add_argument("--round-to", type=int, default=None, help="kept channels a multiple of N (e.g. 8 for ncnn packing)")
    p.add_argument("--prune-schedule", default="oneshot", choices=["oneshot", "iterative", "soft"])
    p.add_argument("--prune-steps", type=int, default=1, help="rounds of the iterative/soft schedule")


def _prune_config(a):
    from edgecompress.prune import PruneConfig

    return PruneConfig(method=a.method, ratio=a.ratio, mode=a.prune_mode, macs_target=a.macs_target,
                       round_to=a.round_to, schedule=a.prune_schedule, steps=a.prune_steps)


def _cmd_prune(a) -> int:
    """Prune a zoo model (no fine-tuning): pruned weights, the plan and the report into --out."""
    import torch
    from safetensors.torch import save_file

    from edgecompress.analysis import count_macs, count_params
    from edgecompress.prune import adaptive_bn_fitness, prune_, save_plan

    cfg = _prune_config(a)
    model = _load_model(a)
    x = torch.randn(1, 3, 32, 32)
    p0, m0 = count_params(model), count_macs(model, (x,))
    kw = {}
    if cfg.method == "legr":
        import numpy as np

        from edgecompress.data import ArrayLoader, cifar10_loaders, load_cifar10

        # candidates are ranked on 1024 random training images (never the test split; the
        # archive's training split is sorted by class, so the slice must be random)
        train, _ = cifar10_loaders(a.data, batch_size=128, seed=a.seed)
        xs, ys = load_cifar10(a.data)["train"]
        idx = np.random.default_rng(a.seed + 1).permutation(len(xs))[:1024]
        kw["fitness"] = adaptive_bn_fitness(train, ArrayLoader(xs[idx], ys[idx], batch_size=256))
    rep = prune_(model, cfg, (x,), **kw)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{a.model}_pruned.safetensors"))
    save_plan(rep["plan"], out / "prune_plan.json")
    (out / "prune_report.json").write_text(json.dumps(rep, indent=1, default=str))
    p1, m1 = count_params(model), count_macs(model, (x,))
    print(f"{a.model}: {rep['groups_pruned']}/{rep['groups_found']} groups pruned, {rep['channels_removed']} channels "
          f"removed; params {p0:,} -> {p1:,} ({p1 / p0:.1%}), MACs {m0:,} -> {m1:,} ({m1 / m0:.1%})")
    for s in rep["skipped"]:
        print(f"  left intact: {s['where']}: {s['reason']}")
    print(f"wrote {out}/{a.model}_pruned.safetensors, prune_plan.json, prune_report.json")
    return 0


def _csv(text: str, kind=str) -> tuple:
    try:
        return tuple(kind(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}: {e}") from e


def _cmd_bench(a) -> int:
    """Time artifacts (and optionally a zoo model in torch) in their runtimes, interleaved."""
    from edgecompress.bench import bench

    models = {}
    if a.model:
        models[a.model] = _load_model(a)
    top1_data = None
    if a.top1:
        from edgecompress.data import cifar10_loaders

        _, top1_data = cifar10_loaders(a.data, batch_size=100, test_subset=a.top1, seed=0)
    table = bench(a.artifacts, runtimes=_csv(a.runtime) if a.runtime else None, threads=_csv(a.threads, int),
                  batch=a.batch, warmup=a.warmup, iters=a.iters, device=a.device,
                  input_shape=_csv(a.shape, int) if a.shape else None, models=models, torch_compile=a.compile,
                  memory=not a.no_memory, top1_data=top1_data,
                  android={"serial": a.serial, "adb": a.adb, "binary": a.binary, "powersave": a.powersave}
                  if a.device == "android" else None,
                  log=lambda m: print(m, flush=True))
    print(table.to_markdown())
    if a.out:
        files = table.save(a.out)
        print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _cmd_android_package(a) -> int:
    from edgecompress.android.package import next_steps, package

    meta = package(a.result, a.app, precision=a.precision, labels=a.labels, name=a.name, threads=a.threads,
                   input_size=(a.input_size, a.input_size))
    print(f"packaged {meta['name']} ({meta['precision']}, {meta['output']['classes']} classes, input "
          f"{meta['input']['width']}x{meta['input']['height']}) into {Path(a.app) / 'app/src/main/assets'}:")
    for p in meta["written"]:
        print(f"  {p}")
    print(next_steps(Path(a.app)))
    return 0


def _add_compress_args(p: argparse.ArgumentParser, *, out: str) -> None:
    p.add_argument("--target", default="ncnn", help="deployment target (see `edgecompress targets`)")
    p.add_argument("--data", default=None, help="CIFAR-10 archive/folder (default: $EDGECOMPRESS_CIFAR10)")
    _add_prune_args(p)
    p.add_argument("--epochs", type=int, default=None, help=f"distillation epochs (default {DEMO_EPOCHS}; 0 = none)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.1, help="weight of hard-label CE; KD gets 1 - alpha")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=None, help="use a random subset of N training images")
    p.add_argument("--val-subset", type=int, default=None, help="use a random subset of N test images")
    p.add_argument("--no-quantize", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training (default: all cores)")
    p.add_argument("--bench-threads", type=int, default=1, help="threads for the latency table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecompress", description="Compress PyTorch classifiers for edge runtimes, with proof.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="compress the shipped CIFAR-10 ResNet-20 for ncnn + ONNX and write a report")
    _add_compress_args(d, out="runs/demo")
    d.set_defaults(fn=_cmd_demo)

    c = sub.add_parser("compress", help="compress a zoo model (with weights) on CIFAR-10")
    c.add_argument("--model", default="resnet20")
    c.add_argument("--weights", default="pretrained", help="'pretrained' (shipped), a .safetensors or state_dict .pt file, or '' for random init")
    _add_compress_args(c, out="runs/compress")
    c.set_defaults(fn=_cmd_compress)

    pr = sub.add_parser("prune", help="prune a zoo model (no fine-tuning); writes weights, plan and report")
    pr.add_argument("--model", default="resnet20")
    pr.add_argument("--weights", default="pretrained", help="'pretrained', a .safetensors/.pt state_dict, or ''")
    pr.add_argument("--data", default=None, help="CIFAR-10 (only for --method legr)")
    _add_prune_args(pr)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", default="runs/prune")
    pr.set_defaults(fn=_cmd_prune)

    t = sub.add_parser("train", help="train (or distil, --teacher) a zoo model on CIFAR-10; torchrun-ready")
    t.add_argument("--model", default="resnet20")
    t.add_argument("--data", default=None, help="CIFAR-10 archive/folder (default: $EDGECOMPRESS_CIFAR10)")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--schedule", default="cosine", choices=["cosine", "multistep"])
    t.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    t.add_argument("--train-subset", type=int, default=None)
    t.add_argument("--test-subset", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--init", default=None, help="start from these weights (.safetensors), e.g. for a warm restart")
    t.add_argument("--teacher", default=None,
                   help="distil from this teacher: 'pretrained' (shipped) or a .safetensors/.pt state_dict")
    t.add_argument("--teacher-model", default=None, help="the teacher's zoo architecture (default: --model)")
    t.add_argument("--temperature", type=float, default=4.0)
    t.add_argument("--alpha", type=float, default=0.1, help="weight of the hard-label CE (with --teacher)")
    t.add_argument("--beta", type=float, default=0.9, help="weight of the KD term (with --teacher)")
    t.add_argument("--out", default="runs/train")
    t.set_defaults(fn=_cmd_train)

    b = sub.add_parser("bench", help="time artifacts in torch / onnxruntime / ncnn (/ TensorRT, Android), interleaved")
    b.add_argument("artifacts", nargs="*", help="compress() output folders or artifact files (.onnx, .ncnn.param, .pt2, .engine)")
    b.add_argument("--runtime", default=None, help="only these runtimes, comma-separated: torch,onnxruntime,ncnn,tensorrt")
    b.add_argument("--threads", default="1", help="thread counts, comma-separated (e.g. 1,2)")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--warmup", type=int, default=20)
    b.add_argument("--iters", type=int, default=200, help="timed runs of every artifact")
    b.add_argument("--device", default="cpu", help="cpu, cuda or android")
    b.add_argument("--shape", default=None, help="per-image input shape, e.g. 3,32,32 (default: from the ONNX artifact)")
    b.add_argument("--model", default=None, help="also time this zoo model in eager torch")
    b.add_argument("--weights", default="pretrained", help="weights of --model ('pretrained', a .safetensors/.pt, or '')")
    b.add_argument("--compile", action="store_true", help="also time torch.compile of the torch artifacts")
    b.add_argument("--top1", type=int, default=0, help="measure top-1 of every artifact on N CIFAR-10 test images")
    b.add_argument("--data", default=None, help="CIFAR-10 archive/folder for --top1 (default: $EDGECOMPRESS_CIFAR10)")
    b.add_argument("--no-memory", action="store_true", help="skip the per-row peak-memory probe (a process each)")
    b.add_argument("--serial", default=None, help="adb serial (--device android)")
    b.add_argument("--adb", default="adb", help="adb executable (--device android)")
    b.add_argument("--binary", default=None, help="edgecompress_bench built for the phone (--device android; "
                   "default $EDGECOMPRESS_ANDROID_BENCH)")
    b.add_argument("--powersave", type=int, default=0, help="ncnn powersave on the phone: 0 all, 1 little, 2 big cores")
    b.add_argument("--out", default=None, help="write bench.csv/.json/.md and plots into this folder")
    b.set_defaults(fn=_cmd_bench)

    an = sub.add_parser("android", help="Android: package a compressed ncnn model into the demo app")
    asub = an.add_subparsers(dest="android_cmd", required=True)
    ap = asub.add_parser("package", help="copy the ncnn model, labels and model.json into android_demo's assets")
    ap.add_argument("result", help="a compress() output folder with an ncnn model (e.g. runs/demo)")
    ap.add_argument("--app", default="android_demo", help="the android_demo folder")
    ap.add_argument("--precision", default="auto", help="auto (int8 when the result has it), int8, fp16 or fp32")
    ap.add_argument("--labels", default=None, help="class names, one per line (default: CIFAR-10's for 10 classes)")
    ap.add_argument("--name", default=None, help="model name shown in the app (default: the result folder's name)")
    ap.add_argument("--threads", type=int, default=4, help="ncnn threads the app starts with")
    ap.add_argument("--input-size", type=int, default=32, help="square input size the model expects")
    ap.set_defaults(fn=_cmd_android_package)

    e = sub.add_parser("env", help="versions of every backend and whether it is usable here")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_env)

    tg = sub.add_parser("targets", help="list deployment targets")
    tg.set_defaults(fn=_cmd_targets)
    m = sub.add_parser("models", help="list zoo models")
    m.add_argument("pattern", nargs="?", default="*")
    m.set_defaults(fn=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except EdgeCompressError as e:
        print(f"edgecompress: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
