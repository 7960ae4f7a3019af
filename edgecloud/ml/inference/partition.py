"""DNN partitioning (Neurosurgeon-style): valid cuts of a model's graph and its segments.

A PyTorch model is traced with torch.fx (sequential models and DAGs alike). A *cut* is a
position in the graph's topological order where exactly one tensor crosses from the
nodes before it to the nodes after it: only then can the head run on the edge, send that
one tensor, and the tail finish in the cloud. Residual blocks therefore only cut between
blocks (inside one, both the skip and the branch cross).

    model = load_efficientnet_lite0()
    part = Partition(model, torch.zeros(1, 3, 224, 224), leaves=(MBConvBlock,))
    head, tail = part.split(part.cut_index("_blocks_5"))
    assert torch.allclose(tail(head(x)), model(x))

`leaves` keeps whole modules as single nodes (a coarse, block-level graph); cut 0 sends
the input (all cloud), the last cut sends the output (all edge). `select()` keeps a
subset of cuts; the model is then a chain of `segments` between consecutive cuts, which
is what the edge and cloud components run and what `profile.measure_profile` times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgecloud.errors import UserError

__all__ = ["Cut", "Partition", "decode_tensor", "encode_tensor", "tensor_bytes"]


@dataclass(frozen=True)
class Cut:
    """A valid cut: `index` nodes run on the edge, the tensor of `node` crosses."""

    index: int
    """Position in the graph's compute order (0 = all cloud, len(nodes) = all edge)."""
    node: str
    """Name of the fx node whose tensor crosses (`x` = the input, i.e. all cloud)."""
    shape: tuple[int, ...]
    bytes_fp32: int
    bytes_int8: int

    def nbytes(self, int8: bool = False) -> int:
        """Bytes on the wire for this cut's tensor (fp32, or int8 plus scale/zero)."""
        return self.bytes_int8 if int8 else self.bytes_fp32


