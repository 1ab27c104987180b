"""Image models through jetkd's trainer, methods, run folders and reports: the images quickstart (shrunk), exact
resume with augmentation, KD with an augmenting loader, DDP, `jetkd evaluate` on image runs."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import jetkd
from jetkd.cli import main
from jetkd.config import load_job
from jetkd.errors import InputError
from jetkd.pipeline import load_pipeline, run_pipeline
from jetkd.config import shipped_config
from jetkd.train.checkpoint import load_checkpoint
from jetkd.train.loop import Preempted, Trainer

TINY_CIFAR_NET = {"name": "cifar_resnet", "depth": 8, "widths": [4, 4, 8, 8], "n_class": 10}


def write_cifar10_bin(folder, per_batch=24, seed=0):
    """A miniature CIFAR-10 binary folder (5 training batches, 1 test batch of ``per_batch`` images): records of
    one label byte and 3072 channel-major pixel bytes. Class c is brighter in channel c % 3, so it is learnable."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        pixels = rng.integers(0, 120, (per_batch, 3, 32, 32), dtype=np.uint8)
        pixels[np.arange(per_batch), labels % 3] += np.uint8(100)
        np.concatenate([labels[:, None], pixels.reshape(per_batch, -1)], 1).tofile(folder / name)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return folder


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar10_bin(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin")


def image_job(run_dir, data, **sections):
    job = {"run_dir": str(run_dir), "data": {"images": str(data)}, "model": TINY_CIFAR_NET,
           "train": {"epochs": 2, "batch_size": 16, "seed": 4}, "optim": {"lr": 3e-3}}
    job.update(sections)
    return load_job(data=job)


def test_images_quickstart_trains_every_method_and_reports(tmp_path, capsys):
    run = tmp_path / "iq"
    pipe = load_pipeline(shipped_config("images_quickstart.yaml"),
                         [f"run_dir={run}", "teacher.train.epochs=3", "student_defaults.train.epochs=4",
                          "students.student_fitnets.distill.fitnets.stage1_epochs=1",
                          "students.student_norm.distill.norm.beta_warmup_epochs=1",
                          "students.student_curriculum.distill.curriculum.phase_epochs=[1,1]",
                          "students.student_cdd.distill.cdd.start_epochs=1"])
    run_pipeline(pipe, progress=False)
    report = json.loads((run / "report.json").read_text())
    names = ["teacher", "student", "student_kd", "student_fitnets", "student_norm", "student_curriculum",
             "resnet_small", "student_cdd"]
    assert list(report["models"]) == names[: len(report["models"])] and set(names) <= set(report["models"])
    teacher = report["models"]["teacher"]
    assert teacher["metrics"]["n_images"] == 359 and teacher["metrics"]["accuracy"] > 0.8
    lo, hi = teacher["metrics"]["accuracy_interval"]
    assert lo < teacher["metrics"]["accuracy"] < hi
    assert 0 < teacher["retrieval"]["mAP"] <= 1 and teacher["retrieval"]["n_query"] == 359
    assert report["models"]["student"]["parameters"] == 1442
    contract = load_checkpoint(run / "student_norm")["contract"]
    assert contract["kind"] == "images" and contract["image_shape"] == [8, 8, 1] and len(contract["mean"]) == 1
    assert "| student_norm | 1,442 |" in (run / "report.md").read_text()
    deploy = report["models"]["student_cdd"]["deploy"]  # CDD: a doubled-width residual student, pruned and fused
    assert deploy["start_parameters"] == 12210 and report["models"]["student_cdd"]["parameters"] == \
        deploy["deployed_parameters"] <= deploy["start_parameters"]
    # jetkd evaluate on image runs; jetkd.load is for jet taggers
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "teacher"), str(run / "student"), "--data", "digits", "--out", str(out),
                 "--bootstrap", "50"]) == 0
    assert set(json.loads((out / "report.json").read_text())["models"]) == {"teacher", "student"}
    with pytest.raises(InputError, match="an image model"):
        jetkd.load(run / "student")
    capsys.readouterr()
    assert main(["evaluate", str(run / "teacher"), "--data", "digits", "--split", "val", "--out", str(out)]) == 2
    assert "val" in capsys.readouterr().err


