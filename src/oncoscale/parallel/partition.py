"""Split any ``nn.Module`` into pipeline stages.

The model is traced with ``torch.fx`` into a graph of *units* (leaf-module calls, functions
and methods). An ``nn.Sequential`` is traced with its children as leaves, so it splits at
module boundaries. A cut between two units is allowed when every value alive across it is a
tensor with the batch as its first dimension; those values (e.g. the identity branch of a
ResNet block) travel with the activations and their gradients travel back.

A stage is an ``fx.GraphModule`` that takes the values alive at its left cut (or the model
input) and returns the tuple of values alive at its right cut (or the model output). Its
parameters are the very ``nn.Parameter`` objects of the user's model, under their original
qualified names.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from oncoscale.errors import ConfigurationError


@dataclass(frozen=True)
class TensorMeta:
    """A value crossing a cut: shape without the batch dimension, dtype, needs a gradient."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


@dataclass
class UnitProfile:
    """Measured cost of one unit for one micro-batch: seconds and bytes."""

    fwd_s: float = 0.0
    bwd_s: float = 0.0
    param_bytes: int = 0
    activation_bytes: int = 0


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str] | None = None) -> None:
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaves is not None:
            return module_qualified_name in self._leaves or super().is_leaf_module(
                m, module_qualified_name)
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch, as 'file:line: code'."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno}: `{(f.line or '').strip()}`"


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` into an ``fx.GraphModule`` whose call nodes are the split units.

    ``nn.Sequential`` keeps its children whole. Other modules are traced down to torch's
    leaf modules; if that fails, once more with the top-level children as leaves.

    Raises:
        ConfigurationError: the model cannot be traced (names the failing op and suggests
            ``nn.Sequential`` or explicit boundaries).
    """
    if isinstance(model, nn.Sequential):
        leaves = {name for name, _ in model.named_children()}
        graph = _Tracer(leaves).trace(model)
        return fx.GraphModule(model, graph, class_name=type(model).__name__)
    try:
        graph = _Tracer().trace(model)
    except Exception as first:  # noqa: BLE001 - torch.fx raises many kinds
        try:
            leaves = {name for name, _ in model.named_children()}
            graph = _Tracer(leaves).trace(model)
        except Exception:  # noqa: BLE001
            raise ConfigurationError(
                f"cannot split {type(model).__name__}: torch.fx could not trace it "
                f"({type(first).__name__}: {first}){_user_frame(first)}. Data-dependent "
                "control flow and non-torch calls cannot be traced; write the model as an "
                "nn.Sequential of blocks (each block may contain anything), or make its "
                "top-level forward traceable and give explicit boundaries with "
                "balance=[names of the first module of each stage]") from first
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


@dataclass
class SplitGraph:
    """A traced model as an ordered list of units with the values alive at every cut.

    ``live[c]`` (``1 <= c < n``) lists the values crossing a cut placed before unit ``c``;
    ``valid[c]`` says whether a cut there is allowed. ``profiles`` hold per-unit costs.
    """

    model: nn.Module
    gm: fx.GraphModule
    units: list[fx.Node]
    names: list[str]
    live: list[list[fx.Node]]
    valid: list[bool]
    meta: dict[str, TensorMeta] = field(default_factory=dict)
    profiles: list[UnitProfile] = field(default_factory=list)
    unit_params: list[set[int]] = field(default_factory=list)

    @property
    def num_units(self) -> int:
        return len(self.units)

    def valid_cuts(self) -> list[int]:
        return [c for c in range(1, self.num_units) if self.valid[c]]

    def index_of(self, name: str) -> int:
        """Index of the first unit whose name is ``name`` or starts with ``name + '.'``."""
        for i, n in enumerate(self.names):
            if n == name or n.startswith(name + "."):
                return i
        raise ConfigurationError(
            f"explicit boundary {name!r} names no unit of the model; units are e.g. "
            f"{self.names[: min(8, len(self.names))]}")

    # ------------------------------------------------------------------ stages
    def stage_params(self, start: int, end: int) -> set[int]:
        """ids of the parameters used by units ``start..end-1``."""
        out: set[int] = set()
        for s in self.unit_params[start:end]:
            out |= s
        return out

    def build_stage(self, start: int, end: int) -> tuple[fx.GraphModule, list[TensorMeta],
                                                         list[TensorMeta]]:
        """The stage holding units ``start..end-1`` and the metadata of its inputs/outputs.

        Inputs of the first stage are the model's placeholders (their metadata is empty);
        the last stage returns the model output unchanged.
        """
        n = self.num_units
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        placeholders = [nd for nd in self.gm.graph.nodes if nd.op == "placeholder"]
        inputs = placeholders if start == 0 else self.live[start]
        for v in inputs:
            env[v] = graph.placeholder(v.name)
        for node in self.units[start:end]:
            for arg in node.all_input_nodes:
                if arg.op == "get_attr" and arg not in env:
                    env[arg] = graph.node_copy(arg, lambda a: env[a])
            env[node] = graph.node_copy(node, lambda a: env[a])
        if end == n:
            out_node = next(nd for nd in self.gm.graph.nodes if nd.op == "output")
            for arg in out_node.all_input_nodes:
                if arg not in env and arg.op == "get_attr":
                    env[arg] = graph.node_copy(arg, lambda a: env[a])
            graph.output(fx.node.map_arg(out_node.args[0], lambda a: env[a]))
            outputs: list[TensorMeta] = []
        else:
            graph.output(tuple(env[v] for v in self.live[end]))
            outputs = [self.meta[v.name] for v in self.live[end]]
        graph.lint()
        stage = fx.GraphModule(self.gm, graph, class_name=f"Stage_{start}_{end}")
        in_meta = [] if start == 0 else [self.meta[v.name] for v in self.live[start]]
        return stage, in_meta, outputs


def _unit_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    prefix = ""
    if stack:
        prefix = list(stack.values())[-1][0] + "."
    target = node.target if isinstance(node.target, str) else getattr(
        node.target, "__name__", str(node.target))
    return f"{prefix}{target}[{node.name}]"


def _module_of(gm: fx.GraphModule, target: str) -> nn.Module:
    return gm.get_submodule(target)


def split_graph(model: nn.Module) -> SplitGraph:
    """Trace ``model`` and compute units and live sets (no profiling yet)."""
    gm = trace(model)
    nodes = list(gm.graph.nodes)
    units = [nd for nd in nodes if nd.op in ("call_module", "call_function", "call_method")]
    index = {nd: i for i, nd in enumerate(units)}
    n = len(units)
    # definition and last use, in unit indices (placeholders define at -1, output uses at n)
    defs: dict[fx.Node, int] = {}
    last: dict[fx.Node, int] = {}
    for nd in nodes:
        if nd.op == "placeholder":
            defs[nd] = -1
        elif nd in index:
            defs[nd] = index[nd]
    for nd in defs:
        uses = [index.get(u, n if u.op == "output" else -2) for u in nd.users]
        last[nd] = max(uses, default=-2)
    live: list[list[fx.Node]] = [[] for _ in range(n + 1)]
    for nd, d in defs.items():
        for c in range(max(d + 1, 1), min(last[nd], n - 1) + 1):
            live[c].append(nd)
    order = {nd: i for i, nd in enumerate(nodes)}
    for c in range(n + 1):
        live[c].sort(key=order.__getitem__)
    params_by_id = {id(p) for p in model.parameters()}
    unit_params: list[set[int]] = []
    for nd in units:
        ids: set[int] = set()
        if nd.op == "call_module":
            ids = {id(p) for p in _module_of(gm, str(nd.target)).parameters()}
        for arg in nd.all_input_nodes:
            if arg.op == "get_attr":
                obj = _fetch_attr(gm, str(arg.target))
                if isinstance(obj, torch.Tensor) and id(obj) in params_by_id:
                    ids.add(id(obj))
        unit_params.append(ids)
    return SplitGraph(model=model, gm=gm, units=units, names=[_unit_name(u) for u in units],
                      live=live, valid=[False] * (n + 1), unit_params=unit_params)


def _fetch_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _as_leaf(value: Any) -> Any:
    """Detached copy-free leaves that keep ``requires_grad``."""
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.requires_grad)
    if isinstance(value, (tuple, list)):
        return type(value)(_as_leaf(v) for v in value)
    return value


def _as_input(value: Any) -> Any:
    """A fresh non-leaf copy (in-place ops such as ReLU(inplace=True) must not hit a leaf)."""
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.requires_grad).clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_as_input(v) for v in value)
    return value


def profile_units(sg: SplitGraph, example: torch.Tensor, *, repeats: int = 1) -> None:
    """Run the model unit by unit on ``example`` (one micro-batch), in eval mode.

    Fills ``sg.meta`` (what each value looks like), ``sg.valid`` (which cuts are allowed)
    and ``sg.profiles`` (forward and backward seconds of each unit, bytes of its new
    parameters and of its output activations). Parameter gradients, buffers, the training
    flag and the RNG state are restored afterwards, so profiling does not change training.
    """
    model = sg.model
    was_training = model.training
    saved_grads = {id(p): p.grad for p in model.parameters()}
    saved_buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    rng = torch.get_rng_state()
    model.eval()
    batch = example.shape[0]
    env: dict[fx.Node, Any] = {}
    placeholders = [nd for nd in sg.gm.graph.nodes if nd.op == "placeholder"]
    if len(placeholders) != 1:
        raise ConfigurationError(
            f"the parallel engine feeds one input tensor to the model; its forward takes "
            f"{len(placeholders)} arguments")
    env[placeholders[0]] = example
    sg.meta[placeholders[0].name] = TensorMeta(placeholders[0].name, tuple(example.shape[1:]),
                                               example.dtype, False)
    seen_params: set[int] = set()
    profiles: list[UnitProfile] = []
    try:
        for i, node in enumerate(sg.units):
            prof = UnitProfile()
            for _ in range(max(1, repeats)):
                args = fx.node.map_arg(node.args, lambda a: _arg(sg.gm, env, a))
                kwargs = fx.node.map_arg(node.kwargs, lambda a: _arg(sg.gm, env, a))
                t0 = time.perf_counter()
                with torch.enable_grad():
                    out = _run_node(sg.gm, node, args, kwargs)
                t1 = time.perf_counter()
                grads_for = [t for t in _tensors(out) if t.requires_grad]
                if grads_for:
                    torch.autograd.backward(grads_for, [torch.ones_like(t) for t in grads_for])
                t2 = time.perf_counter()
                fwd, bwd = t1 - t0, t2 - t1
                prof.fwd_s = fwd if prof.fwd_s == 0 else min(prof.fwd_s, fwd)
                prof.bwd_s = bwd if prof.bwd_s == 0 else min(prof.bwd_s, bwd)
            env[node] = _as_leaf(out)
            new = sg.unit_params[i] - seen_params
            seen_params |= new
            prof.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters()
                                   if id(p) in new)
            prof.activation_bytes = _nbytes(out)
            profiles.append(prof)
            if isinstance(out, torch.Tensor):
                sg.meta[node.name] = TensorMeta(node.name, tuple(out.shape[1:]), out.dtype,
                                                bool(out.requires_grad))
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = saved_grads.get(id(p))
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(saved_buffers[k])
        torch.set_rng_state(rng)
    sg.profiles = profiles
    for c in range(1, sg.num_units):
        ok = bool(sg.live[c])
        for v in sg.live[c]:
            val = env.get(v)
            if not (isinstance(val, torch.Tensor) and val.dim() >= 1
                    and val.shape[0] == batch and v.name in sg.meta):
                ok = False
                break
        sg.valid[c] = ok


def _arg(gm: fx.GraphModule, env: dict[fx.Node, Any], a: fx.Node) -> Any:
    if a.op == "get_attr":
        return _fetch_attr(gm, str(a.target))
    return _as_input(env[a])




def _run_node(gm: fx.GraphModule, node: fx.Node, args: Any, kwargs: Any) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    self_obj, *rest = args
    return getattr(self_obj, str(node.target))(*rest, **kwargs)
