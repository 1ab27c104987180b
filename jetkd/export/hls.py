"""``jetkd export RUN --format hls4ml``: a trained student as an hls4ml project, checked bit-accurately.

What goes into firmware is the student's network in its folded inference form (:mod:`jetkd.models.folded`:
Linear -> LeakyReLU chains, BatchNorms folded in); its inputs are the per-constituent features, which the trigger's
upstream firmware computes. ``DIR/inputs.json`` states them: names and order, units, scaling (none: the values the
model computes from ``p4``), the constituent count and the layout.

* MLP: one project ``DIR/net``; input (n_constituents * F,), the leading constituents' features, constituent-major.
* Deep set: two projects with the pT-weighted sum between them, ``DIR/phi`` (one constituent's F features -> C
  latents; run on every constituent) and ``DIR/rho`` (the pooled C -> logits). The sum ``sum_i (pT_i / pT_jet)
  phi_i`` is an accumulator between the two; it is kept out of hls4ml because hls4ml 1.3 computes einsum-style
  pooling with wrong values and output shape under its default channels-last conversion, and a Linear applied
  to an (N, F) input with the wrong weight layout (both seen when this was written). Here the sum is done in float64
  between the two C simulations.

Precision: ``--precision ap_fixed<W,I>`` for every layer, or by default per layer from the trained model: the integer
bits of the input and of each weight, bias and output from the largest magnitude it takes on real jets, at
``DEFAULT_WIDTH`` bits (:func:`jetkd.quant.profiled_chain`); rounding to nearest and saturation (AP_RND, AP_SAT)
everywhere, accumulators wide enough to be exact. hls4ml's bit-accurate C simulation (``compile()`` and
``predict()``, g++ only) then scores test jets, and ``DIR/parity.json`` holds its agreement with the float model, the
resource proxy, and ``emulation_max_abs_diff``: how far jetkd's own emulation of the fixed-point network
(:class:`jetkd.quant.FixedPointChain`, what quantization-aware training trains) is from the C simulation (0 when
they agree bit for bit).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jetkd.errors import InputError
from jetkd.quant import FixedPoint, profiled_chain

DEFAULT_WIDTH = 16
PARITY_JETS = 2000
BACKENDS = ("Vitis", "Vivado")
UNITS = {"rel_pt": "1 (pT / pT_jet)", "deta": "1 (eta - eta_jet)", "dphi": "rad (phi - phi_jet, wrapped to [-pi, pi))",
         "mass": "GeV", "delta_r": "1", "rel_e": "1 (E / E_jet)", "log_rel_pt": "1 (log(pT / pT_jet))",
         "log_rel_e": "1 (log(E / E_jet))", "pt": "GeV", "e": "GeV", "log_pt": "1 (log(pT / GeV))",
         "log_e": "1 (log(E / GeV))"}


def networks(tagger) -> dict[str, nn.Sequential]:
    """The plain networks that become hls4ml projects: ``{"net"}`` for an MLP, ``{"phi", "rho"}`` for a deep set
    (a float student's folded form, or a quantization-aware student's own chains)."""
    from jetkd.models.folded import FoldedDeepSet, FoldedMLP

    model = tagger.inference_model()
    if hasattr(model, "chains"):
        nets = {name: chain.net for name, chain in model.chains().items()}
    elif isinstance(model, FoldedMLP):
        nets = {"net": model.net}
    elif isinstance(model, FoldedDeepSet):
        nets = {"phi": model.phi, "rho": model.rho}
    else:
        raise InputError(str(tagger.source), f"hls4ml export takes the students (mlp, deepset and their _fixed "
                                             f"forms), not {tagger.contract.model['name']!r}")
    for net in nets.values():
        for layer in net:
            if isinstance(layer, nn.LeakyReLU):
                layer.inplace = False  # hls4ml's tracer reads the graph, not in-place updates
    return nets


def network_inputs(tagger, nets: dict, p4: np.ndarray, mask: np.ndarray) -> dict:
    """Float inputs of each network of ``nets`` (:func:`networks`) on jets ``p4`` (B, N, 4), ``mask`` (B, N): ``{"net": (B, n F)}`` or
    ``{"phi": (n_real, F), "weight": (n_real,), "jet": (n_real,) jet index, "rho": (B, C)}``."""
    from jetkd.models.students import flat_inputs
    from jetkd.tagger import leading

    folded = tagger.inference_model()
    with torch.no_grad():
        x4, m = leading(torch.from_numpy(p4), torch.from_numpy(mask), tagger.contract.max_constituents)
        if "net" in nets:
            return {"net": flat_inputs(folded.features(x4, m), folded.n_constituents).float().numpy()}
        x, weight = folded.inputs(x4, m)
        real = m.numpy()
        x_real, weight_real, jet = x.float().numpy()[real], weight.double().numpy()[real], np.nonzero(real)[0]
        latent = folded.phi(torch.from_numpy(x_real)).double().numpy()
    return {"phi": x_real, "weight": weight_real, "jet": jet, "rho": pool(latent, weight_real, jet, len(p4))}


def pool(latent: np.ndarray, weight: np.ndarray, jet: np.ndarray, n_jets: int) -> np.ndarray:
    """The deep set's pT-weighted sum, float64 -> float32: (n_jets, C) from per-constituent ``latent`` (n_real, C)."""
    out = np.zeros((n_jets, latent.shape[1]))
    np.add.at(out, jet, latent.astype(np.float64) * weight[:, None])
    return out.astype(np.float32)


