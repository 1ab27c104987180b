"""The one training loop, for every model and every distillation method.

AdamW (optionally amsgrad), warm-up then cosine or step decay, gradient clipping, bf16 autocast on CUDA,
DistributedDataParallel under torchrun, optional boost augmentation, and checkpoints that resume exactly:
``last.pt`` (end of every epoch, every ``checkpoint_every`` steps, and on SIGTERM/SIGUSR1 from a batch
scheduler) and ``best.pt`` (best validation epoch). Only rank 0 writes. A run folder holds
``config.yaml``, ``last.pt``, ``best.pt`` and ``metrics.jsonl`` (one JSON object per epoch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from jetkd import __version__, lorentz
from jetkd.config import TrainJob, to_dict
from jetkd.contract import training_contract
from jetkd.data.cache import JetCache
from jetkd.data.loader import JetBatch, JetLoader
from jetkd.distill import Method, StepOutputs, Tap, TapRecorder, build_method
from jetkd.errors import InputError
from jetkd.evaluate import count_parameters, predict
from jetkd.models import build_model
from jetkd.train import distributed
from jetkd.train.checkpoint import load_checkpoint, load_model, save_atomic
from jetkd.train.schedule import lr_factor

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
TEACHER_CACHE_BYTES = 2 * 1024**3  # teacher outputs kept for the whole training set up to this size


class Preempted(Exception):
    """Training stopped by a signal after writing ``last.pt``; rerun with ``--resume`` to continue."""


class Trainer:
    """Trains ``job.model`` with ``job.distill`` on ``job.data``; ``fit()`` runs it to the end.

    Example::

        job = load_job("configs/deepset_kd.yaml", ["train.epochs=5"])
        summary = Trainer(job).fit()        # {'best_epoch': ..., 'best_val_acc': ..., 'run_dir': ...}
    """

    def __init__(self, job: TrainJob, *, resume: bool = False, progress: bool = True):
        self.job, self.progress = job, progress
        self.env = distributed.setup()
        self.run_dir = Path(job.run_dir)
        cfg = job.train
        torch.manual_seed(cfg.seed)
        self.train_cache = _open_cache(job.data.train, "data.train", job.data.in_memory)
        self.val_cache = _open_cache(job.data.val, "data.val", True)
        self.loader = JetLoader(
            self.train_cache, cfg.batch_size, seed=cfg.seed, drop_last=True,
            rank=self.env.rank, world_size=self.env.world_size,
        )
        if len(self.loader) == 0:
            raise InputError("train.batch_size", f"{cfg.batch_size} x {self.env.world_size} processes exceeds the {len(self.train_cache)} training jets")
        self.method = build_method(job.distill)
        self.model_spec = self.method.train_spec(job.model)
        self.model = build_model(self.model_spec).to(self.env.device)
        self.contract = training_contract(job.model, self.model, self.train_cache, self.val_cache)  # model: at save
        self.teacher = self._load_teacher() if self.method.needs_teacher else None
        self._setup_sample = self._teacher_on_sample = None  # set-up only, made when first needed
        self._setup_method()
        self.teacher_cache = self._cached_teacher_outputs() if self._teacher_cacheable() else None
        self._setup_sample = self._teacher_on_sample = None
        special = self.method.param_groups()
        taken = {id(p) for g in special for p in g["params"]}
        params = [p for p in (*self.model.parameters(), *self.method.parameters()) if p.requires_grad and id(p) not in taken]
        groups = [{"params": params}] + [{"params": g["params"], "lr": job.optim.lr * g.get("lr_scale", 1.0)} for g in special]
        self.optimizer = torch.optim.AdamW(
            groups, lr=job.optim.lr, betas=tuple(job.optim.betas), weight_decay=job.optim.weight_decay,
            amsgrad=job.optim.amsgrad, eps=job.optim.eps,
        )
        steps, epochs = len(self.loader), cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(job.schedule, s, steps, epochs))
        self.step_module = DistillStep(self.model, self.method, self.student_recorder)
        self.net = self.step_module
        if self.env.world_size > 1:  # method modules unused in some phases (FitNets stage 1, curriculum heads)
            self.net = DistributedDataParallel(self.step_module, find_unused_parameters=any(True for _ in self.method.parameters()))
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best = {"metric": cfg.select_by, "value": None, "epoch": None}
        self._stop_requested = False
        if resume:
            self._resume()

    # ------------------------------------------------------------------------- set-up

    def _load_teacher(self) -> torch.nn.Module:
        if not self.job.distill.teacher:
            raise InputError("distill.teacher", f"method {self.job.distill.method!r} needs a teacher checkpoint")
        teacher = load_model(self.job.distill.teacher).to(self.env.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    def _setup_method(self) -> None:
        """Hook the taps the method reads and let it build its modules from the tap shapes of one sample batch
        (models in eval mode, no gradient: nothing trains and no random number is drawn)."""
        m = self.method
        self.student_recorder = TapRecorder(self.model, m.student_taps, "distill: student tap")
        self.teacher_recorder = TapRecorder(self.teacher, m.teacher_taps, "distill: teacher tap") if self.teacher is not None else None
        if not (m.student_taps or m.teacher_taps or type(m).setup is not Method.setup):
            return
        sample = self._sample()
        self.model.eval()
        with torch.no_grad():
            with self.student_recorder:
                self.model(sample.p4, sample.mask)
            teacher_taps = self._sample_teacher_outputs()[1] if self.teacher is not None else {}
            m.setup(self.model, self.teacher, self.student_recorder.taps, teacher_taps)
        self.model.train()
        m.to(self.env.device)

    def _teacher_cacheable(self) -> bool:
        """Teacher outputs can be computed once when inputs are never augmented and they fit in
        ``TEACHER_CACHE_BYTES`` (per-constituent taps are stored for every constituent slot of the cache)."""
        if self.teacher is None or self.job.train.boost_beta_max > 0:
            return False
        logits, taps = self._sample_teacher_outputs()
        slots = self.train_cache.max_particles
        per_jet = logits.shape[1] + sum(t.dim * (slots if t.per_constituent else 1) for t in taps.values())
        return 4 * per_jet * len(self.train_cache) <= TEACHER_CACHE_BYTES

    def _sample(self) -> JetBatch:
        """The first (up to) 64 training jets, in file order, read once: what set-up looks at."""
        if self._setup_sample is None:
            loader = JetLoader(self.train_cache, min(len(self.train_cache), 64), shuffle=False)
            self._setup_sample = self._to_device(next(iter(loader)))
        return self._setup_sample

    def _sample_teacher_outputs(self) -> tuple[torch.Tensor, dict[str, Tap]]:
        """:meth:`_teacher_outputs` of :meth:`_sample`, computed once (set-up and the cache sizing both read it)."""
        if self._teacher_on_sample is None:
            self._teacher_on_sample = self._teacher_outputs(self._sample())
        return self._teacher_on_sample

    def _teacher_outputs(self, batch: JetBatch) -> tuple[torch.Tensor, dict[str, Tap]]:
        """Teacher logits (B, n_class) float32 and the teacher taps the method reads."""
        with torch.no_grad(), self._autocast(), self.teacher_recorder:
            logits = self.teacher(batch.p4, batch.mask).float()
        return logits, {k: Tap(t.value.float(), t.mask) for k, t in self.teacher_recorder.taps.items()}

    def _cached_tap(self, path: str, batch: JetBatch) -> Tap:
        """The batch's rows of a cached teacher tap; per constituent: cut to the batch's padding, with its mask."""
        value = self.teacher_cache[path][batch.index]
        if value.dim() == 2:
            return Tap(value)
        return Tap(value[:, : batch.mask.shape[1]], batch.mask)

    def _cached_teacher_outputs(self) -> dict[str, torch.Tensor]:
        """Teacher logits (n_train, n_class) and taps, (n_train, C) per jet or (n_train, max_particles, C) per
        constituent (0 on padding), for every training jet, computed once and stored beside the teacher
        checkpoint (keyed by the cache file and the taps), so that every student of that teacher reuses them."""
        cache_path = Path(self.job.data.train).resolve()
        stat = cache_path.stat()
        taps = ",".join(self.method.teacher_taps)
        key = hashlib.sha1(f"{cache_path}:{stat.st_size}:{stat.st_mtime_ns}:{taps}".encode()).hexdigest()[:16]
        teacher_path = Path(self.job.distill.teacher)
        store = (teacher_path if teacher_path.is_dir() else teacher_path.parent) / f"teacher_outputs_{key}.pt"
        if store.exists():
            return torch.load(store, map_location=self.env.device, weights_only=True)
        loader = JetLoader(self.train_cache, self.job.train.eval_batch_size, shuffle=False)
        parts: dict[str, list[torch.Tensor]] = {}
        slots = self.train_cache.max_particles
        for batch in map(self._to_device, loader):
            logits, taps = self._teacher_outputs(batch)
            padded = {p: F.pad(t.value * t.mask[..., None], (0, 0, 0, slots - t.value.shape[1])) if t.per_constituent
                      else t.value for p, t in taps.items()}
            for k, v in {"logits": logits, **padded}.items():
                parts.setdefault(k, []).append(v)
        outputs = {k: torch.cat(v) for k, v in parts.items()}
        if self.env.is_main:
            save_atomic({k: v.cpu() for k, v in outputs.items()}, store)
        return outputs

    def _resume(self) -> None:
        path = self.run_dir / "last.pt"
        if not path.exists():
            if self.env.is_main:
                print(f"no checkpoint at {path}: starting from scratch")
            return
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        self.method.to(self.env.device)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.best = ckpt["best"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        if self.env.is_main:
            print(f"resumed {path} at epoch {self.epoch}, step {self.step_in_epoch}")

    # ------------------------------------------------------------------------- steps

    def _autocast(self):
        cuda = self.env.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and self.job.train.amp)

    def _to_device(self, batch: JetBatch) -> JetBatch:
        return batch.to(self.env.device, non_blocking=True)

    def _augment(self, batch: JetBatch) -> JetBatch:
        """Boost every jet by its own beta ~ U[0, beta_max) along ``boost_axis`` (teacher and student alike).
        The betas are drawn for the whole global batch from (seed, epoch, step), so they do not depend on
        the number of processes or on resuming."""
        cfg = self.job.train
        seed = np.random.SeedSequence([cfg.seed, self.epoch, self.step_in_epoch]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(seed))
        global_beta = torch.rand(cfg.batch_size * self.env.world_size, generator=g, dtype=torch.float64) * cfg.boost_beta_max
        beta = global_beta.view(self.env.world_size, -1)[self.env.rank][: len(batch)].to(batch.p4)
        p4 = lorentz.boost(batch.p4, beta[:, None], cfg.boost_axis) * batch.mask[..., None]
        return JetBatch(p4, batch.mask, batch.label, batch.index)

    def train_step(self, batch: JetBatch) -> dict[str, float]:
        """One optimiser step on one (per-process) batch; returns the loss parts."""
        batch = self._to_device(batch)
        if self.job.train.boost_beta_max > 0:
            batch = self._augment(batch)
        self.method.set_progress(self.epoch + self.step_in_epoch / len(self.loader), self.optimizer.param_groups[0]["lr"])
        teacher_logits, teacher_taps = None, {}
        if self.teacher_cache is not None:
            teacher_logits = self.teacher_cache["logits"][batch.index]
            teacher_taps = {p: self._cached_tap(p, batch) for p in self.method.teacher_taps}
        elif self.teacher is not None:
            teacher_logits, teacher_taps = self._teacher_outputs(batch)
        with self._autocast():
            loss, parts = self.net(batch, teacher_logits, teacher_taps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.after_backward()
        if self.job.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.job.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.method.after_step()
        return {"loss": loss.item(), **parts}

    def validate(self) -> dict[str, float]:
        """Validation loss (CE), accuracy and AUC of the current model."""
        from sklearn.metrics import roc_auc_score

        loader = JetLoader(self.val_cache, self.job.train.eval_batch_size, shuffle=False)
        scores, labels = predict(self.model, loader, device=self.env.device)
        self.model.train()
        loss = -np.mean(np.log(np.clip(scores[np.arange(len(labels)), labels], 1e-12, None)))
        auc = roc_auc_score(labels, scores[:, 1]) if len(np.unique(labels)) == 2 else float("nan")
        return {"val_loss": float(loss), "val_acc": float((scores.argmax(1) == labels).mean()), "val_auc": float(auc)}

    # ------------------------------------------------------------------------- the loop

    def fit(self) -> dict:
        """Train to ``train.epochs``; returns a summary. Raises :class:`Preempted` after a stop signal."""
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.job), sort_keys=False))
        previous = {s: signal.signal(s, self._request_stop) for s in PREEMPT_SIGNALS}
        start = time.perf_counter()
        try:
            while self.epoch < self.job.train.epochs:
                self._train_epoch()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.best["epoch"] is None:  # no epoch was selectable (or every validation value was NaN)
            self.best.update(value=float("nan"), epoch=self.epoch)
            if self.env.is_main:
                print(f"warning: no epoch qualified as best ({self.method.phase()} phase at the end); best.pt is the last epoch")
                save_atomic(self._state(with_optimizer=False), self.run_dir / "best.pt")
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.job.train.epochs,
            "steps": self.global_step,
            "best_epoch": self.best["epoch"],
            f"best_{self.best['metric']}": self.best["value"],
            "seconds": time.perf_counter() - start,
        }
        if self.env.is_main and self.progress:
            print(
                f"Trained {self.job.model['name']} ({count_parameters(self.model):,} parameters, distillation: "
                f"{self.job.distill.method}) for {self.job.train.epochs} epochs, {self.global_step} steps, in "
                f"{summary['seconds']:.0f} s; best {self.best['metric']} {self.best['value']:.4f} at epoch "
                f"{self.best['epoch']}. Checkpoints and metrics in {self.run_dir}/"
            )
        return summary

    def _train_epoch(self) -> None:
        self.loader.set_epoch(self.epoch)
        self.model.train()
        n_steps = len(self.loader)
        bar = tqdm(total=n_steps, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.job.train.epochs}",
                   unit="step", disable=None if self.progress and self.env.is_main else True, leave=False)  # None: terminals only
        sums: dict[str, float] = {}
        t0, jets = time.perf_counter(), 0
        for batch in self.loader.iter_from(self.step_in_epoch):
            parts = self.train_step(batch)
            self.step_in_epoch += 1
            self.global_step += 1
            jets += len(batch) * self.env.world_size
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update()
            bar.set_postfix(loss=f"{parts['loss']:.4f}", jets_per_s=f"{jets / (time.perf_counter() - t0):.0f}")
            every = self.job.train.checkpoint_every
            if distributed.any_rank(self._stop_requested, self.env):
                self._save_last()
                raise Preempted(f"stopped by signal at epoch {self.epoch}, step {self.step_in_epoch}; resume with --resume")
            if every and self.step_in_epoch % every == 0 and self.step_in_epoch < n_steps:
                self._save_last()
        bar.close()
        done = max(1, self.step_in_epoch)
        record = {"epoch": self.epoch + 1, "step": self.global_step, "lr": self.scheduler.get_last_lr()[0],
                  "phase": self.method.phase(),
                  **{f"train_{k}": v / done for k, v in sums.items()}, **self.validate(),
                  "jets_per_s": jets / max(time.perf_counter() - t0, 1e-9)}
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self._update_best(record)
        self._save_last()
        if self.env.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _update_best(self, record: dict) -> None:
        metric = self.best["metric"]
        value, old = record[metric], self.best["value"]
        better = old is None or (value < old if metric == "val_loss" else value > old)
        if better and not math.isnan(value) and self.method.selectable():
            self.best.update(value=value, epoch=record["epoch"])
            if self.env.is_main:
                save_atomic(self._state(with_optimizer=False), self.run_dir / "best.pt")

    def _state(self, with_optimizer: bool = True) -> dict:
        state = {
            "jetkd_version": __version__,
            "config": to_dict(self.job),
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": dict(self.best),
        }
        state["deployed"] = self._deployed()  # the model to score and export, with its input contract
        state["contract"] = dataclasses.replace(self.contract, model=state["deployed"]["spec"]).to_dict()
        if with_optimizer:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                rng={"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
            )
        return state

    def _deployed(self) -> dict:
        """The deploy form of the current student (``method.deploy``): its model config, weights and figures."""
        deployed = self.method.deploy(self.model)
        return {"spec": self.method.deploy_spec(dict(self.job.model), deployed), "model": deployed.state_dict(),
                "summary": self.method.deploy_summary(self.model, deployed)}

    def _save_last(self) -> None:
        if self.env.is_main:
            save_atomic(self._state(), self.run_dir / "last.pt")

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True


class DistillStep(torch.nn.Module):
    """Student forward plus the method's loss as one module, so DDP sees every parameter the loss reaches
    (the method's heads and transforms too). forward(batch, teacher_logits, teacher_taps) -> (loss, parts)."""

    def __init__(self, student: torch.nn.Module, method: Method, recorder: TapRecorder):
        super().__init__()
        self.student, self.method, self.recorder = student, method, recorder

    def forward(self, batch: JetBatch, teacher_logits, teacher_taps: dict) -> tuple[torch.Tensor, dict]:
        with self.recorder:
            logits = self.student(batch.p4, batch.mask)
        taps = {k: Tap(t.value.float(), t.mask) for k, t in self.recorder.taps.items()}
        return self.method.loss(StepOutputs(logits.float(), batch.label, teacher_logits, taps, teacher_taps))


def _open_cache(path: str, key: str, in_memory: bool) -> JetCache:
    if not path:
        raise InputError(key, "no cache file given (a split written by `jetkd convert`)")
    if not Path(path).is_file():
        raise InputError(key, f"{path}: no such file")
    return JetCache(path, in_memory=in_memory).require_labels()
