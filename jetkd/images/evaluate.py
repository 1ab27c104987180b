"""Evaluating trained image models: top-1 accuracy with its interval, size and cost, retrieval, one report.

    evaluate_image_checkpoints({"teacher": "runs/img/teacher", "student": "runs/img/student"}, "digits", "test",
                               "runs/img")      # report.json, report.md

Each model is evaluated on ``read_images(data, split)`` normalised with the channel statistics stored in its
input contract (:class:`jetkd.contract.ImageContract`). Metrics: top-1 accuracy with the central 68% of a bootstrap
over the test images (resampling n images with replacement, the number correct is Binomial(n, accuracy): drawn
directly, seeded), parameters and FLOPs per image (:class:`torch.utils.flop_counter.FlopCounterMode`, a
multiply-add = 2 FLOPs). Retrieval (``retrieval=True``): the model's embedding
(:func:`jetkd.images.retrieval.embed_all`: ``model.embed`` where it has one, else the input of its ``classifier``) ranks the test images against each other with the classes as identities
(mAP, CMC rank-1 and rank-5; :func:`jetkd.images.retrieval.retrieval_metrics`, each query excluded from its own
gallery); for VeRi-776 the query and gallery splits with the standard camera exclusion. Runs that differ only in
``train.seed`` are summarised as mean ± std.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from jetkd.errors import InputError

N_BOOTSTRAP = 200
CENTRAL = (0.158655, 0.841345)  # the central 68.27%


def accuracy_interval(n_correct: int, n: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> list[float]:
    """Central 68% of the bootstrap distribution of the accuracy ``n_correct / n`` (Binomial replicas)."""
    if n == 0 or n_bootstrap == 0:
        return [float("nan"), float("nan")]
    replicas = np.random.default_rng(seed).binomial(n, n_correct / n, n_bootstrap) / n
    return [float(q) for q in np.quantile(replicas, CENTRAL)]


def flops_per_image(model: nn.Module, images: torch.Tensor) -> float:
    """FLOPs of one forward pass per image (eval mode, no grad) on ``images`` (B, C, H, W)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / len(images)


def evaluate_image_model(model: nn.Module, contract: dict, data: str, split: str = "test", *,
                         batch_size: int = 256, n_bootstrap: int = N_BOOTSTRAP, retrieval: bool = True,
                         options: dict | None = None) -> dict:
    """Metrics of one trained image model on ``read_images(data, split)`` (module docstring)."""
    from jetkd.evaluate.flops import count_parameters
    from jetkd.evaluate.predict import predict
    from jetkd.images import read_images
    from jetkd.images.loader import ImageLoader

    options = dict(contract.get("provenance", {}).get("options", {}) if options is None else options)
    images = read_images(data, split, **options)
    shape = list(images.images.shape[1:])
    if shape != list(contract["image_shape"]):
        raise InputError(f"{data}:{split}", f"images of shape {shape}; the model was trained on {contract['image_shape']}")
    loader = ImageLoader(images, batch_size, shuffle=False, mean=contract["mean"], std=contract["std"])
    entry = {"parameters": count_parameters(model), "split": split,
             "flops_per_image": flops_per_image(model, next(iter(loader)).images[:8])}
    if images.format == "veri":  # test vehicles are not training classes: retrieval only
        entry["metrics"] = {"accuracy": None, "accuracy_interval": [None, None], "n_images": len(images.labels)}
        entry["retrieval"] = _retrieval(model, images, loader, data, options, contract)
        return entry
    scores, labels = predict(model, loader, inputs=lambda b: (b.images,))
    finite = np.isfinite(scores).all(1)
    correct = int(((scores.argmax(1) == labels) & finite).sum()) if len(labels) else 0
    n = len(labels)
    metrics = {"accuracy": correct / n if n and finite.all() else float("nan"),
               "accuracy_interval": accuracy_interval(correct, n, n_bootstrap) if finite.all() else [float("nan")] * 2,
               "n_images": n, "n_nonfinite": int((~finite).sum()), "n_bootstrap": n_bootstrap}
    entry["metrics"] = metrics
    if retrieval:
        entry["retrieval"] = _retrieval(model, images, loader, data, options, contract)
    return entry


