"""Saved workflows keep working: the nodes' inputs and outputs may only change on purpose.

A saved workflow stores widget values by position and links by input name, so renaming, removing,
reordering or retyping an input (or dropping a combo option) breaks every graph users have saved.
This test compares the live V3 schemas with the committed snapshot ``tests/node_schema.json``.
After an intended, documented change, refresh it with ``ACEPP_UPDATE_SCHEMA=1 python -m pytest
tests/test_node_schema.py`` and say in the commit what it breaks for saved workflows.

The snapshot also records, per ComfyUI version (``advanced_by_host``), which inputs carry the V3 flag
``advanced`` (folded behind "show advanced" by front ends that fold): ComfyUI 0.33's schema takes it,
0.3.75's does not, and the inputs and their order are the same on both. The update writes the record of
the host it runs on and keeps the others; a host with no record of its own is held to the record of a
host with the same flag support.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "node_schema.json"
ADVANCED = "advanced_by_host"  # {ComfyUI version: {node id: [advanced input ids]}}; not a node id
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


def advanced_inputs(node) -> list[str]:
    return [inp.id for inp in node.GET_SCHEMA().inputs if getattr(inp, "advanced", None)]


def test_node_schemas_match_the_snapshot(pack, comfy_root):
    from aceplus_host import comfyui_version

    live = {node.GET_SCHEMA().node_id: describe(node) for node in pack.nodes.NODES}
    host = comfyui_version(comfy_root)
    live_advanced = {node.GET_SCHEMA().node_id: advanced_inputs(node) for node in pack.nodes.NODES
                     if advanced_inputs(node)}
    if os.environ.get("ACEPP_UPDATE_SCHEMA") == "1":
        old = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.is_file() else {}
        records = dict(old.get(ADVANCED, {}), **{host: live_advanced})
        SNAPSHOT.write_text(json.dumps({**live, ADVANCED: dict(sorted(records.items()))}, indent=1) + "\n")
    frozen = json.loads(SNAPSHOT.read_text())
    records = frozen.pop(ADVANCED)
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
    takes_flag = bool(pack.nodes.compat.advanced())
    want = records.get(host)
    if want is None:  # a ComfyUI with no record of its own: held to a recorded host with the same flag support
        want = next((r for r in records.values() if bool(r) == takes_flag), None)
        assert want is not None, f"no record for ComfyUI {host} in {SNAPSHOT.name}: run with ACEPP_UPDATE_SCHEMA=1"
    assert live_advanced == want, f"ComfyUI {host}: the inputs marked advanced differ from {SNAPSHOT.name}"
    assert bool(live_advanced) == takes_flag, "advanced inputs exactly where the host's V3 schema takes the flag"
