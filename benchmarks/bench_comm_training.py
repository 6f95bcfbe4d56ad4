"""Data-parallel training with TopK 1 % + error feedback vs dense (issue 3, training goals).

Trains the GDC autoencoder (demo's synthetic GDC project; held-out reconstruction MSE) and a
small CNN (synthetic pathology patches; validation accuracy) on 2 and 4 real ranks
(torchrun, gloo, OMP_NUM_THREADS=1) with: plain DDP, our DDP hook dense (byte reference),
TopK 1 % + error feedback through sparse_allreduce, and through the packed allgather with
fp32 and fp16 values, + LocalAdam (Adam's direction compressed), + CSER-style local models
(``local_error``), + a per-rank estimate of the averaged gradient's Adam second moment
(``LocalAdam(noise_ratio=1/p)``, ``_vc``) and half-weight local models (``_vc_w``), and, with
``--cnn-momentum 0.9``, DGC momentum correction on the CNN. Prints a table and a pass/fail
goal summary; writes bench-out/comm_training.json.

    .venv/bin/python benchmarks/bench_comm_training.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from oncoscale.comm.training_bench import VARIANTS, run_benchmark  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer steps")
    ap.add_argument("--out", default="bench-out/comm_training.json")
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--models", nargs="+", choices=("ae", "cnn"), default=["ae", "cnn"])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--ae-steps", type=int, default=None)
    ap.add_argument("--cnn-steps", type=int, default=None)
    ap.add_argument("--cnn-momentum", type=float, default=None,
                    help="train the CNN with momentum SGD (enables the _dgc variant)")
    ap.add_argument("--cnn-lr", type=float, default=None, help="CNN learning rate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    a = ap.parse_args()
    steps = {k: v for k, v in (("ae", a.ae_steps), ("cnn", a.cnn_steps)) if v}
    run_benchmark(quick=a.quick, world_sizes=tuple(a.world_sizes), models=tuple(a.models),
                  variants=tuple(a.variants), steps=steps or None, out=a.out,
                  cnn_momentum=a.cnn_momentum, cnn_lr=a.cnn_lr, seed=a.seed)


if __name__ == "__main__":
    main()
