"""jetkd.quant: ap_fixed<W,I,AP_RND,AP_SAT> in PyTorch (rounding, saturation, straight-through gradients)."""

import pytest
import torch
from torch import nn

from jetkd.errors import InputError
from jetkd.quant import FixedPoint, FixedPointChain, accumulator, profiled_chain


def test_rounding_and_saturation():
    t = FixedPoint(6, 3)  # 3 fractional bits: steps of 0.125 in [-4, 4 - 0.125]
    x = torch.tensor([0.0625, -0.0625, 0.1875, 1.3, -1.3, 3.99, 100.0, -4.0, -100.0], dtype=torch.float64)
    expected = [0.125, 0.0, 0.25, 1.25, -1.25, 3.875, 3.875, -4.0, -4.0]  # halves round up; beyond the range: saturate
    assert t.quantize(x).tolist() == expected
    assert t.hls == "ap_fixed<6,3,AP_RND,AP_SAT>" and str(t) == "ap_fixed<6,3>"


def test_straight_through_gradient_and_parsing():
    x = torch.tensor([0.3, -1.7], requires_grad=True)
    FixedPoint(8, 2).quantize(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    assert FixedPoint.parse("ap_fixed<16,6>") == FixedPoint(16, 6) == FixedPoint.parse("ap_fixed<16,6,AP_RND,AP_SAT>")
    for bad in ("ap_fixed<16>", "ap_fixed<6,16>", "fixed<8,2>", "ap_fixed<0,0>", ""):
        with pytest.raises(InputError, match="--precision"):
            FixedPoint.parse(bad)


def test_profiled_chain_types_cover_the_values_and_accumulators_are_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.LeakyReLU(0.01), nn.Linear(7, 2))
    x = torch.randn(200, 5) * 10
    chain = profiled_chain(net, x, width=16)
    assert chain.types["input"].integer == FixedPoint.covering(x.abs().max().item(), 16).integer
    assert 2 ** (chain.types["input"].integer - 1) > x.abs().max().item()
    acc = accumulator(FixedPoint(16, 6), FixedPoint(16, 2), FixedPoint(16, 3), 7)
    assert acc.frac == 24 and acc.integer >= 8 + 3
    with torch.no_grad():
        torch.testing.assert_close(chain(x).float(), net(x), atol=0.05, rtol=0.01)  # 16 bits: close to the float net
    assert isinstance(chain, FixedPointChain) and chain(x).dtype == torch.float64


def test_the_emulation_is_hls4mls_c_simulation_bit_for_bit_saturation_included(tmp_path):
    pytest.importorskip("hls4ml")
    import numpy as np

    from jetkd.export.hls import _project
    from jetkd.export import quiet

    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 12), nn.LeakyReLU(0.01), nn.Linear(12, 9), nn.LeakyReLU(0.2), nn.Linear(9, 3))
    chain = profiled_chain(net, torch.randn(100, 6), width=12)  # types for inputs ~N(0, 1) ...
    x = (torch.randn(400, 6) * 4).numpy().astype(np.float32)  # ... fed inputs 4x wider: many values saturate
    assert (np.abs(x) >= 2.0 ** (chain.types["input"].integer - 1)).any()
    with quiet():
        model = _project(chain, 6, tmp_path / "prj", "Vitis")
    csim = np.asarray(model.predict(x), np.float64).reshape(400, -1)
    with torch.no_grad():
        emulated = chain(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(csim, emulated)


def test_the_chain_trains_quantization_aware():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.01), nn.Linear(8, 2))
    x, y = torch.randn(256, 3), torch.randint(0, 2, (256,))
    chain = profiled_chain(net, x, width=10).train()
    loss = nn.functional.cross_entropy(chain(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())  # gradients pass the roundings