def test_augmented_image_training_resumes_exactly(cifar, tmp_path, monkeypatch):
    Trainer(image_job(tmp_path / "full", cifar), progress=False).fit()
    real = Trainer.train_step

    def step_then_signal(self, batch):
        out = real(self, batch)
        if self.global_step == 10:  # epoch 2 (7 steps per epoch), mid-way
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(Preempted):
        Trainer(image_job(tmp_path / "killed", cifar), progress=False).fit()
    monkeypatch.setattr(Trainer, "train_step", real)
    trainer = Trainer(image_job(tmp_path / "killed", cifar), resume=True, progress=False)
    assert trainer.data.augmented and trainer.data.augment.pad == 4 and trainer.data.augment.flip
    trainer.fit()
    full, killed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("full", "killed"))
    for key in full["model"]:
        torch.testing.assert_close(full["model"][key], killed["model"][key], rtol=0, atol=0, msg=key)
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (tmp_path / "killed" / "metrics.jsonl").read_text()


def test_kd_and_fitnets_on_augmented_images_run_the_teacher_each_step(cifar, tmp_path):
    Trainer(image_job(tmp_path / "teacher", cifar), progress=False).fit()
    for distill in ({"method": "kd", "temperature": 4.0, "alpha": 0.9},
                    {"method": "fitnets", "temperature": 4.0, "fitnets": {"hint": "layer2", "guided": "layer2",
                                                                          "stage1_epochs": 1}}):
        distill["teacher"] = str(tmp_path / "teacher" / "best.pt")
        trainer = Trainer(image_job(tmp_path / distill["method"], cifar, distill=distill), progress=False)
        assert trainer.teacher_cache is None  # crops and flips differ every epoch: no cached teacher outputs
        trainer.fit()
        records = [json.loads(x) for x in (tmp_path / distill["method"] / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(np.isfinite(r["train_loss"]) for r in records)
    assert (tmp_path / "fitnets" / "metrics.jsonl").read_text().splitlines()[0].count('"phase": "hint"') == 1


def test_image_training_under_torchrun(cifar, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "ddp"), "data": {"images": str(cifar)},
                                      "model": TINY_CIFAR_NET, "train": {"epochs": 1, "batch_size": 8}}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "jetkd", "train",
           str(config)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["global_step"] == 7 and ckpt["contract"]["kind"] == "images"  # 120 images / (8 x 2 ranks)


def write_veri(folder, ids_train=6, ids_test=3, per_camera=2, cameras=2, seed=0):
    """A miniature VeRi-776 folder: JPEGs named ``VVVV_cCCC_FFFFFFFF_0.jpg``; each vehicle has its own colour, so
    identities are learnable; test vehicles are not training vehicles, as in VeRi."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for directory, ids in (("image_train", range(1, ids_train + 1)),
                           ("image_query", range(100, 100 + ids_test)), ("image_test", range(100, 100 + ids_test))):
        (folder / directory).mkdir(parents=True)
        for vid in ids:
            colour = rng.integers(0, 256, 3)
            for cam in range(1, cameras + 1):
                if directory == "image_query" and cam > 1:
                    continue  # one query camera: its gallery matches on camera 2 count, those on camera 1 are junk
                for k in range(per_camera):
                    pixels = np.clip(colour + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / directory / f"{vid:04d}_c{cam:03d}_{k:08d}_0.jpg",
                                                 quality=95)
    return folder


def test_reid_trains_with_pk_batches_and_triplet_loss_and_validates_by_retrieval(tmp_path):
    veri = write_veri(tmp_path / "VeRi")
    model = {"name": "reid_resnet", "n_class": 6, "block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 8, 16, 16],
             "stem_width": 8}
    job = load_job(data={"run_dir": str(tmp_path / "reid"), "model": model,
                         "data": {"images": str(veri), "image_options": {"size": [32, 32]}, "identities_per_batch": 3},
                         "train": {"epochs": 2, "batch_size": 6, "seed": 1}, "optim": {"lr": 3e-3}})
    trainer = Trainer(job, progress=False)
    batch = next(iter(trainer.loader))
    assert sorted(np.unique(batch.label.numpy(), return_counts=True)[1].tolist()) == [2, 2, 2]  # P = 3 x K = 2
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "reid" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_triplet"] >= 0 and 0 <= r["val_map"] <= 1 and r["val_acc"] == r["val_rank1"] for r in records)
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "reid"), "--data", str(veri), "--split", "gallery", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())["models"]["reid"]["retrieval"]
    assert r["n_query"] == 6 and 0 < r["mAP"] <= 1  # query (camera 1) against gallery (camera 2 matches)
    assert json.loads((out / "report.json").read_text())["models"]["reid"]["metrics"]["accuracy"] is None


def test_a_malformed_image_file_is_one_line_and_exit_2(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    header = (2051).to_bytes(4, "big") + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (folder / "train-images-idx3-ubyte").write_bytes(header + bytes(100))  # 10 images announced, 100 bytes given
    (folder / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(10))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {"images": str(folder)},
                                      "model": {"name": "digits_cnn", "n_class": 10}}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-images-idx3-ubyte" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
