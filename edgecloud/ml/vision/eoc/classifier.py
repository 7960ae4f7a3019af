"""EdgeClassifier: ``confidence(crops)`` for one query, saved as one ``.safetensors`` file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecloud.ml.vision.eoc.nets import EdgeNet, TrunkNet
from edgecloud.ml.vision.eoc.preprocess import _resize_batch, _to_tensor
from edgecloud.ml.vision.eoc.tensorfile import _read_safetensors, _write_safetensors

FORMAT = "edgecloud-eoc/1"


class EdgeClassifier:
    """EOC for one query: ``confidence(crops)`` is the probability that the query is present."""

    def __init__(self, net: EdgeNet | TrunkNet, query: str, input_size: int = 96,
                 metadata: dict[str, Any] | None = None, batch_size: int = 32) -> None:
        self.net = net.eval()
        self.query = query
        self.input_size = input_size
        self.metadata = dict(metadata or {})
        self.batch_size = batch_size

    @torch.inference_mode()
    def confidence(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Confidence in [0, 1] (float32, one per crop) that each BGR uint8 crop shows the query."""
        if len(crops) == 0:
            return np.empty(0, dtype=np.float32)
        self.net.eval()
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = _to_tensor(_resize_batch(crops[i : i + self.batch_size], self.input_size))
            out.append(torch.sigmoid(self.net(x)))
        return torch.cat(out).numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """The JSON metadata stored with the weights."""
        if isinstance(self.net, TrunkNet):
            arch: dict[str, Any] = {"name": "lite0-trunk", "blocks": self.net.blocks}
        else:
            arch = {"name": "mobilenetv2", "width": self.net.width, "head": self.net.head}
        return {
            "format": FORMAT,
            "query": self.query,
            "architecture": {**arch, "input_size": self.input_size},
            "preprocessing": {"color": "RGB", "resize": self.input_size,
                              "normalize": "(x - 127) / 128"},
            "output": "sigmoid confidence that the crop shows the query",
            **{k: v for k, v in self.metadata.items() if k not in ("format", "query")},
        }

    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (weights + JSON metadata); returns its path."""
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        _write_safetensors(path, state, {"edgecloud": json.dumps(self.describe())})
        return path

    @classmethod
    def load(cls, path: str | Path) -> EdgeClassifier:
        """Read a file written by :meth:`save` (strict: every tensor must match)."""
        tensors, header_meta = _read_safetensors(Path(path))
        try:
            meta = json.loads(header_meta["edgecloud"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not an edgecloud edge-classifier file") from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        arch = meta["architecture"]
        net: EdgeNet | TrunkNet
        if arch.get("name") == "lite0-trunk":
            net = TrunkNet(int(arch["blocks"]))
        elif arch.get("name") == "mobilenetv2":
            net = EdgeNet(width=float(arch["width"]), head=int(arch["head"]))
        else:
            raise ValueError(f"{path}: unknown architecture {arch.get('name')!r}")
        net.load_state_dict(tensors, strict=True)
        extra = {k: v for k, v in meta.items()
                 if k not in ("architecture", "preprocessing", "output")}
        return cls(net, meta["query"], int(arch["input_size"]), extra)
