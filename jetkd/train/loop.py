"""The one training loop, for every model and every distillation method.

AdamW (optionally amsgrad) or SGD with momentum, warm-up then cosine or step decay, gradient clipping, bf16 autocast on CUDA,
DistributedDataParallel under torchrun, optional boost augmentation, and checkpoints that resume exactly:
``last.pt`` (end of every epoch, every ``checkpoint_every`` steps, and on SIGTERM/SIGUSR1 from a batch
scheduler) and ``best.pt`` (best validation epoch). Only rank 0 writes. A run folder holds one run
(:mod:`jetkd.rundir`: locked while a process trains into it; an existing run is continued with ``resume`` or
moved aside with ``force``, never overwritten): ``config.yaml`` (the resolved config), ``last.pt``, ``best.pt``,
``metrics.jsonl`` (one JSON object per epoch, identical whether or not the run was killed and resumed),
``timing.jsonl`` (seconds and jets/s per epoch) and, after resumes that changed a safe key, ``resumed.jsonl``.

Resuming compares the stored config with the one given: any difference is an error naming the keys, except
:data:`SAFE_ON_RESUME`. A non-finite loss or gradient stops the run at that step (:class:`Diverged`) before the
optimiser applies it, leaving the checkpoints as they were. Progress: a bar on a terminal; one line per epoch
always, and a heartbeat line every :data:`HEARTBEAT_SECONDS` within an epoch when there is no terminal (batch
logs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from jetkd import __version__, lorentz
from jetkd.config import TrainJob, flat_keys, to_dict
from jetkd.data.loader import JetBatch
from jetkd.distill import Method, StepOutputs, Tap, TapRecorder, build_method
from jetkd.errors import InputError
from jetkd.evaluate import count_parameters
from jetkd.models import build_model
from jetkd.rundir import OutputFolder
from jetkd.train import distributed
from jetkd.train.data import boost_bank, open_training_data
from jetkd.train.checkpoint import load_checkpoint, load_model, save_atomic
from jetkd.train.schedule import lr_factor

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
TEACHER_CACHE_BYTES = 2 * 1024**3  # teacher outputs kept for the whole training set up to this size
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl")  # any of them: the folder holds a run
HEARTBEAT_SECONDS = 60.0  # without a terminal: a progress line at least this often within an epoch
# Keys that may change on --resume (applied and recorded in resumed.jsonl): more epochs (the learning-rate schedule
# then follows the new length from the current step), how often mid-epoch checkpoints are written, and the batch
# size of validation (which does not change its result beyond float rounding: pooling is over real constituents).
SAFE_ON_RESUME = ("train.epochs", "train.checkpoint_every", "train.eval_batch_size")


class Preempted(Exception):
    """Training stopped by a signal after writing ``last.pt``; rerun with ``--resume`` to continue."""


class Diverged(Exception):
    """A non-finite loss or gradient: training stopped at that step, checkpoints left as they were."""


class Trainer:
    """Trains ``job.model`` with ``job.distill`` on ``job.data``; ``fit()`` runs it to the end.

    Example::

        job = load_job("configs/deepset_kd.yaml", ["train.epochs=5"])
        summary = Trainer(job).fit()        # {'best_epoch': ..., 'best_val_acc': ..., 'run_dir': ...}
    """

    def __init__(self, job: TrainJob, *, resume: bool = False, force: bool = False, progress: bool = True):
        self.job, self.progress = job, progress
        self.env = distributed.setup()
        self.run_dir = Path(job.run_dir)
        self.folder = OutputFolder(self.run_dir, RUN_FILES, "run", resume=resume, force=force)
        error = None
        if self.env.is_main:
            try:
                self.folder.acquire()
                if self.folder.moved_to is not None:
                    print(f"moved the previous run in {self.run_dir} to {self.folder.moved_to}", flush=True)
            except InputError as err:
                error = err
        if distributed.any_rank(error is not None, self.env):
            raise error or InputError(str(self.run_dir), "rank 0 could not open the run folder")
        try:
            self.resume_changes = self._check_resume_config() if resume else {}
            self._build(resume)
        except BaseException:
            self.folder.release()
            raise

    def _build(self, resume: bool) -> None:
        job, cfg = self.job, self.job.train
        torch.manual_seed(cfg.seed)
        self.data = open_training_data(job)  # jets or images (jetkd.train.data)
        self.bank_betas = boost_bank(cfg.boost_bank, len(self.data), cfg.boost_beta_max) if cfg.boost_bank else None
        self.loader = self.data.loader(
            cfg.batch_size, seed=cfg.seed,
            rank=self.env.rank, world_size=self.env.world_size,
        )
        if len(self.loader) == 0:
            raise InputError("train.batch_size", f"{cfg.batch_size} x {self.env.world_size} processes exceeds the {len(self.data)} training examples")
        self.method = build_method(job.distill)
        self.model_spec = self.method.train_spec(job.model)
        self.model = build_model(self.model_spec).to(self.env.device)
        self.data.require_classes(self.model.n_class, f"model {job.model['name']!r} (n_class)")
        self.contract = self.data.contract(job.model, self.model)  # its model: the deploy form, at save
        self.teacher = self._load_teacher() if self.method.needs_teacher else None
        self._setup_sample = self._teacher_on_sample = None  # set-up only, made when first needed
        self._setup_method()
        self.teacher_cache = self._cached_teacher_outputs() if self._teacher_cacheable() else None
        self._setup_sample = self._teacher_on_sample = None
        special = self.method.param_groups()
        taken = {id(p) for g in special for p in g["params"]}
        params = [p for p in (*self.model.parameters(), *self.method.parameters()) if p.requires_grad and id(p) not in taken]
        groups = [{"params": params}] + [{"params": g["params"], "lr": job.optim.lr * g.get("lr_scale", 1.0)} for g in special]
        self.optimizer = build_optimizer(job.optim, groups)
        steps, epochs = len(self.loader), cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(job.schedule, s, steps, epochs))
        self.step_module = DistillStep(self.model, self.method, self.student_recorder, self.data.inputs)
        self.net = self.step_module
        if self.env.world_size > 1:  # method modules unused in some phases (FitNets stage 1, curriculum heads)
            self.net = DistributedDataParallel(self.step_module, find_unused_parameters=any(True for _ in self.method.parameters()))
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best = {"metric": cfg.select_by, "value": None, "epoch": None}
        # boosted validation also keeps the best epoch on unboosted validation jets (best_unboosted.pt)
        self.best_unboosted = {"metric": cfg.select_by.replace("val_", "val_unboosted_", 1), "value": None,
                               "epoch": None} if self.data.kind == "jets" and self.data.boost is not None else None
        self.history: list[dict] = []  # metrics.jsonl's records, also in last.pt (rewritten on resume)
        self.epoch_sums: dict[str, float] = {}  # loss parts summed over this epoch's steps so far
        self._stop_requested = False
        if resume:
            self._resume()

    def _check_resume_config(self) -> dict[str, list]:
        """Differences between the stored resolved config and this job's: {key: [stored, given]} for keys in
        :data:`SAFE_ON_RESUME`; any other difference is an :class:`InputError` naming the keys."""
        stored_path = self.run_dir / "config.yaml"
        if not stored_path.exists():
            return {}
        # keys a newer jetkd added since the run started count as their defaults
        stored = {**flat_keys(to_dict(TrainJob())), **flat_keys(yaml.safe_load(stored_path.read_text()) or {})}
        given = flat_keys(to_dict(self.job))
        changed = {k: [stored.get(k), given.get(k)] for k in sorted(stored.keys() | given.keys())
                   if stored.get(k) != given.get(k)}
        unsafe = [k for k in changed if k not in SAFE_ON_RESUME]
        if unsafe:
            diffs = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in unsafe)
            raise InputError(str(stored_path), f"--resume with a changed config ({diffs}); only "
                             f"{', '.join(SAFE_ON_RESUME)} may change on resume: start a new run_dir, or --force")
        return changed

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
                self.model(*self.data.inputs(sample))
            teacher_taps = self._sample_teacher_outputs()[1] if self.teacher is not None else {}
            m.setup(self.model, self.teacher, self.student_recorder.taps, teacher_taps)
        self.model.train()
        m.to(self.env.device)

    def _teacher_cacheable(self) -> bool:
        """Teacher outputs can be computed once when inputs are never augmented and they fit in
        ``TEACHER_CACHE_BYTES`` (per-constituent taps are stored for every constituent slot of the cache)."""
        cfg = self.job.train
        if self.teacher is None or (cfg.boost_beta_max > 0 and not cfg.boost_bank) or self.data.augmented:
            return False
        logits, taps = self._sample_teacher_outputs()
        slots = self.data.slots
        per_jet = logits.shape[1] + sum(t.value[0].numel() if t.spatial else t.dim * (slots if t.per_constituent else 1)
                                        for t in taps.values())
        return 4 * per_jet * len(self.data) * max(1, cfg.boost_bank) <= TEACHER_CACHE_BYTES

    def _sample(self) -> JetBatch:
        """The first (up to) 64 training jets (or images), in file order, read once: what set-up looks at."""
        if self._setup_sample is None:
            self._setup_sample = self._to_device(self.data.sample(64))
        return self._setup_sample

    def _sample_teacher_outputs(self) -> tuple[torch.Tensor, dict[str, Tap]]:
        """:meth:`_teacher_outputs` of :meth:`_sample`, computed once (set-up and the cache sizing both read it)."""
        if self._teacher_on_sample is None:
            self._teacher_on_sample = self._teacher_outputs(self._sample())
        return self._teacher_on_sample

    def _teacher_outputs(self, batch: JetBatch) -> tuple[torch.Tensor, dict[str, Tap]]:
        """Teacher logits (B, n_class) float32 and the teacher taps the method reads."""
        with torch.no_grad(), self._autocast(), self.teacher_recorder:
            logits = self.teacher(*self.data.inputs(batch)).float()
        return logits, {k: Tap(t.value.float(), t.mask) for k, t in self.teacher_recorder.taps.items()}

    def _cached_rows(self, key: str, batch: JetBatch, copy: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's rows of cached teacher output ``key`` (of boosted ``copy`` (B,) with ``train.boost_bank``)."""
        value = self.teacher_cache[key]
        return value[batch.index] if copy is None else value[copy.to(value.device), batch.index]

    def _cached_tap(self, path: str, batch: JetBatch, copy: torch.Tensor | None = None) -> Tap:
        """The batch's rows of a cached teacher tap; per constituent: cut to the batch's padding, with its mask."""
        value = self._cached_rows(path, batch, copy)
        if value.dim() != 3:  # per jet (B, C) or a feature map (B, C, H, W)
            return Tap(value)
        return Tap(value[:, : batch.mask.shape[1]], batch.mask)

    def _cached_teacher_outputs(self) -> dict[str, torch.Tensor]:
        """Teacher logits (n_train, n_class) and taps, (n_train, C) per jet or (n_train, max_particles, C) per
        constituent (0 on padding), for every training jet, computed once and stored beside the teacher
        checkpoint (keyed by the cache file and the taps), so that every student of that teacher reuses them.
        With ``train.boost_bank`` K: for each of the K boosted copies of every jet, each output (K, n_train, ...)."""
        cfg = self.job.train
        taps = ",".join(self.method.teacher_taps)
        bank = f":bank{cfg.boost_bank}:{cfg.boost_beta_max!r}:{list(cfg.boost_axis)}" if cfg.boost_bank else ""
        key = hashlib.sha1(f"{self.data.identity()}:{taps}{bank}".encode()).hexdigest()[:16]
        teacher_path = Path(self.job.distill.teacher)
        store = (teacher_path if teacher_path.is_dir() else teacher_path.parent) / f"teacher_outputs_{key}.pt"
        if store.exists():
            return torch.load(store, map_location=self.env.device, weights_only=True)
        loader = self.data.train_batches(self.job.train.eval_batch_size)
        slots = self.data.slots
        copies = []
        for copy in range(cfg.boost_bank) if cfg.boost_bank else [None]:
            parts: dict[str, list[torch.Tensor]] = {}
            for batch in map(self._to_device, loader):
                if copy is not None:
                    batch = self._boosted(batch, self.bank_betas[copy, batch.index.cpu()])
                logits, taps = self._teacher_outputs(batch)
                padded = {p: F.pad(t.value * t.mask[..., None], (0, 0, 0, slots - t.value.shape[1])) if t.per_constituent
                          else t.value for p, t in taps.items()}
                for k, v in {"logits": logits, **padded}.items():
                    parts.setdefault(k, []).append(v)
            copies.append({k: torch.cat(v) for k, v in parts.items()})
        outputs = copies[0] if not cfg.boost_bank else {k: torch.stack([c[k] for c in copies]) for k in copies[0]}
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
        if self.job.train.epochs < self.epoch:
            raise InputError("train.epochs", f"{self.job.train.epochs}, but {path} has already trained {self.epoch}")
        self.best = ckpt["best"]
        if self.best_unboosted is not None:
            self.best_unboosted = ckpt["best_unboosted"]
        self.history, self.epoch_sums = list(ckpt.get("history", [])), dict(ckpt.get("epoch_sums", {}))
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        if self.env.is_main:
            _write_lines(self.run_dir / "metrics.jsonl", self.history)  # drops lines written after last.pt
            print(f"resumed {path} at epoch {self.epoch}, step {self.step_in_epoch}", flush=True)
            if self.resume_changes:
                with open(self.run_dir / "resumed.jsonl", "a") as f:
                    f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "epoch": self.epoch,
                                        "step": self.global_step, "changes": self.resume_changes}) + "\n")
                print("changed on resume: " + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in
                                                       self.resume_changes.items()), flush=True)

    # ------------------------------------------------------------------------- steps

    def _autocast(self):
        cuda = self.env.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and self.job.train.amp)

    def _to_device(self, batch: JetBatch) -> JetBatch:
        return batch.to(self.env.device, non_blocking=True)

    def _augment(self, batch: JetBatch) -> tuple[JetBatch, torch.Tensor | None]:
        """Boost every jet by its own beta ~ U[0, beta_max) along ``boost_axis`` (teacher and student alike);
        returns the boosted batch and, with ``train.boost_bank``, which copy (B,) of each jet it is (its beta drawn
        once, :func:`boost_bank`). The betas (or copies) are drawn for the whole global batch from
        (seed, epoch, step), so they do not depend on the number of processes or on resuming."""
        cfg = self.job.train
        seed = np.random.SeedSequence([cfg.seed, self.epoch, self.step_in_epoch]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(seed))
        n = cfg.batch_size * self.env.world_size
        if cfg.boost_bank:
            copy = torch.randint(cfg.boost_bank, (n,), generator=g).view(self.env.world_size, -1)[self.env.rank][: len(batch)]
            return self._boosted(batch, self.bank_betas[copy, batch.index.cpu()]), copy
        global_beta = torch.rand(n, generator=g, dtype=torch.float64) * cfg.boost_beta_max
        return self._boosted(batch, global_beta.view(self.env.world_size, -1)[self.env.rank][: len(batch)]), None

    def _boosted(self, batch: JetBatch, beta: torch.Tensor) -> JetBatch:
        """``batch`` with jet b boosted by ``beta[b]`` along ``train.boost_axis`` (padding stays 0)."""
        beta = beta.to(batch.p4)
        p4 = lorentz.boost(batch.p4, beta[:, None], self.job.train.boost_axis) * batch.mask[..., None]
        return JetBatch(p4, batch.mask, batch.label, batch.index)

    def train_step(self, batch: JetBatch) -> dict[str, float]:
        """One optimiser step on one (per-process) batch; returns the loss parts."""
        batch, copy = self._to_device(batch), None
        if self.job.train.boost_beta_max > 0:
            batch, copy = self._augment(batch)
        self.method.set_progress(self.epoch + self.step_in_epoch / len(self.loader), self.optimizer.param_groups[0]["lr"])
        teacher_logits, teacher_taps = None, {}
        if self.teacher_cache is not None:
            teacher_logits = self._cached_rows("logits", batch, copy)
            teacher_taps = {p: self._cached_tap(p, batch, copy) for p in self.method.teacher_taps}
        elif self.teacher is not None:
            teacher_logits, teacher_taps = self._teacher_outputs(batch)
        with self._autocast():
            loss, parts = self.net(batch, teacher_logits, teacher_taps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.after_backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.job.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        self._check_finite(loss, grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.method.after_step()
        return {"loss": loss.item(), **parts}

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Raise :class:`Diverged` before the optimiser step if the loss or the gradient norm is not finite."""
        for quantity, value in (("loss", loss), ("gradient norm", grad_norm)):
            if not torch.isfinite(value).item():
                last = self.run_dir / "last.pt"
                if last.exists():
                    ckpt = load_checkpoint(last)
                    kept = (f"last.pt and best.pt are as they were ({last} from epoch {ckpt['epoch']}, "
                            f"step {ckpt['step_in_epoch']})")
                else:
                    kept = "no checkpoint exists yet"
                raise Diverged(f"diverged at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} (global step "
                               f"{self.global_step + 1}): the {quantity} is {value.item()}; {kept}. Lower optim.lr, "
                               f"set train.grad_clip, or check the data")

    def validate(self) -> dict[str, float]:
        """Validation loss (CE), accuracy and AUC of the current model (NaN, never a crash, when its scores are
        not finite: ``val_nonfinite`` counts them); re-identification: retrieval on query/gallery
        (:meth:`jetkd.train.data.ImageData.validate`)."""
        record = self.data.validate(self.model, self.job.train.eval_batch_size, self.env.device)
        self.model.train()
        return record

    # ------------------------------------------------------------------------- the loop

    def fit(self) -> dict:
        """Train to ``train.epochs``; returns a summary. Raises :class:`Preempted` after a stop signal and
        :class:`Diverged` at a non-finite loss or gradient. The run folder's lock is released at the end."""
        try:
            return self._fit()
        finally:
            self.folder.release()

    def _fit(self) -> dict:
        if self.env.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.job), sort_keys=False))
        previous = {s: signal.signal(s, self._request_stop) for s in PREEMPT_SIGNALS}
        start = time.perf_counter()
        self._clock = {"start": start, "steps": 0, "first_step": self.global_step}
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
                f"{self.best['epoch']}. Checkpoints and metrics in {self.run_dir}/", flush=True
            )
        return summary

    def _train_epoch(self) -> None:
        self.loader.set_epoch(self.epoch)
        self.model.train()
        n_steps = len(self.loader)
        show = self.progress and self.env.is_main
        bar = tqdm(total=n_steps, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.job.train.epochs}",
                   unit="step", disable=None if show else True, leave=False)  # None: terminals only
        heartbeat = show and not sys.stderr.isatty()
        t0, jets, last_beat = time.perf_counter(), 0, time.perf_counter()
        for batch in self.loader.iter_from(self.step_in_epoch):
            parts = self.train_step(batch)
            self.step_in_epoch += 1
            self.global_step += 1
            self._clock["steps"] += 1
            jets += len(batch) * self.env.world_size
            for k, v in parts.items():
                self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
            bar.update()
            bar.set_postfix(loss=f"{parts['loss']:.4f}", jets_per_s=f"{jets / (time.perf_counter() - t0):.0f}")
            if time.perf_counter() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.perf_counter()
                self.folder.touch()  # the lock stays fresh for other hosts (jetkd.rundir.STALE_SECONDS)
                if heartbeat:
                    print(f"epoch {self.epoch + 1}/{self.job.train.epochs}  step {self.step_in_epoch}/{n_steps}  "
                          f"loss {self.epoch_sums['loss'] / self.step_in_epoch:.4f}  {self._pace(jets, t0)}",
                          flush=True)
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
                  **{f"train_{k}": v / done for k, v in self.epoch_sums.items()}, **self.validate()}
        seconds = time.perf_counter() - t0
        self.epoch, self.step_in_epoch, self.epoch_sums = self.epoch + 1, 0, {}
        self.history.append(record)
        self._update_best(record)
        self._save_last()  # holds the record: a kill before the line below loses nothing
        if self.env.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            with open(self.run_dir / "timing.jsonl", "a") as f:
                f.write(json.dumps({"epoch": record["epoch"], "seconds": seconds,
                                    "jets_per_s": jets / max(seconds, 1e-9)}) + "\n")
            if self.progress:
                print(f"epoch {record['epoch']}/{self.job.train.epochs}  step {record['step']}  train_loss "
                      f"{record['train_loss']:.4f}  val_acc {record['val_acc']:.4f}  val_auc {record['val_auc']:.4f}  "
                      f"lr {record['lr']:.3g}  {self._pace(jets, t0)}", flush=True)
            self.folder.touch()

    def _pace(self, jets: int, t0: float) -> str:
        """``1234 jets/s  elapsed 0:05:12  eta 1:02:13`` (or images/s): this epoch's rate; elapsed and ETA of this
        process's run."""
        now = time.perf_counter()
        elapsed, steps = now - self._clock["start"], self._clock["steps"]
        remaining = self.job.train.epochs * len(self.loader) - self.global_step
        eta = elapsed / steps * remaining if steps else float("nan")
        return f"{jets / max(now - t0, 1e-9):.0f} {self.data.kind}/s  elapsed {_hms(elapsed)}  eta {_hms(eta)}"

    def _update_best(self, record: dict) -> None:
        """Save ``best.pt`` if this epoch is the best so far; with boosted validation, also ``best_unboosted.pt``
        (the best epoch on unboosted validation jets: what the same run with ``train.boost_validation: false``
        would have kept, and its config says so)."""
        best = self._improves(self.best, record)
        unboosted = self.best_unboosted is not None and self._improves(self.best_unboosted, record)
        if not self.env.is_main or not (best or unboosted):
            return
        state = self._state(with_optimizer=False)  # one deploy for both checkpoints
        if best:
            save_atomic(state, self.run_dir / "best.pt")
        if unboosted:
            config = {**state["config"], "train": {**state["config"]["train"], "boost_validation": False}}
            best_unboosted = {**self.best_unboosted, "metric": self.best["metric"]}
            save_atomic({**state, "config": config, "best": best_unboosted}, self.run_dir / "best_unboosted.pt")

    def _improves(self, best: dict, record: dict) -> bool:
        """Whether ``record`` beats ``best`` on its metric (then ``best`` takes it)."""
        metric = best["metric"]
        value, old = record[metric], best["value"]
        better = old is None or (value < old if metric.endswith("_loss") else value > old)
        if better and not math.isnan(value) and self.method.selectable():
            best.update(value=value, epoch=record["epoch"])
            return True
        return False

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
            "best_unboosted": self.best_unboosted and dict(self.best_unboosted),
            "history": list(self.history),
            "epoch_sums": dict(self.epoch_sums),
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
    (the method's heads and transforms too). forward(batch, teacher_logits, teacher_taps) -> (loss, parts);
    ``inputs(batch)`` gives the model's arguments (jets: p4, mask; images: the images)."""

    def __init__(self, student: torch.nn.Module, method: Method, recorder: TapRecorder, inputs):
        super().__init__()
        self.student, self.method, self.recorder, self.inputs = student, method, recorder, inputs

    def forward(self, batch: JetBatch, teacher_logits, teacher_taps: dict) -> tuple[torch.Tensor, dict]:
        with self.recorder:
            logits = self.student(*self.inputs(batch))
        taps = {k: Tap(t.value.float(), t.mask) for k, t in self.recorder.taps.items()}
        loss, parts = self.method.loss(StepOutputs(logits.float(), batch.label, teacher_logits, taps, teacher_taps))
        auxiliary = getattr(self.student, "auxiliary_loss", None)  # a model's own extra term (re-id: triplet)
        if auxiliary is not None:
            extra, extra_parts = auxiliary(batch.label)
            loss, parts = loss + extra.to(loss), {**parts, **extra_parts}
        return loss, parts


def build_optimizer(cfg, groups: list[dict]) -> torch.optim.Optimizer:
    """``optim.name``: AdamW or SGD (momentum, optionally Nesterov) over the parameter ``groups``."""
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             amsgrad=cfg.amsgrad, eps=cfg.eps)


def _write_lines(path: Path, records: list[dict]) -> None:
    """``records`` as JSON lines, replacing ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
