"""Level-1 trigger students, float and quantization-aware, alone and distilled, through hls4ml's C simulation.

    python scripts/trigger_study.py --jets 8000 --epochs 10 --out runs/trigger_study
    python scripts/trigger_study.py --jets 30000 --epochs 15 --seeds 1,2,3 --constituents 16 --out runs/trigger_seeds

For 16 and 32 constituents: a cache of the leading n constituents of generated massless jets (or ``--root``), a
compact LorentzNet teacher trained on it, then MLP and deep-set students (``configs/trigger_*``'s sizes) in float
and quantization-aware (``mlp_fixed`` / ``deepset_fixed``, ``--precision``), trained alone, with KD (T = 3;
alpha 0.7 for the MLP, 1.0 for the deep set, as the paper) and with NORM (the representation method that helped
the MLP most in the paper-scale comparison: N = 8 copies of the teacher's last hidden layer, the same CE/KD weights
as KD), for each of ``--seeds`` (one teacher per seed). Each is exported with ``jetkd export --format hls4ml``
(float students: per-layer precision profiled at 16 bits; QAT students: their own precision), its C simulation
scores the test jets, and the boost scan runs on the float model. Writes ``table.md`` and ``table.json`` in ``--out``
(one row per student and seed) and, with several seeds, ``summary.md`` (mean and standard deviation over seeds),
and prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np

ARCH = {
    "mlp": lambda n: {"name": "mlp", "n_constituents": n, "hidden": [32, 32] if n == 16 else [24, 24]},
    "deepset": lambda n: {"name": "deepset", "phi_hidden": [16, 16, 16], "rho_hidden": [16, 16]},
}
ALPHA = {"mlp": 0.7, "deepset": 1.0}
METHODS = ("none", "kd", "norm")


def distill_spec(method: str, arch: str, teacher: Path) -> dict | None:
    """The student's ``distill:`` section: none, KD (T = 3) or NORM (N = 8, the same CE/KD weights)."""
    if method == "none":
        return None
    spec = {"method": method, "teacher": str(teacher / "best.pt"), "temperature": 3.0}
    if method == "kd":
        return {**spec, "alpha": ALPHA[arch]}
    return {**spec, "norm": {"teacher_tap": "graph_dec.1", "n": 8, "gamma": 1 - ALPHA[arch], "kd_weight": ALPHA[arch],
                             "beta": 1.0, "beta_warmup_epochs": 2}}


def student_spec(arch: str, n: int, qat: bool, precision: str) -> dict:
    spec = ARCH[arch](n)
    return {**spec, "name": f"{spec['name']}_fixed", "precision": precision} if qat else spec


