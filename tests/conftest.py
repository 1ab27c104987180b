"""Test-wide settings."""

import os

# As the jetkd CLI does: OpenMP threads that spin-wait for a busy core make small torch ops ~30x slower on a
# 2-core machine shared with subprocesses (DDP, the generator's workers). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Triton kernels run through Triton's interpreter on machines without a GPU; triton reads this when it is first
# imported, which another test (torch's ONNX exporter) may do before tests/test_pair_triton.py: set it up front.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """train/val/test cache files of 256/96/96 toy jets (tests/helpers.py), up to 16 constituents."""
    from helpers import write_toy_cache

    return write_toy_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def lorentznet_teacher(cache, tmp_path_factory):
    """best.pt of a tiny LorentzNet (8 hidden, 2 blocks) trained 2 epochs on ``cache``: a real teacher for
    the distillation methods' taps (``LGEBs.<i>``, ``graph_dec.<i>``)."""
    from helpers import job_dict

    from jetkd.config import load_job
    from jetkd.train.loop import Trainer

    run = tmp_path_factory.mktemp("lorentznet_teacher")
    model = {"name": "lorentznet", "n_hidden": 8, "n_layers": 2, "dropout": 0.0}
    Trainer(load_job(data=job_dict(cache, run, model=model)), progress=False).fit()
    return run / "best.pt"
