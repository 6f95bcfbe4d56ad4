"""Autoencoder training throughput and its FLOP rate as a fraction of plain torch.matmul.

Run:  .venv/bin/python benchmarks/bench_autoencoder.py [--quick] [--repeats N] [--device D]

For each shape (genes F -> latent L, batch B) it trains the default tied autoencoder with
``fit_sequential`` (MSE, Adam as ``train_autoencoder`` builds it) and, in the same process and
interleaved with the training runs, times the plain ``torch.matmul`` calls of the same GEMM
shapes one training step needs:

    forward   h  = x  @ W.T        (B x F) (F x L)
              y  = z  @ W          (B x L) (L x F)
    backward  dz = dy @ W.T        (B x F) (F x L)
              dW_dec = z.T @ dy    (L x B) (B x F)
              dW_enc = dh.T @ x    (L x B) (B x F)
    (no dx: the input needs no gradient)

so one step is 5 GEMMs of 2*B*F*L FLOPs = 10*B*F*L FLOPs (elementwise work, biases, the loss
and the optimizer are not counted: they are the overhead the fraction measures).
fraction = (10*B*F*L / training step time) / (10*B*F*L / matmul time) = matmul / step time.

Variants: ``fit_sequential`` with the fused Adam of ``train_autoencoder`` (ours), the same loop
with torch's default (unfused, for-loop) Adam, and a textbook loop (DataLoader over a
TensorDataset with per-sample collation, ``zero_grad(set_to_none=False)``, ``loss.item()``
every step, default Adam) that shows what the loop avoids. Medians over repeats; the machine
is shared, so read the spread too. JSON goes to bench-out/autoencoder.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from oncoscale.models import Autoencoder  # noqa: E402
from oncoscale.parallel.sequential import fit_sequential, fused_optimizer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Gemms:
    """The 5 GEMMs of one training step as plain torch.matmul calls on random operands."""

    def __init__(self, F: int, L: int, B: int, device: torch.device) -> None:
        g = torch.Generator(device="cpu").manual_seed(0)
        self.device = device
        self.W = torch.rand(L, F, generator=g).to(device)
        self.x = torch.rand(B, F, generator=g).to(device)
        self.z = torch.rand(B, L, generator=g).to(device)
        self.dy = torch.rand(B, F, generator=g).to(device)
        self.dh = torch.rand(B, L, generator=g).to(device)
        self.times: list[float] = []
        self()

    def __call__(self) -> None:
        torch.matmul(self.x, self.W.t())
        torch.matmul(self.z, self.W)
        torch.matmul(self.dy, self.W.t())
        torch.matmul(self.z.t(), self.dy)
        torch.matmul(self.dh.t(), self.x)

    def timed(self) -> None:
        sync(self.device)
        t = time.perf_counter()
        self()
        sync(self.device)
        self.times.append(time.perf_counter() - t)


class StepClock:
    """Times training steps and runs one timed baseline right after each step, so both see
    the same machine load (the machine is shared): step i lasts from the end of the baseline
    after step i-1 to the end of step i; it includes everything the loop does in between
    (batch indexing, zero_grad, forward, backward, optimizer, epoch-end bookkeeping)."""

    def __init__(self, gemms: Gemms, warmup: int) -> None:
        self.gemms, self.warmup, self.n = gemms, warmup, 0
        self.steps: list[float] = []
        self.mark: float | None = None

    def start(self) -> None:
        sync(self.gemms.device)
        self.mark = time.perf_counter()

    def after_step(self, *_: object) -> None:
        sync(self.gemms.device)
        now = time.perf_counter()
        self.n += 1
        if self.mark is not None and self.n > self.warmup:
            self.steps.append(now - self.mark)
            self.gemms.timed()
        self.start()


def ours(X: torch.Tensor, L: int, B: int, device: torch.device, epochs: int, fused: bool,
         gemms: Gemms) -> list[float]:
    """fit_sequential over ``epochs`` epochs; per-step seconds after the first epoch."""
    torch.manual_seed(0)
    model = Autoencoder(X.shape[1], L)
    clock = StepClock(gemms, warmup=len(X) // B)

    def opt(p):
        o = (fused_optimizer("adam", p, lr=1e-3) if fused
             else torch.optim.Adam(p, lr=1e-3))
        o.register_step_post_hook(clock.after_step)
        return o

    clock.start()
    fit_sequential(model, X, nn.MSELoss(), optimizer=opt, epochs=epochs, batch_size=B,
                   device=device, progress=False)
    return clock.steps


def textbook(X: torch.Tensor, L: int, B: int, device: torch.device, epochs: int,
             gemms: Gemms) -> list[float]:
    """A common hand-written loop: DataLoader + per-sample collation, grads zeroed in place,
    a host sync (loss.item()) every step, default Adam."""
    torch.manual_seed(0)
    model = Autoencoder(X.shape[1], L).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clock = StepClock(gemms, warmup=len(X) // B)
    opt.register_step_post_hook(clock.after_step)
    loader = DataLoader(TensorDataset(X), batch_size=B, shuffle=True)
    lf = nn.MSELoss()
    clock.start()
    for _ in range(epochs):
        for (xb,) in loader:
            xb = xb.to(device)
            opt.zero_grad(set_to_none=False)
            loss = lf(model(xb), xb)
            loss.backward()
            opt.step()
            loss.item()
    return clock.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one shape (5000 genes), 3 timed steps per variant, one repeat")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for both ours and the baseline")
    ap.add_argument("--shapes", default=None,
                    help="comma list of GENESxLATENTxBATCH, e.g. 5000x1000x256")
    ap.add_argument("--out", default="bench-out/autoencoder.json")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        shapes, repeats, steps, epochs = [(5000, 1000, 256)], args.repeats or 1, 3, 2
    else:
        shapes, repeats, steps, epochs = ([(5000, 1000, 256), (20000, 1000, 256)],
                                          args.repeats or 2, 5, 3)
    if args.shapes:
        shapes = [tuple(int(v) for v in item.split("x")) for item in args.shapes.split(",")]
    variants = ["fit_sequential + fused Adam (ours)", "fit_sequential + default Adam",
                "textbook loop (DataLoader, .item(), default Adam)"]
    rows = []
    for F, L, B in shapes:
        X = torch.rand(B * steps, F, generator=torch.Generator().manual_seed(1))
        flops = 10.0 * B * F * L
        gemms = Gemms(F, L, B, device)
        per: dict[str, list[float]] = {v: [] for v in variants}
        mm_per: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(repeats):
            for v in variants:
                before = len(gemms.times)
                if v == variants[2]:
                    per[v] += textbook(X, L, B, device, epochs, gemms)
                else:
                    per[v] += ours(X, L, B, device, epochs, v == variants[0], gemms)
                mm_per[v] += gemms.times[before:]
        for v in variants:
            med, mm_med = statistics.median(per[v]), statistics.median(mm_per[v])
            rows.append({
                "variant": v, "genes": F, "latent": L, "batch": B,
                "samples_per_s": B / med, "step_s": med,
                "step_s_min": min(per[v]), "step_s_max": max(per[v]),
                "gflops": flops / med / 1e9, "matmul_gflops": flops / mm_med / 1e9,
                "matmul_step_s": mm_med, "fraction_of_matmul": mm_med / med,
                "fraction_min_over_min": min(mm_per[v]) / min(per[v]),
                "n_steps": len(per[v]),
            })
    head = (f"{'variant':52s} {'F':>6s} {'L':>5s} {'B':>4s} {'samples/s':>10s} "
            f"{'GFLOP/s':>8s} {'matmul':>8s} {'fraction':>8s} {'min/min':>7s}")
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"repeats={repeats} (goal: fraction >= 0.7)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['variant']:52s} {r['genes']:6d} {r['latent']:5d} {r['batch']:4d} "
              f"{r['samples_per_s']:10.1f} {r['gflops']:8.1f} {r['matmul_gflops']:8.1f} "
              f"{r['fraction_of_matmul']:8.2f} {r['fraction_min_over_min']:7.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "repeats": repeats, "quick": args.quick,
            "load_avg": os.getloadavg()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
