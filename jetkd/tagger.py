"""A trained model with its input contract, ready for analysis code: :func:`load` and :class:`Tagger`.

Three lines score a ROOT file::

    import jetkd
    tagger = jetkd.load("runs/quickstart/deepset_kd")   # a run folder, best.pt or last.pt
    scores = tagger.score("jets.root")                  # (n_jets, n_class) probabilities, in entry order

``tagger(p4, mask)`` gives logits as the models do, after putting the jets in the form the model was trained
on: constituents ordered by decreasing pT and cut to the model's own constituent count, so the padding a
caller uses never changes a score.
"""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jetkd.contract import InputContract, MassCheck
from jetkd.data.sources import JetChunk, iter_chunks
from jetkd.errors import InputError

BATCH_SIZE = 4096  # jets per forward pass when scoring


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, float64 (in numpy: no thread-pool start-up per batch)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def leading(p4: torch.Tensor, mask: torch.Tensor, n_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each jet's leading constituents by pT, cut to ``min(n_max, N)`` slots.

    p4: (B, N, 4) ``[E, px, py, pz]`` GeV, zero-padded; mask: (B, N) bool. Returns ``(p4, mask)`` of shape
    (B, W, 4), (B, W), W = min(n_max, N), with padding after the real constituents and zeros in it. No
    data-dependent shape, so it traces and exports with a dynamic N.
    """
    mask = mask.bool()
    pt2 = (p4[..., 1] ** 2 + p4[..., 2] ** 2).masked_fill(~mask, -1.0)
    order = torch.sort(pt2, dim=1, descending=True).indices[:, :n_max]
    mask = torch.gather(mask, 1, order)
    p4 = torch.gather(p4, 1, order[..., None].expand(-1, -1, 4)) * mask[..., None]
    return p4, mask


class Tagger(nn.Module):
    """A trained jet model and its :class:`~jetkd.contract.InputContract`.

    forward(p4 (B, N, 4) GeV, mask (B, N) bool) -> logits (B, n_class): the model on the leading
    ``contract.max_constituents`` constituents by pT. :meth:`score` takes files, awkward arrays or padded
    arrays and returns class probabilities in input order (NaN rows for jets that cannot be scored).

    Attributes: ``model``, ``contract``, ``name`` (for output branches), ``class_names``, ``strict`` (contract
    breaches the model cannot repair raise instead of warning), ``source`` (checkpoint path).
    """

    def __init__(self, model: nn.Module, contract: InputContract, name: str = "model", strict: bool = False,
                 source: str | None = None):
        super().__init__()
        self.model, self.contract, self.name, self.strict = model, contract, name, strict
        self.source = source  # the checkpoint it was loaded from

    @property
    def class_names(self) -> list[str]:
        return list(self.contract.class_names)

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p4, mask = leading(p4, mask, self.contract.max_constituents)
        return self.model(p4, mask)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, contract: {self.contract.describe()}"

    # ------------------------------------------------------------------------- scoring

    def score(self, source, *, strict: bool | None = None, batch_size: int = BATCH_SIZE, step_size: int = 50_000,
              format: str = "auto", branch_map: dict | None = None) -> np.ndarray:
        """Class probabilities for every jet of ``source``, in input order.

        source: a file path (any reader format, labelled or not), an awkward array of jets as uproot returns it,
            padded ``p4`` or ``(p4, mask)`` arrays (see :mod:`jetkd.data.sources`).
        strict: contract breaches the model cannot repair (mass convention) raise :class:`InputError` instead of
            one :class:`~jetkd.contract.ContractWarning` (default: the tagger's ``strict``).
        Returns (n_jets, n_class) float64; NaN rows for jets without constituents or with non-finite momenta.
        """
        where = str(source) if isinstance(source, (str, Path)) else f"input ({type(source).__name__})"
        check = self.mass_check(strict)
        parts = [self.score_chunk(chunk, check, where, batch_size)
                 for chunk in iter_chunks(source, step_size=step_size, format=format, branch_map=branch_map,
                                          label_mode="none")]
        check.finish(where)
        return np.concatenate(parts) if parts else np.zeros((0, self.contract.n_class))

    def mass_check(self, strict: bool | None = None) -> MassCheck:
        return MassCheck(self.contract, self.name, self.strict if strict is None else strict)

    def score_chunk(self, chunk: JetChunk, check: MassCheck | None = None, where: str = "input",
                    batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Probabilities (B, n_class) float64 for one :class:`JetChunk`; NaN where ``chunk.ok`` is False."""
        if check is not None:
            check.update(*chunk.n_massive(self.contract.max_constituents),
                         f"{where}[entries {chunk.entries[0]}-{chunk.entries[1]}]")
        out = np.full((len(chunk), self.contract.n_class), np.nan)
        out[chunk.ok] = self.predict(chunk.components, chunk.counts[chunk.ok], batch_size)
        return out

    @torch.inference_mode()
    def predict(self, components: list[np.ndarray], counts: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Softmax probabilities (B, n_class) float64 of B jets whose constituents are given flat.

        components: ``[E, px, py, pz]``, each (n_total,) float32 in GeV: the constituents jet after jet, by
        decreasing pT within a jet; counts: (B,) >= 1 constituents per jet. Each jet is cut to its leading
        ``contract.max_constituents``; jets are batched by multiplicity, each batch padded to its own longest jet
        (so hardly padded at all), run through :meth:`inference_model`, and the results put back in input order.
        """
        self.eval()
        counts = np.asarray(counts, np.int64)
        kept = np.minimum(counts, self.contract.max_constituents)
        order = np.argsort(kept, kind="stable")
        by_length = kept[order]
        ends = np.cumsum(by_length)
        starts = (np.cumsum(counts) - counts)[order]  # where each jet's constituents begin, in visiting order
        total = int(ends[-1]) if len(ends) else 0
        take = np.repeat(starts - (ends - by_length), by_length) + np.arange(total)
        flat = [c[take] for c in components]  # visiting order, each jet cut to its leading constituents
        logits = np.empty((len(order), self.contract.n_class), np.float64)
        device, model = self.device, self.inference_model()
        for a in range(0, len(order), batch_size):
            b = min(a + batch_size, len(order))
            width = max(1, int(by_length[b - 1]))
            real = np.arange(width) < by_length[a:b, None]
            x = np.zeros((4, b - a, width), np.float32)
            for k, component in enumerate(flat):
                x[k, real] = component[ends[a] - by_length[a] : ends[b - 1]]
            p4 = torch.from_numpy(x).to(device).permute(1, 2, 0)  # (b, width, 4)
            logits[order[a:b]] = model(p4, torch.from_numpy(real).to(device)).double().cpu().numpy()
        return softmax(logits)

    def inference_model(self) -> nn.Module:
        """The model in its folded inference form (:func:`jetkd.models.folded.fold`: BatchNorms folded into the
        Linears, same logits), made once per device; ``forward`` keeps the plain model."""
        from jetkd.models.folded import fold

        fast = self.__dict__.get("_inference")
        if fast is None or fast[0] != self.device:
            fast = self.__dict__["_inference"] = (self.device, fold(self.model))
        return fast[1]


class OnnxTagger(Tagger):
    """A tagger exported with ``jetkd export --format onnx``, run by onnxruntime on the CPU; the same ``score``,
    ``predict`` and ``tagger(p4, mask)`` as :class:`Tagger` (its graph holds the preprocessing too)."""

    def __init__(self, path: str | Path, contract: InputContract, name: str, strict: bool = False):
        import onnxruntime as ort

        super().__init__(nn.Identity(), contract, name, strict, str(path))
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feed = {"p4": np.ascontiguousarray(p4.detach().cpu().numpy(), np.float32),
                "mask": np.ascontiguousarray(mask.detach().cpu().numpy(), bool)}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def inference_model(self):
        return self.forward


def _load_onnx(path: Path, strict: bool, name: str | None) -> OnnxTagger:
    import json

    from jetkd.export import require
    from jetkd.export.onnx import METADATA_KEY

    onnx = require("onnx")
    require("onnxruntime")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except FileNotFoundError:
        raise InputError(str(path), "no such file") from None
    except Exception as err:  # truncated or foreign file
        raise InputError(str(path), f"not a readable ONNX model ({type(err).__name__}: {str(err)[:200]})") from None
    if METADATA_KEY not in props:
        raise InputError(str(path), f"an ONNX model without jetkd's input contract (metadata {METADATA_KEY!r}); "
                                    "export it with jetkd export --format onnx")
    contract = InputContract.from_dict(json.loads(props[METADATA_KEY]), str(path))
    return OnnxTagger(path, contract, name or branch_name(path.stem), strict)


# ----------------------------------------------------------------------------- loading


def load(path: str | Path, *, device: str | torch.device = "cpu", strict: bool = False,
         name: str | None = None) -> Tagger:
    """The tagger of a run folder (its ``best.pt``), or of a ``best.pt`` / ``last.pt`` checkpoint, in eval mode on
    ``device``. The deploy form is loaded (NORM folded, CDD pruned, training heads dropped). A ``.onnx`` file from
    ``jetkd export`` gives an :class:`OnnxTagger` (onnxruntime, CPU) with the same interface.

    strict: make contract breaches the model cannot repair errors instead of warnings.
    name: the tagger's name (output branches); default: the run folder's name.
    """
    from jetkd.models import build_model
    from jetkd.train.checkpoint import load_checkpoint

    path = Path(path)
    if path.suffix == ".onnx":
        if str(device) != "cpu":
            raise InputError(str(path), f"an ONNX tagger runs on the CPU (onnxruntime), not on {device}")
        return _load_onnx(path, strict, name)
    ckpt = load_checkpoint(path)
    ckpt_path = path / "best.pt" if path.is_dir() else path
    if (ckpt.get("contract") or {}).get("kind") == "images":
        raise InputError(str(ckpt_path), "an image model: jetkd.load and jetkd score take jet taggers (evaluate image "
                                         "models with jetkd evaluate RUN --data DATASET)")
    if "contract" in ckpt:
        contract = InputContract.from_dict(ckpt["contract"], str(ckpt_path))
    else:
        contract = _legacy_contract(ckpt, ckpt_path)
    state = ckpt["deployed"]["model"] if "deployed" in ckpt else ckpt["model"]
    model = build_model(contract.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(str(ckpt_path), f"weights do not fit the stored model {contract.model} "
                                         f"({str(err).splitlines()[0]})") from None
    name = name or branch_name(ckpt_path.parent.name)
    return Tagger(model, contract, name, strict, str(ckpt_path)).to(device).eval()


def _legacy_contract(ckpt: dict, path: Path) -> InputContract:
    """The contract of a checkpoint written before contracts existed, rebuilt from its config and training cache
    (with one warning); an :class:`InputError` when that cache is gone."""
    from jetkd.contract import ContractWarning, training_contract
    from jetkd.data.cache import JetCache
    from jetkd.models import build_model

    spec = ckpt["deployed"]["spec"] if "deployed" in ckpt else ckpt["config"]["model"]
    train = ckpt["config"].get("data", {}).get("train", "")
    if not train or not Path(train).is_file():
        raise InputError(str(path), f"checkpoint without an input contract (jetkd {ckpt.get('jetkd_version', '?')}) "
                                    f"and its training cache {train or '(none)'} is gone; retrain the model")
    warnings.warn(f"{path}: checkpoint without an input contract; rebuilt from its training cache {train}",
                  ContractWarning, stacklevel=3)
    return training_contract(spec, build_model(spec), JetCache(train))


def branch_name(text: str) -> str:
    """``text`` as a ROOT-branch-safe identifier (letters, digits, underscores)."""
    name = re.sub(r"\W+", "_", text).strip("_")
    return name or "model"