def train(run: Path, cache: Path, model: dict, epochs: int, seed: int, distill: dict | None = None) -> Path:
    from jetkd.config import load_job
    from jetkd.train.loop import Trainer

    if (run / "best.pt").exists():
        return run
    job = {"run_dir": str(run), "data": {k: str(cache / f"{k}.h5") for k in ("train", "val", "test")},
           "model": model, "train": {"epochs": epochs, "batch_size": 64 if model["name"] != "lorentznet" else 32,
                                     "seed": seed},
           "optim": {"lr": 2e-3, "weight_decay": 0.01}, "schedule": {"name": "cosine", "warmup_epochs": 1}}
    if distill:
        job["distill"] = distill
    with contextlib.redirect_stdout(io.StringIO()):
        Trainer(load_job(data=job), resume=True, progress=False).fit()  # continues a killed study
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="jets (default: generate --jets massless top/QCD jets)")
    parser.add_argument("--jets", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--seeds", default="1", help="training seeds (the data's is the first)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--precision", default="ap_fixed<16,6>", help="the QAT students' type")
    parser.add_argument("--constituents", default="16,32")
    parser.add_argument("--out", type=Path, default=Path("runs/trigger_study"))
    args = parser.parse_args()

    from data_prep.convert import convert
    from data_prep.generate import generate
    from jetkd.data.cache import JetCache
    from jetkd.data.loader import JetLoader

    out, seeds, methods = args.out, [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    out.mkdir(parents=True, exist_ok=True)
    root = args.root or out / "jets.root"
    if not root.exists():
        generate(root, n_jets=args.jets, seed=seeds[0], workers=None, massless=True, progress=False)
    rows = []
    for n in (int(c) for c in args.constituents.split(",")):
        cache = out / f"cache{n}"
        if not (cache / "test.h5").exists():
            with contextlib.redirect_stdout(io.StringIO()):
                convert([root], cache, max_particles=n, seed=seeds[0], progress=False)
        test = list(JetLoader(JetCache(cache / "test.h5"), 512, shuffle=False))
        for seed in seeds:
            tag = "" if seed == seeds[0] and len(seeds) == 1 else f"_s{seed}"
            teacher = train(out / f"teacher{n}{tag}", cache, {"name": "lorentznet", "n_hidden": 24, "n_layers": 3,
                                                               "dropout": 0.1}, args.teacher_epochs, seed)
            for arch in ARCH:
                for qat in (False, True):
                    for method in methods:
                        name = f"{arch}{n}_{'qat' if qat else 'float'}_{method}"
                        run = train(out / f"{name}{tag}", cache, student_spec(arch, n, qat, args.precision),
                                    args.epochs, seed, distill_spec(method, arch, teacher))
                        rows.append({"student": name, "seed": seed, "qat": qat, "method": method, "constituents": n,
                                     **measure(run, out / "hls" / f"{name}{tag}", cache, test, name)})
                        print(json.dumps(rows[-1]), flush=True)
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (out / "table.md").write_text(table)
    print(table)
    if len(seeds) > 1:
        summary = summarise(rows)
        (out / "summary.md").write_text(summary)
        print(summary)


def measure(run: Path, hls_dir: Path, cache: Path, test: list, name: str) -> dict:
    """One trained student: its hls4ml export's C simulation on the test jets and its evaluation (boost scan)."""
    import warnings

    from jetkd.evaluate import evaluate_model
    from jetkd.evaluate.metrics import UnreliableMetricWarning
    from jetkd.export.hls import export_hls4ml
    from jetkd.tagger import load

    if (hls_dir / "parity.json").exists():
        parity = json.loads((hls_dir / "parity.json").read_text())
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            parity = export_hls4ml(run, hls_dir, data=cache / "test.h5", n_jets=10**9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        report = evaluate_model(load(run), test, betas=[0.0, 0.5, 0.9], name=name)
    scan = {round(p["beta"], 2): p["accuracy"] for p in report["boost_scan"]}
    m = report["metrics"]
    return {"parameters": report["parameters"], "multiplications": parity["multiplications"],
            "weight_bits": parity["weight_bits"], "auc_float": m["auc"], "auc_csim": parity["auc_fixed"],
            "rej_30": m["rej_30"], "rej_50": m["rej_50"], "rej_30_csim": parity["rej_30_fixed"],
            "rej_50_csim": parity["rej_50_fixed"], "argmax_agreement": parity["argmax_agreement"],
            "acc_0": scan[0.0], "acc_05": scan[0.5], "acc_09": scan[0.9], "n_test": m["n_jets"]}


SUMMARY = ("auc_float", "auc_csim", "rej_30", "rej_50", "rej_30_csim", "argmax_agreement", "acc_0", "acc_05", "acc_09")


def summarise(rows: list[dict]) -> str:
    """Mean ± standard deviation (ddof 1) over seeds of each student's figures."""
    head = ("| student | seeds | params | mults | weight bits | AUC float | AUC C-sim | 1/eps_B 0.3 | 1/eps_B 0.5 | "
            "1/eps_B 0.3 C-sim | argmax agree | acc beta 0 | acc 0.5 | acc 0.9 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in dict.fromkeys(r["student"] for r in rows):
        group = [r for r in rows if r["student"] == name]
        cells = []
        for key in SUMMARY:
            v = np.array([r[key] if r[key] is not None else np.nan for r in group], float)
            digits = 1 if key.startswith("rej") else 4 if key.startswith(("auc", "argmax")) else 3
            cells.append(f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}")
        r = group[0]
        lines.append(f"| {name} | {len(group)} | {r['parameters']:,} | {r['multiplications']:,} | "
                     f"{r['weight_bits']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict]) -> str:
    head = ("| student | seed | n | QAT | method | params | mults | weight bits | AUC float | AUC C-sim | argmax agree | "
            "1/eps_B 0.3 | 1/eps_B 0.5 | 1/eps_B 0.3 C-sim | acc beta 0 | acc 0.5 | acc 0.9 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4g}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['student']} | {r['seed']} | {r['constituents']} | {'yes' if r['qat'] else 'no'} | {r['method']} | "
                     f"{r['parameters']:,} | {r['multiplications']:,} | {r['weight_bits']:,} | {f(r['auc_float'])} | "
                     f"{f(r['auc_csim'])} | {r['argmax_agreement']:.4f} | {f(r['rej_30'])} | {f(r['rej_50'])} | "
                     f"{f(r['rej_30_csim'])} | {r['acc_0']:.3f} | {r['acc_05']:.3f} | {r['acc_09']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