class _LeafTracer(fx.Tracer):
    """Traces through custom modules except `leaves` (kept as one call_module node)."""

    def __init__(self, leaves: Sequence[type[nn.Module]]) -> None:
        super().__init__()
        self.leaves = tuple(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def tensor_bytes(numel: int, int8: bool = False) -> int:
    """Wire size of a tensor of `numel` values: 4 per value, or 1 plus 8 for scale/zero."""
    return numel + 8 if int8 else 4 * numel


class Partition:
    """A traced model, its valid cuts and the segments between the selected ones.

    Example:
        part = Partition(net, torch.zeros(1, 1, 28, 28))
        [c.node for c in part.cuts]      # ['x', 'conv1', 'relu', ..., 'fc2']
        edge_part, cloud_part = part.split(3)
    """

    def __init__(self, model: nn.Module, example: torch.Tensor,
                 leaves: Sequence[type[nn.Module]] = ()) -> None:
        model = model.eval()
        try:
            graph = _LeafTracer(leaves).trace(model)
        except Exception as exc:  # fx raises many types for untraceable control flow
            raise UserError(f"cannot trace {type(model).__name__} with torch.fx: {exc}; "
                            "pass the offending modules as `leaves`") from None
        self.gm = fx.GraphModule(model, graph)
        inputs = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise UserError(f"{type(model).__name__}: partitioning needs a model with one "
                            f"input, it has {len(inputs)}")
        with torch.no_grad():
            ShapeProp(self.gm).propagate(example)
        self.input = inputs[0]
        # Compute nodes in order; get_attr nodes are constants both sides may recompute.
        self.nodes = [n for n in self.gm.graph.nodes
                      if n.op in ("call_module", "call_function", "call_method")]
        self.all_cuts = self._enumerate_cuts()
        self.cuts = list(self.all_cuts)

    # -- cuts ----------------------------------------------------------------------------
    def _enumerate_cuts(self) -> list[Cut]:
        order = {n: i for i, n in enumerate(self.nodes)}
        # The last position at which each value (input or node) is still needed.
        last_use: dict[fx.Node, int] = {}
        for n in [self.input, *self.nodes]:
            uses = [order.get(u, len(self.nodes)) for u in n.users]  # output node = end
            last_use[n] = max(uses, default=-1)
        cuts: list[Cut] = []
        for i in range(len(self.nodes) + 1):
            # Values produced before position i and still used at or after it.
            produced = [self.input, *self.nodes[:i]]
            crossing = [n for n in produced if last_use[n] >= i]
            if len(crossing) != 1:
                continue
            node = crossing[0]
            meta = node.meta.get("tensor_meta")
            if meta is None or not hasattr(meta, "shape"):
                continue  # a non-tensor (or tuple) crossing cannot be sent as one tensor
            shape = tuple(int(s) for s in meta.shape)
            numel = int(np.prod(shape))
            cuts.append(Cut(i, node.name, shape, tensor_bytes(numel),
                            tensor_bytes(numel, int8=True)))
        return cuts

    def cut_index(self, node: str) -> int:
        """Index (in `cuts`) of the selected cut whose crossing tensor is `node`."""
        for k, c in enumerate(self.cuts):
            if c.node == node:
                return k
        known = ", ".join(c.node for c in self.cuts)
        raise UserError(f"no cut at node {node!r}; cuts: {known}")

    def select(self, nodes: Sequence[str] | None) -> Partition:
        """Keep only the cuts at `nodes` (plus all-cloud and all-edge); returns self."""
        if nodes is None:
            self.cuts = list(self.all_cuts)
            return self
        by_name = {c.node: c for c in self.all_cuts}
        unknown = [n for n in nodes if n not in by_name]
        if unknown:
            raise UserError(f"not valid cuts: {unknown}; valid cuts: "
                            f"{', '.join(by_name)}")
        keep = {self.all_cuts[0].index, self.all_cuts[-1].index,
                *(by_name[n].index for n in nodes)}
        self.cuts = [c for c in self.all_cuts if c.index in keep]
        return self

    # -- segments ------------------------------------------------------------------------
    def _subgraph(self, start: Cut, end: Cut) -> fx.GraphModule:
        """The nodes between two cuts as a module: start's tensor in, end's tensor out."""
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        x = g.placeholder("x")
        src = {n.name: n for n in self.gm.graph.nodes}
        env[src[start.node]] = x
        if start.index == end.index:
            g.output(x)
            return fx.GraphModule(self.gm, g)

        def arg(a: fx.Node) -> fx.Node:
            if a not in env and a.op == "get_attr":  # constants: copied where used
                env[a] = g.node_copy(a)
            return env[a]

        for n in self.nodes[start.index:end.index]:
            env[n] = g.node_copy(n, arg)
        g.output(env[src[end.node]])
        return fx.GraphModule(self.gm, g)

    @property
    def segments(self) -> list[fx.GraphModule]:
        """One module per pair of consecutive selected cuts (len(cuts) - 1 of them)."""
        return [self._subgraph(a, b) for a, b in zip(self.cuts, self.cuts[1:], strict=False)]

    def split(self, k: int) -> tuple[nn.Module, nn.Module]:
        """(head, tail) at selected cut `k`: head runs on the edge, tail in the cloud."""
        if not 0 <= k < len(self.cuts):
            raise UserError(f"cut {k} out of range: this partition has cuts "
                            f"0..{len(self.cuts) - 1}")
        first, last = self.cuts[0], self.cuts[-1]
        return self._subgraph(first, self.cuts[k]), self._subgraph(self.cuts[k], last)


def encode_tensor(t: torch.Tensor, int8: bool = False) -> dict[str, object]:
    """A tensor as a msgpack-friendly dict; int8 = per-tensor affine quantisation (4x less).

    Example:
        decode_tensor(encode_tensor(x, int8=True))  # x within (max - min) / 255
    """
    a = t.detach().to(torch.float32).contiguous().numpy()
    if not int8:
        return {"shape": list(a.shape), "dtype": "float32", "data": a.tobytes()}
    lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
    scale = (hi - lo) / 255 or 1.0
    q = np.clip(np.round((a - lo) / scale), 0, 255).astype(np.uint8)
    return {"shape": list(a.shape), "dtype": "uint8", "scale": scale, "zero": lo,
            "data": q.tobytes()}


def decode_tensor(doc: Mapping[str, Any]) -> torch.Tensor:
    """Inverse of `encode_tensor`."""
    shape = [int(s) for s in doc["shape"]]
    data = doc["data"]
    if not isinstance(data, bytes | bytearray):
        raise UserError(f"tensor payload: 'data' must be bytes, got {type(data).__name__}")
    if doc.get("dtype") == "uint8":
        q = np.frombuffer(data, dtype=np.uint8).astype(np.float32)
        a = q * float(doc["scale"]) + float(doc["zero"])
    else:
        a = np.frombuffer(data, dtype=np.float32)
    return torch.from_numpy(a.reshape(shape).copy())
