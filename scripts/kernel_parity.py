"""The fused pair kernel on the published LorentzNet checkpoint and its reference jets.

    TRITON_INTERPRET=1 python scripts/kernel_parity.py            # CPU: Triton's interpreter, float32 products
    python scripts/kernel_parity.py --device cuda                 # GPU: tf32 products (--precision bf16 too)

Loads ``../shared/reference/lorentznet_top_pretrained.pt`` (``jetkd.models.lorentznet.load_published``), runs the
64 reference jets through ``pair_kernel="torch"`` and ``pair_kernel="triton"``, and prints each path's largest
|delta logit| against the original code's single-jet logits and its argmax agreement with them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=Path(os.environ.get("JETKD_REFERENCE",
                                                                              ROOT / "../shared/reference")))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from jetkd.models.lorentznet import load_published

    data = np.load(args.reference / "lorentznet_top_parity.npz")
    p4 = torch.from_numpy(data["Pmu"]).to(args.device)
    mask = (torch.arange(p4.shape[1]) < torch.from_numpy(data["Nobj"])[:, None]).to(args.device)
    reference = data["logits_single"]
    model = load_published(args.reference / "lorentznet_top_pretrained.pt").to(args.device).eval()
    for kernel in ("torch", "triton"):
        model.pair_kernel = kernel
        with torch.no_grad():
            logits = model(p4, mask).double().cpu().numpy()
        agree = (logits.argmax(1) == reference.argmax(1)).mean()
        print(f"pair_kernel={kernel:6s} on {args.device}: max |delta logit| vs the original code "
              f"{np.abs(logits - reference).max():.2e}, argmax agreement {agree:.4f} on {len(reference)} jets")


if __name__ == "__main__":
    main()