def multiplications(tagger, nets: dict) -> int:
    """Multiplications per inference: every Linear's in x out, the deep set's phi once per constituent plus its
    weighting (n_constituents x C)."""
    per = {k: sum(l.in_features * l.out_features for l in net if isinstance(l, nn.Linear)) for k, net in nets.items()}
    if "net" in per:
        return per["net"]
    n = tagger.contract.max_constituents
    latent = [l for l in nets["phi"] if isinstance(l, nn.Linear)][-1].out_features
    return n * (per["phi"] + latent) + per["rho"]


def _weight_bits(chain) -> int:
    """Bits of all weights and biases of a :class:`~jetkd.quant.FixedPointChain` in their types."""
    bits = 0
    for i, layer in enumerate(chain.net):
        if isinstance(layer, nn.Linear):
            t = chain.types[f"_{i}"]
            bits += layer.weight.numel() * t["weight"].width + layer.bias.numel() * t["bias"].width
    return bits


def _project(chain, n_in: int, out_dir: Path, backend: str):
    """The hls4ml model of ``chain`` (input width ``n_in``, its types) written to ``out_dir`` and compiled."""
    import hls4ml

    net = chain.quantized_net()
    config = hls4ml.utils.config_from_pytorch_model(net, input_shape=(n_in,), granularity="name",
                                                    backend=backend, default_precision=chain.types["input"].hls)
    layers = config["LayerName"]
    for name, types in chain.hls_precision().items():
        key = next(k for k in layers if k.startswith("input")) if name == "input" else name
        layers[key]["Precision"].update(types)
    model = hls4ml.converters.convert_from_pytorch_model(net, hls_config=config, output_dir=str(out_dir),
                                                         backend=backend, io_type="io_parallel")
    model.compile()
    return model


