"""Fixed-point arithmetic as the FPGA computes it: hls4ml's ``ap_fixed<W,I,AP_RND,AP_SAT>``, emulated in PyTorch.

A value of type ``FixedPoint(W, I)`` has W bits, I of them integer (sign included), so ``F = W - I`` fractional bits:
it is a multiple of 2^-F in ``[-2^(I-1), 2^(I-1) - 2^-F]``. Rounding is to the nearest multiple, halves up (AP_RND);
values beyond the range saturate (AP_SAT) instead of wrapping around as hls4ml's default AP_TRN/AP_WRAP would.

:class:`FixedPointChain` is a Linear/LeakyReLU chain (a student's folded network, :mod:`jetkd.models.folded`) that
computes exactly what hls4ml's C simulation of it computes (``io_parallel``): the input cast to its type, every
weight and bias rounded to theirs, each Dense summed exactly in a wide accumulator and rounded to its result type,
each LeakyReLU ``x if x > 0 else round(alpha_q * x)`` with its slope rounded to the parameter type. In eval mode it
runs in float64, where all of this is exact for W <= 24 (tested bit for bit against the C simulation); in training
mode the roundings pass gradients straight through (the straight-through estimator), so the same module trains
quantization-aware.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from jetkd.errors import InputError

_TYPE = re.compile(r"^\s*ap_fixed\s*<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*AP_RND\s*,\s*AP_SAT\s*)?>\s*$")


@dataclass(frozen=True)
class FixedPoint:
    """``ap_fixed<width, integer, AP_RND, AP_SAT>``."""

    width: int
    integer: int

    def __post_init__(self):
        if not 1 <= self.integer <= self.width <= 64:
            raise InputError("precision", f"expected ap_fixed<W,I> with 1 <= I <= W <= 64, got {self.width},{self.integer}")

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def hls(self) -> str:
        """The type as hls4ml's configuration writes it."""
        return f"ap_fixed<{self.width},{self.integer},AP_RND,AP_SAT>"

    def __str__(self) -> str:
        return f"ap_fixed<{self.width},{self.integer}>"

    @classmethod
    def parse(cls, text: str, where: str = "--precision") -> "FixedPoint":
        """``"ap_fixed<16,6>"`` (or with ``,AP_RND,AP_SAT``) -> ``FixedPoint(16, 6)``."""
        m = _TYPE.match(text or "")
        if not m:
            raise InputError(where, f"expected ap_fixed<W,I> with 1 <= I <= W <= 64, got {text!r}")
        try:
            return cls(int(m[1]), int(m[2]))
        except InputError:
            raise InputError(where, f"expected ap_fixed<W,I> with 1 <= I <= W <= 64, got {text!r}") from None

    @classmethod
    def covering(cls, largest: float, width: int) -> "FixedPoint":
        """The ``width``-bit type with just enough integer bits (sign included) for magnitudes up to ``largest``."""
        integer = max(1, math.ceil(math.log2(max(largest, 2.0**-8) * 1.01)) + 1)
        return cls(max(width, integer + 1), integer)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded (halves up) to a multiple of 2^-frac and saturated to the range; straight-through
        gradient (identity) in training."""
        scale = 2.0**self.frac
        q = torch.clamp(torch.floor(x.detach() * scale + 0.5) / scale, -(2.0 ** (self.integer - 1)),
                        2.0 ** (self.integer - 1) - 1.0 / scale)
        return q + (x - x.detach()) if x.requires_grad else q  # value q exactly, gradient 1


PARAM = FixedPoint(18, 8)  # the LeakyReLU slope's type (hls4ml's default parameter width, rounded and saturated)


def accumulator(x: FixedPoint, w: FixedPoint, b: FixedPoint, n_in: int) -> FixedPoint:
    """A type that holds every partial sum of ``n_in`` products x * w plus a bias exactly (no rounding, no overflow)."""
    frac = max(x.frac + w.frac, b.frac)
    integer = max(x.integer + w.integer, b.integer) + math.ceil(math.log2(n_in + 1)) + 1
    return FixedPoint(frac + integer, integer)


class QuantLinear(nn.Linear):
    """``nn.Linear`` computed in fixed point: weight and bias rounded to ``types["weight"]`` / ``["bias"]``, the
    exact sum of products rounded to ``types["result"]``. The float parameters are what trains (straight through).
    The arithmetic runs in the input's dtype: float64 in eval, where it is exact for W <= 24."""

    def __init__(self, in_features: int, out_features: int, types: dict[str, FixedPoint]):
        super().__init__(in_features, out_features)
        self.types = types

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.types["weight"].quantize(self.weight.to(x.dtype))
        b = self.types["bias"].quantize(self.bias.to(x.dtype))
        return self.types["result"].quantize(nn.functional.linear(x, w, b))


