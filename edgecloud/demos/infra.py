"""Infrastructures generated for demos from the shipped examples."""

from __future__ import annotations

from pathlib import Path

import yaml

import edgecloud

EXAMPLES = Path(edgecloud.__file__).resolve().parents[1] / "examples"


def examples_dir(name: str) -> Path:
    """A shipped example directory (demos run from a checkout of the repository)."""
    d = EXAMPLES / name
    if not d.is_dir():
        from edgecloud.errors import UserError

        raise UserError(f"example {name!r} not found at {d}: run the demo from a checkout of "
                        "the edgecloud repository")
    return d


def ace_testbed(cameras: int | None = None) -> dict[str, object]:
    """The ACE testbed (examples/infra/ace-testbed.yaml), keeping `cameras` camera nodes
    spread over the edge sites (every site keeps its edge server)."""
    doc = yaml.safe_load((EXAMPLES / "infra/ace-testbed.yaml").read_text())
    if cameras is None:
        return doc  # type: ignore[no-any-return]
    edges = [s for s in doc["spec"]["sites"] if s["kind"] == "edge"]
    per_site = {s["name"]: 0 for s in edges}
    for i in range(cameras):
        per_site[edges[i % len(edges)]["name"]] += 1
    for site in edges:
        kept, cams = [], 0
        for node in site["nodes"]:
            if node.get("labels", {}).get("camera") == "true":
                if cams >= per_site[site["name"]]:
                    continue
                cams += 1
            kept.append(node)
        site["nodes"] = kept
    return doc  # type: ignore[no-any-return]
