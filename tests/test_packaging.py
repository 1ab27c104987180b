"""Packaging: the shipped configs (the top-level ``configs/`` folder) install as ``jetkd.configs``, so a plain
``pip install .`` runs ``jetkd quickstart`` from any folder, and an editable install still reads ``configs/``.

Each install goes into a fresh virtual environment that sees this one's packages through a ``.pth`` line (not
its ``.pth`` files, so not this checkout's editable install): only the installed jetkd can answer. Everything
builds offline (``--no-index --no-build-isolation``) from a copy of the sources, so the checkout stays clean.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "jetkd", "data_prep", "configs")
# Building offline needs a setuptools with bdist_wheel built in (>= 70.1; torch pulls a recent one) or `wheel`.
needs_build = pytest.mark.skipif(
    importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None,
    reason="no wheel builder in this environment (setuptools >= 70.1 or wheel)")
TINY = ["generate.jets=200", "generate.workers=1", "convert.max_particles=16", "teacher.train.epochs=1",
        "student_defaults.train.epochs=1", "evaluate.betas=[0.0, 0.5]"]


def run(args, cwd, timeout=120):
    """Run ``args`` in ``cwd`` with a clean environment (no PYTHONPATH); its output, or a failure showing it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fresh_venv(path: Path) -> Path:
    """A new virtual environment (no pip of its own) that also sees this one's site-packages; its python."""
    venv.create(path, with_pip=False, symlinks=True)
    python = path / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path).strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "_jetkd_test_parent.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


def pip_install(python: Path, *args, cwd: Path) -> None:
    """Install with pip into ``python``'s environment, offline; ``--ignore-installed``: this environment's jetkd
    (seen through the .pth line) is neither reused nor touched."""
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "--ignore-installed",
         "--disable-pip-version-check", *args], cwd)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A copy of what a clean clone builds from."""
    src = tmp_path_factory.mktemp("packaging") / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(sources) -> Path:
    """The wheel ``pip install .`` would build and install."""
    dist = sources.parent / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
         "--disable-pip-version-check", "-w", dist, sources], sources.parent)
    (path,) = dist.glob("jetkd-*.whl")
    return path


def test_every_package_is_listed_in_pyproject():
    """pyproject lists its packages (a package-dir entry maps configs/ into jetkd): a new subpackage must be added."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {p.parent for top in ("jetkd", "data_prep") for p in (ROOT / top).rglob("*.py")}
    present = {".".join(folder.relative_to(ROOT).parts) for folder in folders if "__pycache__" not in folder.parts}
    assert listed == present | {"jetkd.configs"}


@needs_build
def test_wheel_ships_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"jetkd/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert "jetkd/configs/quickstart.yaml" in shipped and shipped <= names
    assert "jetkd/configs/__init__.py" in names
    assert not any(name.startswith(("configs/", "tests/")) for name in names)  # nothing loose at the top level


@needs_build
def test_installed_wheel_runs_the_quickstart_outside_the_checkout(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, wheel, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = ("import jetkd, jetkd.pipeline as p, jetkd.config as c; print(jetkd.__file__); print(p.QUICKSTART); "
             "p.load_pipeline(c.shipped_config('compare_methods.yaml')); c.load_job(c.shipped_config('mlp_kd_T3.yaml'))")
    module, quickstart = run([python, "-c", probe], work).split()  # extends: between packaged configs works too
    site = tmp_path / "venv" / "lib"
    assert Path(module).is_relative_to(site) and Path(quickstart).is_relative_to(site), (module, quickstart)
    out = run([tmp_path / "venv" / "bin" / "jetkd", "quickstart", *TINY, "run_dir=run"], work, timeout=300)
    for name in ("report.md", "report.json", "teacher/best.pt", "deepset_kd/best.pt"):
        assert (work / "run" / name).is_file(), name
    assert str((work / "run").resolve()) in out


@needs_build
def test_editable_install_reads_the_configs_folder(sources, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "-e", sources, cwd=tmp_path)
    probe = "import jetkd.pipeline as p; print(p.QUICKSTART); p.load_pipeline(p.QUICKSTART)"
    assert run([python, "-c", probe], tmp_path).strip() == str(sources / "configs" / "quickstart.yaml")
