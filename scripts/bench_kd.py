"""Cost of a KD epoch relative to a student-only epoch, with the teacher's logits cached.

    python scripts/bench_kd.py                    # deep-set student, compact LorentzNet teacher, 8k synthetic jets
    python scripts/bench_kd.py --student mlp --jets 20000

Without augmentation the teacher's training-set logits are computed once (a one-off, reported separately, and
shared by every student of that teacher) and each KD step only gathers them. Target: KD epoch <= 1.2x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_data import synthetic_cache  # noqa: E402

from jetkd.config import load_job  # noqa: E402
from jetkd.models import build_model  # noqa: E402
from jetkd.train.checkpoint import save_atomic  # noqa: E402
from jetkd.train.loop import Trainer  # noqa: E402

STUDENTS = {"deepset": {"name": "deepset"}, "mlp": {"name": "mlp"}}
TEACHER = {"name": "lorentznet", "n_hidden": 32, "n_layers": 4}


def epoch_seconds(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer._train_epoch()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", choices=list(STUDENTS), default="deepset")
    parser.add_argument("--jets", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_cache(tmp / "train.h5", args.jets, 128)
        synthetic_cache(tmp / "val.h5", 512, 128, seed=1)
        teacher = tmp / "teacher.pt"
        save_atomic({"config": {"model": TEACHER}, "model": build_model(TEACHER).state_dict()}, teacher)
        base = {
            "data": {"train": str(tmp / "train.h5"), "val": str(tmp / "val.h5")},
            "model": STUDENTS[args.student],
            "train": {"epochs": 1, "batch_size": 64},
        }
        plain = Trainer(load_job(data={**base, "run_dir": str(tmp / "plain")}), progress=False)
        start = time.perf_counter()
        kd = Trainer(load_job(data={**base, "run_dir": str(tmp / "kd"),
                                    "distill": {"method": "kd", "teacher": str(teacher), "temperature": 3, "alpha": 0.7}}),
                     progress=False)
        one_off = time.perf_counter() - start
        for t in (plain, kd):
            t.run_dir.mkdir(parents=True)
        plain_s = min(epoch_seconds(plain) for _ in range(args.repeats))
        kd_s = min(epoch_seconds(kd) for _ in range(args.repeats))
        print(f"{args.student} student, {args.jets} jets, batch 64, 2 threads (best of {args.repeats} epochs)")
        print(f"student-only epoch: {plain_s:.2f} s ({args.jets / plain_s:,.0f} jets/s)")
        print(f"KD epoch (cached teacher logits): {kd_s:.2f} s ({args.jets / kd_s:,.0f} jets/s)")
        print(f"ratio KD / student-only: {kd_s / plain_s:.3f}   [target <= 1.2]")
        print(f"one-off teacher pass over the training set (cached for every student): {one_off:.1f} s")


if __name__ == "__main__":
    main()
