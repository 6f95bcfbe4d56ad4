"""After a search: the Pareto plot, TorchScript + ONNX export of chosen networks, model cards.

``make_report(run_dir)`` writes, under ``run_dir/report`` (or ``out_dir``)::

    pareto.png                        accuracy vs latency, front joined, baselines marked
    net_<id>/model.pt                 TorchScript (traced, eval mode), input (B, 3, H, W)
    net_<id>/model.onnx               ONNX (opset 17, dynamic batch), same input
    net_<id>/model.pt2                torch.export program (torch.export.load), batch of 2
    net_<id>/model_card.md / .json    genome, metrics, data, budget, preprocessing
    report.json                       what was exported
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oncoscale._io import atomic_path, atomic_write_text
from oncoscale.errors import InputError


def read_history(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``history.csv`` of a run as a DataFrame (one row per evaluation)."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise InputError("no history.csv: is this a NAS run directory?", path=path)
    return pd.read_csv(path, keep_default_na=True)


def plot_pareto(history: pd.DataFrame, out: str | os.PathLike[str],
                metric: str = "accuracy") -> Path:
    """Scatter of every successful candidate (metric vs latency, log x), front joined,
    baselines marked with stars. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oncoscale.nas.selection import pareto_mask

    ok = history[(history["status"] == "ok") & history[metric].notna()].copy()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if len(ok):
        ax.scatter(ok["latency_ms"], ok[metric], s=18, c=ok["generation"], cmap="viridis",
                   alpha=0.8, label="candidates (colour: generation)")
        F = np.c_[-ok[metric].to_numpy(float), ok["latency_ms"].to_numpy(float)]
        front = ok[pareto_mask(F)].sort_values("latency_ms")
        ax.step(front["latency_ms"], front[metric], where="post", c="crimson", lw=1.5)
        ax.scatter(front["latency_ms"], front[metric], s=40, facecolors="none",
                   edgecolors="crimson", label="Pareto front")
        base = ok[ok["origin"].astype(str).str.startswith("baseline")]
        for _, r in base.iterrows():
            ax.scatter([r["latency_ms"]], [r[metric]], marker="*", s=180, c="black", zorder=5)
            ax.annotate(str(r["origin"]).split(":", 1)[1], (r["latency_ms"], r[metric]),
                        textcoords="offset points", xytext=(6, -10), fontsize=8)
        ax.set_xscale("log")
    ax.set_xlabel("inference latency per batch (ms, log scale)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Architecture search: accuracy vs speed (stars: baselines)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)


def _load_state(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "state.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("no state.json: is this a NAS run directory?", path=p) from exc


def export_network(run_dir: str | os.PathLike[str], cand_id: int,
                   out_dir: str | os.PathLike[str], *, test_data: Any | None = None
                   ) -> dict[str, Any]:
    """Rebuild candidate ``cand_id`` with its trained weights and export it.

    Writes ``model.pt`` (TorchScript), ``model.onnx`` and ``model_card.{md,json}`` into
    ``out_dir``; returns the card as a dict. ``test_data``: optional (x uint8 NHWC, y) to
    report held-out accuracy.
    """
    import torch

    from oncoscale.nas.data import to_tensor
    from oncoscale.nas.genome import Genome, decode

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = _load_state(run_dir)
    cands = {int(c["id"]): c for c in state["candidates"]}
    if cand_id not in cands:
        raise InputError(f"candidate {cand_id} not in this run (ids 0..{len(cands) - 1})",
                         path=run_dir / "state.json")
    c = cands[cand_id]
    if c["status"] != "ok":
        raise InputError(f"candidate {cand_id} has status {c['status']!r} ({c['reason']}); "
                         "only successful candidates can be exported", path=run_dir)
    wpath = run_dir / "weights" / f"{cand_id}.pt"
    if not wpath.is_file():
        raise InputError("trained weights missing", path=wpath)
    meta = state.get("meta", {})
    input_shape = tuple(meta.get("input_shape") or (3, state["input_size"], state["input_size"]))
    num_classes = int(meta.get("num_classes", 2))
    genome = Genome.from_json(c["genome"])
    net, info = decode(genome, input_shape, num_classes)
    net.load_state_dict(torch.load(wpath, map_location="cpu", weights_only=True))
    net.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, *input_shape)
    with torch.inference_mode():
        ref = net(example)
    # TorchScript (deprecated in recent torch but still the format most serving stacks load)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, example, check_trace=False)
        with atomic_path(out_dir / "model.pt") as tmp:
            traced.save(str(tmp))
        with torch.inference_mode():
            ts_out = torch.jit.load(str(out_dir / "model.pt"))(example)
    ts_err = float((ts_out - ref).abs().max())
    # torch.export program (the successor of TorchScript), best effort
    pt2: dict[str, Any] = {"path": "model.pt2"}
    try:
        ep = torch.export.export(net, (example,))
        tmp_pt2 = out_dir / f".model.{os.getpid()}.tmp.pt2"  # torch wants a .pt2 suffix
        try:
            torch.export.save(ep, str(tmp_pt2))
            os.replace(tmp_pt2, out_dir / "model.pt2")
        finally:
            tmp_pt2.unlink(missing_ok=True)
    except Exception as exc:
        pt2 = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    # ONNX (TorchScript-based exporter: works offline without onnxscript)
    onnx_info: dict[str, Any] = {"path": "model.onnx"}
    try:
        import onnx

        with atomic_path(out_dir / "model.onnx") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
            onnx.checker.check_model(onnx.load(str(tmp)))
        onnx_info["checked"] = True
    except Exception as exc:  # report, but keep the TorchScript export
        onnx_info = {"error": f"{type(exc).__name__}: {exc}"}
    test_acc = None
    if test_data is not None and len(test_data[1]):
        with torch.inference_mode():
            xt = to_tensor(test_data[0], meta.get("mean", [0, 0, 0]), meta.get("std", [1, 1, 1]))
            pred = torch.cat([net(xt[i:i + 256]) for i in range(0, len(xt), 256)]).argmax(1)
        test_acc = float((pred.numpy() == np.asarray(test_data[1])).mean())
    cfg = state["config"]

    def _num(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    card = {
        "id": cand_id,
        "genome": json.loads(c["genome"]),
        "origin": c["origin"],
        "generation": c["generation"],
        "metrics": {"val_accuracy": _num(c["accuracy"]), "val_auc": _num(c["auc"]),
                    "test_accuracy": test_acc, "latency_ms": _num(c["latency_ms"]),
                    "latency_batch_size": cfg["latency"]["batch_size"],
                    "latency_device": cfg["latency"]["device"] or cfg["workers"]["device"],
                    "params": c["params"], "train_seconds": c["seconds"],
                    "train_steps": c["steps"]},
        "data": {"description": state.get("data", ""), "input_shape": list(input_shape),
                 "num_classes": num_classes, "classes": meta.get("classes"),
                 "preprocessing": {"scale": "x / 255", "mean": meta.get("mean"),
                                   "std": meta.get("std"), "layout": "NCHW RGB"}},
        "budget": cfg["budget"],
        "search": cfg["search"],
        "repairs": c.get("repairs", []),
        "export": {"torchscript": {"path": "model.pt", "max_abs_diff": ts_err},
                   "onnx": onnx_info, "torch_export": pt2},
    }
    atomic_write_text(out_dir / "model_card.json", json.dumps(card, indent=2))
    atomic_write_text(out_dir / "model_card.md", _card_markdown(card, info))
    return card


def _card_markdown(card: dict[str, Any], info: Any) -> str:
    m = card["metrics"]
    lat_label = f"latency (ms per batch of {m['latency_batch_size']}, {m['latency_device']})"
    ts_diff = card["export"]["torchscript"]["max_abs_diff"]

    def f(v: Any, fmt: str = ".4f") -> str:
        return "n/a" if v is None else format(v, fmt)

    layers = "\n".join(f"| {i} | {' '.join(str(a) for a in g)} | {s[0]} x {s[1]} x {s[2]} |"
                       for i, (g, s) in enumerate(zip(card["genome"]["l"], info.shapes,
                                                      strict=False)))
    pre = card["data"]["preprocessing"]
    return f"""# Model card: NAS candidate {card['id']}

Found by `oncoscale nas` (NSGA-II over accuracy and latency), origin `{card['origin']}`,
generation {card['generation']}.

## Metrics
| metric | value |
|---|---|
| validation accuracy | {f(m['val_accuracy'])} |
| validation AUC | {f(m['val_auc'])} |
| test accuracy | {f(m['test_accuracy'])} |
| {lat_label} | {f(m['latency_ms'], '.3f')} |
| parameters | {m['params']} |
| training | {m['train_steps']} steps, {f(m['train_seconds'], '.1f')} s |

## Data
{card['data']['description']}

Input: float tensor N x {' x '.join(map(str, card['data']['input_shape']))} (RGB), computed
as `(x / 255 - mean) / std` with mean {pre['mean']} and std {pre['std']}. Output: logits over
classes {card['data']['classes']}.

## Architecture (genome)
`{json.dumps(card['genome'], separators=(',', ':'))}`

| layer | gene | output C x H x W |
|---|---|---|
{layers}

Head: {card['genome']['h']} (hidden units, dropout). Training genes (lr, batch, optimiser):
{card['genome']['t']}. Decoder repairs: {card['repairs'] or 'none'}.

## Budget
{json.dumps(card['budget'])}

## Files
- `model.pt`: TorchScript (max abs difference to eager {ts_diff:.2e})
- `model.onnx`: {json.dumps(card['export']['onnx'])}
- `model.pt2`: torch.export program, {json.dumps(card['export']['torch_export'])}

Synthetic or small-budget results are not clinical evidence; validate on your own data.
"""


def make_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                select: str = "front", max_export: int = 5) -> dict[str, Any]:
    """Plot the front and export networks of a finished (or running) search.

    ``select``: ``"front"`` (the Pareto front, at most ``max_export``, spread over latency),
    ``"best"`` (highest metric), ``"fastest"``, or comma-separated candidate ids.
    Returns a summary dict (also written to ``report.json``).
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    state = _load_state(run_dir)
    metric = state["config"]["search"]["metric"]
    hist = read_history(run_dir)
    plot = plot_pareto(hist, out / "pareto.png", metric)
    pareto = pd.read_csv(run_dir / "pareto.csv")
    if select == "front":
        ids = pareto["id"].astype(int).tolist()
        if len(ids) > max_export:
            pick = np.unique(np.linspace(0, len(ids) - 1, max_export).round().astype(int))
            ids = [ids[i] for i in pick]
    elif select == "best":
        ids = [int(pareto.sort_values(metric, ascending=False)["id"].iloc[0])]
    elif select == "fastest":
        ids = [int(pareto.sort_values("latency_ms")["id"].iloc[0])]
    else:
        try:
            ids = [int(s) for s in select.split(",") if s.strip()]
        except ValueError as exc:
            raise InputError(f"select must be 'front', 'best', 'fastest' or ids like '3,7'; "
                             f"got {select!r}") from exc
    test = _test_split(state)
    cards = [export_network(run_dir, i, out / f"net_{i}", test_data=test) for i in ids]
    summary = {"pareto_plot": str(plot), "exported": [
        {"id": c["id"], "dir": str(out / f"net_{c['id']}"), **c["metrics"]} for c in cards]}
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2))
    return summary


def _test_split(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Reload the held-out test split when the data are still where the run found them."""
    from oncoscale.nas.config import config_from_dict
    from oncoscale.nas.search import prepare_data

    meta = state.get("meta", {})
    try:
        cfg = config_from_dict(state["config"], meta.get("base_dir", "."))
        _, splits = prepare_data(cfg)
    except Exception:
        return None
    if len(splits.test) == 0:
        return None
    return splits.test.x, splits.test.y