class QuantLeakyReLU(nn.LeakyReLU):
    """hls4ml's LeakyReLU: ``x if x > 0 else round(alpha_q * x)``, alpha rounded to :data:`PARAM`."""

    def __init__(self, negative_slope: float, types: dict[str, FixedPoint]):
        super().__init__(negative_slope)
        self.types = types

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = PARAM.quantize(torch.tensor(self.negative_slope, dtype=torch.float64)).item()
        return torch.where(x > 0, x, self.types["result"].quantize(alpha * x))


class FixedPointChain(nn.Module):
    """A Linear/LeakyReLU chain computed as hls4ml computes it in ``types`` (see the module docstring).

    net: ``nn.Sequential`` of ``nn.Linear`` and ``nn.LeakyReLU``; its parameters (the same tensors) become those of
    ``self.net``, a Sequential of :class:`QuantLinear` / :class:`QuantLeakyReLU` called module by module, so hooks
    on its layers (taps, NORM's transform) fire. types: ``{"input": FixedPoint, "_<i>": {"weight", "bias",
    "result"} for a Linear at index i, {"result"} for a LeakyReLU}``; names as hls4ml's PyTorch converter gives
    the layers. In eval mode the chain computes in float64 (exact); in training in the input's dtype.
    """

    def __init__(self, net: nn.Sequential, types: dict):
        super().__init__()
        self.types = types
        layers = []
        for i, layer in enumerate(net):
            t = types[f"_{i}"]
            if isinstance(layer, nn.Linear):
                q = QuantLinear(layer.in_features, layer.out_features, t)
                q.weight, q.bias = layer.weight, layer.bias
            elif isinstance(layer, nn.LeakyReLU):
                q = QuantLeakyReLU(layer.negative_slope, t)
            else:
                raise TypeError(f"a fixed-point chain holds Linear and LeakyReLU layers, not {type(layer).__name__}")
            layers.append(q)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.types["input"].quantize(x if self.training else x.double()))

    def quantized_net(self) -> nn.Sequential:
        """A plain ``nn.Linear`` / ``nn.LeakyReLU`` copy of the chain whose weights and biases are already on their
        grids (what goes into firmware): hls4ml reads weights back from text as float32 and rounds them again,
        which moves a weight lying within float32 precision of a rounding midpoint by one step; pre-rounded values
        are exact in float32."""
        layers = []
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    plain = nn.Linear(layer.in_features, layer.out_features)
                    plain.weight.copy_(layer.types["weight"].quantize(layer.weight.double()))
                    plain.bias.copy_(layer.types["bias"].quantize(layer.bias.double()))
                    layers.append(plain)
                else:
                    layers.append(nn.LeakyReLU(layer.negative_slope))
        return nn.Sequential(*layers)

    def hls_precision(self) -> dict[str, dict[str, str]]:
        """hls4ml ``LayerName`` precisions for this chain (input included), accumulators exact."""
        out = {"input": {"result": self.types["input"].hls}}
        source = self.types["input"]
        for i, layer in enumerate(self.net):
            t = self.types[f"_{i}"]
            if isinstance(layer, nn.Linear):
                acc = accumulator(source, t["weight"], t["bias"], layer.in_features)
                out[f"_{i}"] = {"weight": t["weight"].hls, "bias": t["bias"].hls, "result": t["result"].hls,
                                "accum": f"ap_fixed<{acc.width},{acc.integer}>"}
            else:
                out[f"_{i}"] = {"result": t["result"].hls, "param": PARAM.hls}
            source = t["result"]
        return out


def profiled_chain(net: nn.Sequential, x: torch.Tensor, width: int = 16, fixed: FixedPoint | None = None) -> FixedPointChain:
    """A :class:`FixedPointChain` of ``net``: every type ``fixed`` if given, else ``width`` bits with the integer bits
    each weight, bias, input and output needs on inputs ``x`` (the largest magnitude seen, sign included)."""
    pick = (lambda largest: fixed) if fixed is not None else (lambda largest: FixedPoint.covering(largest, width))
    types, h = {"input": pick(x.abs().max().item())}, x
    with torch.no_grad():
        for i, layer in enumerate(net):
            h = layer(h)
            if isinstance(layer, nn.Linear):
                types[f"_{i}"] = {"weight": pick(layer.weight.abs().max().item()),
                                  "bias": pick(layer.bias.abs().max().item()), "result": pick(h.abs().max().item())}
            else:
                types[f"_{i}"] = {"result": types[f"_{i - 1}"]["result"] if i else pick(h.abs().max().item())}
    return FixedPointChain(net, types).eval()
