"""Saved workflows keep working: the nodes' inputs and outputs may only change on purpose.

A saved workflow stores widget values by position and links by input name, so renaming, removing,
reordering or retyping an input (or dropping a combo option) breaks every graph users have saved.
This test compares the live V3 schemas with the committed snapshot ``tests/node_schema.json``.
After an intended, documented change, refresh it with ``ACEPP_UPDATE_SCHEMA=1 python -m pytest
tests/test_node_schema.py`` and say in the commit what it breaks for saved workflows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "node_schema.json"
# Combos whose options come from the host (model folders, ComfyUI's sampler list): not frozen.
HOST_OPTIONS = ("model_name", "lora_1", "lora_2", "lora_3", "sampler_name", "scheduler")


def describe(node) -> dict:
    from comfy_api.v0_0_2 import io

    schema = node.GET_SCHEMA()
    inputs = []
    for inp in schema.inputs:
        entry = {"id": inp.id, "type": str(inp.get_io_type()), "optional": bool(inp.optional),
                 "widget": isinstance(inp, io.WidgetInput)}
        if isinstance(inp, io.Combo.Input) and inp.id not in HOST_OPTIONS:
            entry["options"] = list(inp.options)
        inputs.append(entry)
    outputs = [{"id": out.id, "type": str(out.get_io_type())} for out in schema.outputs]
    return {"inputs": inputs, "outputs": outputs}


def test_node_schemas_match_the_snapshot(pack):
    live = {node.GET_SCHEMA().node_id: describe(node) for node in pack.nodes.NODES}
    if os.environ.get("ACEPP_UPDATE_SCHEMA") == "1":
        SNAPSHOT.write_text(json.dumps(live, indent=1) + "\n")
    frozen = json.loads(SNAPSHOT.read_text())
    assert sorted(live) == sorted(frozen), "node ids were added or removed; ids are permanent"
    for node_id, want in frozen.items():
        got = live[node_id]
        for kind in ("inputs", "outputs"):
            old = [(e["id"], e["type"]) for e in want[kind]]
            new = [(e["id"], e["type"]) for e in got[kind]]
            assert new[: len(old)] == old, (
                f"{node_id} {kind} changed from {old} to {new}: saved workflows address them by position "
                "and name. Only append new optional inputs at the end (then refresh the snapshot)."
            )
        assert got == want, f"{node_id}: schema differs from tests/node_schema.json (options, widget or optional flags)"
