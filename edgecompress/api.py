"""``compress()``: model -> pruned -> distilled -> quantized (simulated) -> artifacts -> verified -> report.

>>> import edgecompress as ec
>>> res = ec.compress(model, target="ncnn", train_data=train, val_data=val, output_dir="out")  # doctest: +SKIP
>>> res.report["after"]["top1"], res.artifacts["ncnn_param"]                                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn

from edgecompress import __version__
from edgecompress.analysis.metrics import agreement, count_macs, count_params, file_bytes
from edgecompress.analysis.similarity import functional_similarity, plot_landscape
from edgecompress.config import Config, check_range
from edgecompress.distill import DistillConfig, distill_, resolve_weights
from edgecompress.errors import ConfigError, DataError, ExportError, ModelInputError, OutputDirError
from edgecompress.export import ExportConfig, get_exporter
from edgecompress.prune import PruneConfig, adaptive_bn_fitness, prune_, save_plan
from edgecompress.quantize import QuantConfig, quantize_
from edgecompress.targets import get_target
from edgecompress.utils import predict, top1


@dataclasses.dataclass
class BenchConfig(Config):
    """CPU latency in the report: batch 1, ``threads`` for every runtime, interleaved runs."""

    threads: int = 1
    warmup: int = 10
    iters: int = 100

    def validate(self) -> None:
        check_range("BenchConfig", "threads", self.threads, 1, 1024)
        check_range("BenchConfig", "warmup", self.warmup, 0, 10**6)
        check_range("BenchConfig", "iters", self.iters, 1, 10**7)


@dataclasses.dataclass
class CompressResult:
    model: nn.Module
    artifacts: dict[str, Path]
    report: dict[str, Any]
    config: dict[str, Any]
    quantized_model: nn.Module | None = None
    kernel_model: nn.Module | None = None  # target "torch": the int8/sparse model on edgecompress's kernels

    def save(self, directory: str | os.PathLike) -> Path:
        """Copy the artifacts and write report.json/.md/.html and config.json into ``directory``."""
        from edgecompress.analysis.report import write_report

        d = _check_writable(Path(directory))
        for role, p in list(self.artifacts.items()):
            dest = d / Path(p).name
            if Path(p).resolve() != dest.resolve():
                shutil.copy2(p, dest)
            self.artifacts[role] = dest
        write_report(self.report, d)
        (d / "config.json").write_text(json.dumps(self.config, indent=2))
        return d


def _check_writable(d: Path) -> Path:
    if d.exists() and not d.is_dir():
        raise OutputDirError(f"output_dir {d} exists and is not a directory; pass a directory path")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OutputDirError(f"cannot write to output_dir {d} ({e.strerror or e}); pass a writable directory") from e
    return d


def _resolve(value, cls, name: str):
    if value is False or value is None:
        return None
    if value is True:
        return cls()
    if isinstance(value, dict):
        return cls.from_dict(value)
    if not isinstance(value, cls):
        raise ConfigError(f"{name} must be a {cls.__name__}, a dict, True or False; got {type(value).__name__}")
    return value


def _first_batch(data: Iterable | None, name: str):
    if data is None:
        return None
    try:
        it = iter(data)
        batch = next(it)
    except StopIteration:
        raise DataError(f"{name} is empty; pass a loader that yields at least one (inputs, labels) batch") from None
    except TypeError:
        raise DataError(f"{name} must be an iterable of (inputs, labels) batches, got {type(data).__name__}") from None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and torch.is_tensor(batch[0])):
        raise DataError(f"{name} must yield (inputs, labels) tensor pairs; got {type(batch).__name__}")
    if len(batch[0]) == 0:
        raise DataError(f"{name} yielded an empty batch")
    return batch


def _held_out(data, fallback: torch.Tensor, n: int) -> torch.Tensor:
    """Up to ``n`` inputs for artifact validation: validation data if given, else training data."""
    xs, got = [], 0
    for x, _ in (data if data is not None else [(fallback, None)]):
        xs.append(x)
        got += len(x)
        if got >= n:
            break
    return torch.cat(xs)[:n].contiguous()


def compress(
    model: nn.Module,
    target: str = "onnx",
    *,
    example_inputs: tuple | torch.Tensor | None = None,
    train_data: Iterable | None = None,
    val_data: Iterable | None = None,
    prune: PruneConfig | bool | None = True,
    distill: DistillConfig | bool | None = True,
    quantize: QuantConfig | bool | None = True,
    export: ExportConfig | None = None,
    bench: BenchConfig | bool | None = True,
    output_dir: str | os.PathLike | None = None,
    teacher: nn.Module | str | None = None,
    reference_models: dict[str, nn.Module] | None = None,
    validate_samples: int = 512,
    progress: bool = True,
) -> CompressResult:
    """Compress ``model`` for ``target`` and prove it.

    Stages (each a config; ``False`` skips it): FPGM filter pruning (channels removed), Hinton KD
    fine-tuning with the original model (or ``teacher``) as teacher, int8 post-training
    quantization simulated in PyTorch under the target's contract, export, re-run of every
    artifact in its runtime against PyTorch, and latency. ``model`` is never modified.
    Everything is written to a staging folder and moved to ``output_dir`` only on success. Without
    ``output_dir`` the result stays in a new ``edgecompress-result-*`` folder of the system temp dir
    (paths in ``res.artifacts``): copy it with ``res.save(dir)``, and delete the folder when done.

    ``teacher="assistants"`` with an iterative pruning schedule distils each step from the model as
    it was before that step (a teacher-assistant chain from the original down to the student).
    ``reference_models`` (name -> independently trained models of the same task) join the
    functional-similarity landscape of the report next to the original and its compressed variants.
    """
    t_start = time.time()
    tgt = get_target(target)
    prune_cfg = _resolve(prune, PruneConfig, "prune")
    if prune_cfg and prune_cfg.round_to is None and tgt.prune_round_to:
        prune_cfg = dataclasses.replace(prune_cfg, round_to=tgt.prune_round_to)  # the target's packing width
    distill_cfg = _resolve(distill, DistillConfig, "distill")
    quant_cfg = _resolve(quantize, QuantConfig, "quantize")
    bench_cfg = _resolve(bench, BenchConfig, "bench")
    export_cfg = export or ExportConfig()
    if tgt.needs_int8 and not quant_cfg:
        raise ConfigError(f"target {target!r} writes an int8 artifact from edgecompress's scales; pass quantize=True "
                          f"(or a QuantConfig), or pick target {target.rsplit('-', 1)[0]!r} for a float artifact")
    if not isinstance(model, nn.Module):
        raise ModelInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(teacher, str) and teacher != "assistants":
        raise ConfigError(f"teacher={teacher!r}; pass a model, None (the original model) or 'assistants'")
    if teacher == "assistants" and not (prune_cfg and prune_cfg.schedule == "iterative" and prune_cfg.steps > 1):
        raise ConfigError("teacher='assistants' distils through the intermediate models of iterative pruning; "
                          "pass prune=PruneConfig(schedule='iterative', steps=2 or more)")
    for k, v in (reference_models or {}).items():
        if not isinstance(v, nn.Module):
            raise ModelInputError(f"reference_models[{k!r}] must be a torch.nn.Module, got {type(v).__name__}")
    out_dir = _check_writable(Path(output_dir)) if output_dir is not None else None

    train_batch = _first_batch(train_data, "train_data")
    val_batch = _first_batch(val_data, "val_data")
    if train_batch is None and (distill_cfg or quant_cfg):
        need = [s for s, c in (("distill", distill_cfg), ("quantize", quant_cfg)) if c]
        raise DataError(f"{' and '.join(need)} need train_data; pass train_data=<loader of (x, y)> "
                        f"or {', '.join(f'{s}=False' for s in need)}")
    if example_inputs is None:
        ref = val_batch if val_batch is not None else train_batch
        if ref is None:
            raise ModelInputError("no example_inputs and no data to take them from; pass example_inputs=(x,)")
        example_inputs = (ref[0][:1],)
    if torch.is_tensor(example_inputs):
        example_inputs = (example_inputs,)
    example_inputs = tuple(t.float().contiguous() for t in example_inputs)

    base = copy.deepcopy(model).cpu().eval()
    try:
        with torch.no_grad():
            out = base(*example_inputs)
    except Exception as e:  # noqa: BLE001
        shapes = [tuple(t.shape) for t in example_inputs]
        raise ModelInputError(f"the model does not accept example inputs of shape {shapes}: {e}; "
                              f"pass example_inputs matching its forward()") from e
    if not (torch.is_tensor(out) and out.ndim == 2):
        raise ModelInputError(f"compress expects a classifier returning (batch, classes) logits; got "
                              f"{type(out).__name__}{tuple(out.shape) if torch.is_tensor(out) else ''}")

    stage_parent = out_dir.parent if out_dir is not None else None
    # staged beside output_dir (hidden until it is complete), or, without one, in a visible folder of
    # the system temp dir that holds the result (res.artifacts; res.save(dir) copies it elsewhere)
    stage = Path(tempfile.mkdtemp(prefix=".edgecompress-" if out_dir is not None else "edgecompress-result-",
                                  dir=stage_parent))
    try:
        result = _run(base, tgt, example_inputs, train_data, val_data, prune_cfg, distill_cfg, quant_cfg,
                      export_cfg, bench_cfg, teacher, validate_samples, progress, stage, reference_models or {})
        result.report["wall_seconds"] = round(time.time() - t_start, 1)
        from edgecompress.analysis.report import write_report

        write_report(result.report, stage)
        (stage / "config.json").write_text(json.dumps(result.config, indent=2))
        if out_dir is not None:
            for f in stage.iterdir():
                os.replace(f, out_dir / f.name)
            shutil.rmtree(stage, ignore_errors=True)
            result.artifacts = {k: out_dir / Path(p).name for k, p in result.artifacts.items()}
        return result
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _model_stats(model, example_inputs, val_data, ref_logits=None) -> tuple[dict, torch.Tensor | None]:
    stats = {"params": count_params(model), "macs": count_macs(model, example_inputs)}
    logits = None
    if val_data is not None:
        logits, labels = predict(model, val_data)
        stats["top1"] = top1(logits, labels)
        stats["val_images"] = len(labels)
        if ref_logits is not None:
            stats["agreement_with_original"] = agreement(logits, ref_logits)
    return stats, logits


def _prune_callbacks(base, prune_cfg, distill_cfg, teacher, train_data, val_data, chain: list) -> dict:
    """LeGR's fitness (adaptive-BN accuracy on up to 1024 validation images) and, for the iterative
    and soft schedules, one distillation epoch between pruning steps: from the original model (or
    ``teacher``), or with ``teacher="assistants"`` from the model as it was before the step (the
    fine-tuned result of each step is appended to ``chain``)."""
    out = {}
    if prune_cfg.method == "legr" and prune_cfg.legr.iterations > 0:
        if val_data is None:
            raise ConfigError("prune.method='legr' ranks candidates by validation accuracy; pass val_data")
        val = []
        for x, y in val_data:
            val.append((x, y))
            if sum(len(b[1]) for b in val) >= 1024:
                break
        out["fitness"] = adaptive_bn_fitness(train_data, val)
    if prune_cfg.schedule != "oneshot" and prune_cfg.steps > 1:
        if not distill_cfg:
            raise ConfigError(f"prune.schedule={prune_cfg.schedule!r} fine-tunes between steps with the "
                              "distillation trainer; pass distill=DistillConfig(...) or use schedule='oneshot'")
        step_cfg = dataclasses.replace(distill_cfg, epochs=1)

        def finetune(model, step):
            t = (chain[-1] if chain else base) if teacher == "assistants" else (teacher or base)
            distill_(model, t.eval(), train_data, None, step_cfg, log=lambda s: None)
            if teacher == "assistants":
                chain.append(copy.deepcopy(model).eval())

        out["finetune"] = finetune
    return out


def _similarity(base_logits, variants: dict, reference_models: dict, val_data, stage: Path) -> tuple[dict, Path]:
    """Functional similarity of every variant (and independently trained reference model) to the
    original on the validation data, and the landscape plot."""
    logits = {"original": base_logits, **variants}
    kinds = {"original": "base", **{k: "compressed" for k in variants}}
    for name, m in reference_models.items():
        logits[name] = predict(copy.deepcopy(m).cpu().eval(), val_data)[0]
        kinds[name] = "independent"
    sim = functional_similarity(logits, reference="original")
    path = plot_landscape(sim.pop("probs"), stage / "similarity_landscape.png", kinds=kinds)
    sim["landscape"] = {"file": path.name, "method": "pca", "kinds": kinds}
    return sim, path


def _run(base, tgt, example_inputs, train_data, val_data, prune_cfg, distill_cfg, quant_cfg, export_cfg,
         bench_cfg, teacher, validate_samples, progress, stage: Path, reference_models: dict) -> CompressResult:
    report: dict[str, Any] = {"edgecompress": __version__, "torch": torch.__version__, "target": tgt.name,
                              "threads": torch.get_num_threads()}
    before, base_logits = _model_stats(base, example_inputs, val_data)
    report["before"] = before
    student = copy.deepcopy(base)
    variants = {}  # name -> validation logits, for the functional-similarity analysis
    chain: list[nn.Module] = []
    if prune_cfg:
        report["prune"] = prune_(student, prune_cfg, example_inputs, **_prune_callbacks(
            base, prune_cfg, distill_cfg, teacher, train_data, val_data, chain))
        save_plan(report["prune"]["plan"], stage / "prune_plan.json")
        if val_data is not None and distill_cfg:
            variants["pruned, before fine-tuning"] = predict(student, val_data)[0]
    if distill_cfg:
        if teacher == "assistants":  # the last step's teacher: the model before the last pruning step
            t, t_name = (chain[-2] if len(chain) > 1 else base), f"assistant chain of {len(chain) - 1} intermediate model(s)"
        else:
            t, t_name = (teacher or base), ("original model" if teacher is None else type(teacher).__name__)
        allocation = None
        if distill_cfg.alpha == "auto":
            distill_cfg, allocation = resolve_weights(distill_cfg, student, t.eval(), train_data, val_data)
        hist = distill_(student, t.eval(), train_data, val_data if distill_cfg.eval_every else None, distill_cfg,
                        log=(lambda s: None))
        report["distill"] = {"teacher": t_name, "history": hist, "alpha": distill_cfg.alpha, "beta": distill_cfg.beta,
                             "temperature": distill_cfg.temperature, "weight_allocation": allocation}
    student.eval()
    after, student_logits = _model_stats(student, example_inputs, val_data, base_logits)
    report["after"] = after
    if student_logits is not None:
        variants["compressed (float)"] = student_logits
    qmodel = None
    if quant_cfg:
        qmodel = copy.deepcopy(student)
        qrep = quantize_(qmodel, quant_cfg, train_data, target=tgt.contract, progress=progress)
        if val_data is not None:
            q_logits, labels = predict(qmodel, val_data)
            qrep["top1"] = top1(q_logits, labels)
            qrep["agreement_with_float"] = agreement(q_logits, student_logits)
            qrep["agreement_with_original"] = agreement(q_logits, base_logits)
            variants["compressed, int8 simulated"] = q_logits
        report["int8_simulated"] = qrep
    kmodel = None
    if qmodel is not None and tgt.name == "torch":
        kmodel, report["int8_kernels"] = _kernel_model(qmodel, example_inputs, val_data, variants)
    artifacts = {}
    if val_data is not None:
        report["similarity"], artifacts["similarity_landscape"] = _similarity(
            base_logits, variants, reference_models, val_data, stage)

    # Export + verification in each artifact's own runtime.
    held_out = _held_out(val_data if val_data is not None else train_data, example_inputs[0], validate_samples)
    verification, exporters = {}, {}
    if prune_cfg:
        artifacts["prune_plan"] = stage / "prune_plan.json"
    # Every result also carries the compressed float model as a torch.export program (model.pt2):
    # pruned models have no zoo architecture to load a state_dict into. It is a convenience, so a
    # model torch.export cannot capture still gets the target's own artifacts (and a note why not).
    extra = () if "torch" in tgt.exporters else ("torch",)
    for name in tgt.exporters + extra:
        exp = get_exporter(name, export_cfg)
        exported = kmodel if (kmodel is not None and name == "torch") else (qmodel if exp.int8 else student)
        try:
            paths = exp.export(exported, example_inputs, stage)
        except ExportError as e:
            if name not in extra:
                raise
            warnings.warn(f"no model.pt2 in the result: {e}", stacklevel=2)
            verification[name] = {"runtime": exp.runtime, "skipped": str(e)[:500], "passed": True, "files": []}
            continue
        res = exp.validate(exported, paths, held_out, batch_size=min(64, max(3, len(held_out))))
        artifacts.update({(role if role not in artifacts else f"{name}_{role}"): p for role, p in paths.items()})
        verification[name] = {**res.to_dict(), "runtime": exp.runtime, "files": [p.name for p in paths.values()],
                              "bytes": file_bytes(paths.values()), **exp.notes()}
        exporters[name] = (exp, paths)
    report["artifacts"] = verification

    if bench_cfg:
        report["latency"] = _latency(base, student, exporters, example_inputs, bench_cfg, kmodel)
    config = {"target": tgt.name, "prune": prune_cfg and prune_cfg.to_dict(),
              "distill": distill_cfg and distill_cfg.to_dict(), "quantize": quant_cfg and quant_cfg.to_dict(),
              "export": export_cfg.to_dict(), "bench": bench_cfg and bench_cfg.to_dict()}
    return CompressResult(student, artifacts, report, config, qmodel, kmodel)


def _kernel_model(qmodel, example_inputs, val_data, variants: dict) -> tuple[nn.Module, dict]:
    """The quantized model on the C++ int8/sparse kernels, checked against the simulation."""
    from edgecompress.kernels.convert import convert_to_kernels

    kmodel = convert_to_kernels(qmodel, example_inputs=example_inputs)
    info = kmodel.edgecompress_kernels
    rep = {"backend": info["backend"], "fusion": info.get("fusion"),
           "layers": {k: v["kind"] for k, v in info["layers"].items()}}
    if val_data is not None and "compressed, int8 simulated" in variants:
        k_logits, labels = predict(kmodel, val_data)
        sim = variants["compressed, int8 simulated"]
        rep.update(top1=top1(k_logits, labels), agreement_with_simulation=agreement(k_logits, sim),
                   max_abs_diff_vs_simulation=(k_logits - sim).abs().max().item(), val_images=len(labels))
    return kmodel, rep


def _latency(base, model, exporters, example_inputs, cfg: BenchConfig, kmodel=None) -> dict:
    """Batch-1 CPU latency of the original model (torch) and of the compressed model in torch and
    in each artifact's runtime, all interleaved in one run (blocks of 10 hot calls, as
    ``edgecompress bench`` times them)."""
    import numpy as np

    from edgecompress.bench import measure_interleaved
    from edgecompress.bench.latency import COOLDOWN_S

    x = example_inputs[0][:1].contiguous()
    xn = np.ascontiguousarray(x.numpy())
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        runners = {"torch (original)": lambda: base(x), "torch": lambda: model(x)}
        if kmodel is not None:
            runners["torch int8 kernels"] = lambda: kmodel(x)
        for name, (exp, paths) in exporters.items():
            if exp.runtime == "torch":
                continue  # the .pt2 is the eager model (or the kernel model) timed above
            if getattr(exp, "skipped", None):
                continue  # no TensorRT engine was built (no GPU/TensorRT here)
            run = type(exp)(dataclasses.replace(exp.cfg, threads=cfg.threads), name=exp.name).load(paths)
            key = exp.runtime if exp.cfg.precision == "fp32" else f"{exp.runtime} {exp.cfg.precision}"
            runners[key] = (lambda r=run: r(xn))
        with torch.no_grad():
            cooldown = {k: COOLDOWN_S["torch" if k.startswith("torch") else k.split()[0]] for k in runners}
            stats = measure_interleaved(runners, threads=cfg.threads, warmup=cfg.warmup, iters=cfg.iters,
                                        cooldown_s=cooldown, block=10, rewarm=2)  # as edgecompress bench
    finally:
        torch.set_num_threads(prev)
    return {k: v.to_dict() for k, v in stats.items()}