def _retrieval(model, images, loader, data, options, contract) -> dict:
    """Retrieval metrics: VeRi's query/gallery splits, else the test images against each other (classes as
    identities, every image its own camera so that only the query itself is excluded)."""
    from jetkd.images import read_images
    from jetkd.images.retrieval import embed_all, query_gallery_metrics, retrieval_metrics

    if images.cameras is not None and images.format == "veri":
        return query_gallery_metrics(model, read_images(data, "query", **options),
                                     read_images(data, "gallery", **options), contract["mean"], contract["std"])
    emb = embed_all(model, loader)[0]
    own = np.arange(len(images.labels))
    return retrieval_metrics(emb, images.labels, own, emb, images.labels, own)


def evaluate_image_checkpoints(checkpoints: dict, data: str, split: str, out_dir: str | Path, *,
                               n_bootstrap: int = N_BOOTSTRAP, retrieval: bool = True) -> Path:
    """Evaluate image checkpoints (name -> run folder or ``.pt``) and write ``report.json`` and ``report.md``."""
    from jetkd.evaluate.runs import summarise_seeds
    from jetkd.train.checkpoint import load_checkpoint, load_model

    results, configs = {}, {}
    for name, path in checkpoints.items():
        ckpt = load_checkpoint(path)
        contract = ckpt.get("contract") or {}
        if contract.get("kind") != "images":
            raise InputError(str(path), "not an image model (its input contract is for jets); evaluate it on jets")
        results[name] = evaluate_image_model(load_model(path), contract, data, split, n_bootstrap=n_bootstrap,
                                             retrieval=retrieval)
        results[name]["checkpoint"] = str(path)
        if ckpt.get("deployed", {}).get("summary"):
            results[name]["deploy"] = ckpt["deployed"]["summary"]
        configs[name] = ckpt.get("config") or {}
        print(f"evaluated {name} ({len(results)}/{len(checkpoints)})", flush=True)
    summary = summarise_seeds(results, configs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"format_version": 2, "kind": "images", "data": {"images": str(data), "split": split},
              "models": results, "summary": summary}
    from jetkd.evaluate.report import write_text_atomic

    write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=float))
    write_text_atomic(out / "report.md", markdown(report))
    return out


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"


def markdown(report: dict) -> str:
    """The image report as Markdown: one row per model, and the seed summary."""
    d = report["data"]
    lines = [f"# Evaluation report ({d['images']}, split {d['split']})", "",
             "| model | parameters | MFLOPs / image | top-1 % [68%] | retrieval mAP % | rank-1 % | rank-5 % |",
             "|---|---|---|---|---|---|---|"]
    for name, e in report["models"].items():
        m, r = e["metrics"], e.get("retrieval") or {}
        lo, hi = (None, None) if m["accuracy"] is None else m["accuracy_interval"]
        lines.append(f"| {name} | {e['parameters']:,} | {e['flops_per_image'] / 1e6:.3f} | {_pct(m['accuracy'])} "
                     f"[{_pct(lo)}, {_pct(hi)}] | {_pct(r.get('mAP'))} | {_pct(r.get('rank1'))} | "
                     f"{_pct(r.get('rank5'))} |")
    n = next(iter(report["models"].values()))["metrics"]["n_images"] if report["models"] else 0
    lines += ["", f"{n:,} test images; brackets: the central 68% of {N_BOOTSTRAP} bootstrap resamples. Retrieval: "
              "the model's embedding ranks the test images against each other with the classes as identities "
              "(VeRi-776: query against gallery, same vehicle and camera excluded)."]
    if report.get("summary"):
        lines += ["", "## Over seeds", "", "| models | seeds | top-1 % (mean ± std) |", "|---|---|---|"]
        for g in report["summary"]:
            a = g["metrics"]["accuracy"]
            if not np.isfinite(a["mean"]):
                continue
            lines.append(f"| {g['label']} | {g['n_seeds']} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} |")
    return "\n".join(lines) + "\n"