def export_hls4ml(run: str | Path, out_dir: str | Path, *, precision: str | None = None, backend: str = "Vitis",
                  data: str | Path | None = None, n_jets: int = PARITY_JETS) -> dict:
    """Write the hls4ml project(s) of ``run``'s student to ``out_dir``, run the C simulation on test jets and write
    ``inputs.json`` and ``parity.json`` (returned). Nothing is left behind on failure."""
    from jetkd.evaluate import binary_metrics
    from jetkd.export import check_jets, quiet, require
    from jetkd.tagger import load, softmax

    require("hls4ml")
    if backend not in BACKENDS:
        raise InputError("--backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
    fixed = FixedPoint.parse(precision) if precision is not None else None
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(str(out_dir), "exists and is not an empty folder; choose a new output folder")
    tagger = load(run)
    nets = networks(tagger)
    p4, mask, label = check_jets(tagger, data, n_jets, splits=("test", "val"))
    inputs = network_inputs(tagger, nets, p4, mask)
    model = tagger.inference_model()
    if hasattr(model, "chains"):  # trained quantization-aware: exported in the arithmetic it was trained in
        if fixed is not None and fixed != model.precision:
            raise InputError("--precision", f"{run} was trained quantization-aware in {model.precision}; export it "
                                            f"in that precision (leave --precision out), not {fixed}")
        chains = model.chains()
    else:
        chains = {name: profiled_chain(net, torch.from_numpy(inputs[name]), DEFAULT_WIDTH, fixed)
                  for name, net in nets.items()}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    try:
        with quiet():
            projects = {name: _project(chains[name], inputs[name].shape[1], tmp / name, backend) for name in nets}
        csim, emulated = _run_fixed(projects, chains, inputs, len(p4))
        with torch.no_grad():
            float_logits = tagger(torch.from_numpy(p4), torch.from_numpy(mask)).double().numpy()
        parity = _parity(float_logits, csim, label, binary_metrics, softmax)
        parity.update(emulation_max_abs_diff=float(np.abs(csim - emulated).max()),
                      multiplications=multiplications(tagger, nets), weight_bits=sum(_weight_bits(c) for c in chains.values()),
                      precision={k: c.hls_precision() for k, c in chains.items()}, backend=backend,
                      projects=sorted(nets))
        (tmp / "parity.json").write_text(json.dumps(parity, indent=1))
        (tmp / "inputs.json").write_text(json.dumps(_inputs_doc(tagger, nets), indent=1))
        for config in tmp.glob("*/hls4ml_config.yml"):  # the projects' OutputDir: where they end up
            config.write_text(config.read_text().replace(str(tmp), str(out_dir.resolve())))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return parity


def _run_fixed(projects, chains, inputs, n_jets: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n_jets, n_class) float64 of the C simulation and of jetkd's emulation (:mod:`jetkd.quant`) of it."""
    def both(name, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        csim = np.asarray(projects[name].predict(x), np.float64).reshape(len(x), -1)
        with torch.no_grad():
            return csim, chains[name](torch.from_numpy(x)).numpy()

    if "net" in projects:
        return both("net", inputs["net"])
    phi_csim, phi_emulated = both("phi", inputs["phi"])
    rho = [both("rho", pool(latent, inputs["weight"], inputs["jet"], n_jets)) for latent in (phi_csim, phi_emulated)]
    return rho[0][0], rho[1][1]


def _parity(float_logits, fixed_logits, label, binary_metrics, softmax) -> dict:
    import warnings

    out = {"n_jets": len(label), "max_abs_diff": float(np.abs(fixed_logits - float_logits).max()),
           "argmax_agreement": float((fixed_logits.argmax(1) == float_logits.argmax(1)).mean())}
    labelled = label >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, logits in (("float", float_logits), ("fixed", fixed_logits)):
            m = binary_metrics(softmax(logits[labelled]), label[labelled]) if labelled.any() else {}
            for key, name in (("auc", "auc"), ("rej_30", "rej_30"), ("rej_50", "rej_50")):
                value = m.get(key, float("nan"))
                out[f"{name}_{kind}"] = None if not np.isfinite(value) else float(value)
    return out


def _inputs_doc(tagger, nets) -> dict:
    c = tagger.contract
    doc = {
        "features": c.features,
        "units": {name: UNITS[name] for name in c.features},
        "scaling": "none: the features exactly as the model computes them (jetkd.models.features)",
        "jet_axis": f"E-scheme sum of the leading {c.max_constituents} constituents by pT",
        "constituents": c.max_constituents,
        "ordering": c.ordering,
        "class_names": c.class_names,
        "contract": c.to_dict(),
    }
    if "net" in nets:
        n = c.model.get("n_constituents", 128)
        doc["layout"] = (f"net: ({n} * {len(c.features)},) the leading {n} constituents' features, constituent-major "
                         f"(constituent 0's {len(c.features)} features first), zeros for missing constituents")
    else:
        doc["layout"] = ("phi: one constituent's features (F,) -> latent (C,), for every constituent; then the sum "
                         "over constituents of (pT / pT_jet) * latent; rho: that sum (C,) -> logits")
    return doc
