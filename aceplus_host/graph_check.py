"""Is a UI-format workflow well formed? The release converter asks before it edits anything.

A graph saved by ComfyUI's front end always passes; a damaged one (a node without ``id`` or
``type``, a link to a node or link that is not there, a field of the wrong type, the same id twice)
gets one line that names the node (or link) and the field, instead of a KeyError deep inside the
mapping. ``widget_problem`` checks the widget values the converter reads from the released nodes.
Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .workflows import input_specs, types_match


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _kind(v: Any) -> str:
    return "null" if v is None else {"str": "a string", "list": "a list", "dict": "an object", "bool": "a boolean",
                                      "int": "an integer", "float": "a number"}.get(type(v).__name__, type(v).__name__)


def _point(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) >= 2 and all(_is_number(x) for x in v[:2])


def _where(node: dict, index: int) -> str:
    nid, kind = node.get("id"), node.get("type")
    name = f"node {nid}" if _is_int(nid) else f"node #{index + 1} in 'nodes'"
    return name + (f" ({kind})" if isinstance(kind, str) and kind else "")


LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot")


def _links(workflow: dict) -> tuple[list[tuple], Optional[str]]:
    """[(id, origin, origin slot, target, target slot, type)] or the problem."""
    raw = workflow.get("links", [])
    if not isinstance(raw, list):
        return [], f"the workflow's 'links' is {_kind(raw)}, not a list"
    out = []
    for i, link in enumerate(raw):
        if isinstance(link, dict):
            missing = [k for k in LINK_FIELDS if k not in link]
            if missing:
                return [], f"link #{i + 1} in 'links' has no field {missing[0]!r}"
            values = [link[k] for k in LINK_FIELDS] + [link.get("type")]
        elif isinstance(link, (list, tuple)):
            if len(link) < 5:
                return [], f"link #{i + 1} in 'links' has {len(link)} fields; a link is [id, origin_id, origin_slot, " \
                           "target_id, target_slot, type]"
            values = list(link[:5]) + [link[5] if len(link) > 5 else None]
        else:
            return [], f"link #{i + 1} in 'links' is {_kind(link)}, not a list"
        for name, value in zip(LINK_FIELDS, values):
            if not _is_int(value) or (name.endswith("slot") and value < 0):
                return [], f"link #{i + 1} in 'links': field {name!r} is {value!r}; it must be a non-negative integer"
        if values[5] is not None and not isinstance(values[5], str):
            return [], f"link {values[0]}: field 'type' is {_kind(values[5])}; it must be a type name"
        out.append(tuple(values))
    return out, None


def _node_problem(node: Any, index: int, ids: set) -> Optional[str]:
    if not isinstance(node, dict):
        return f"node #{index + 1} in 'nodes' is {_kind(node)}, not an object"
    where = _where(node, index)
    if "id" not in node:
        return f"{where} has no field 'id'"
    if not _is_int(node["id"]):
        return f"{where}: field 'id' is {node['id']!r} ({_kind(node['id'])}); node ids are integers"
    if node["id"] in ids:
        return f"{where}: field 'id' {node['id']} is used by two nodes; give one of them a new id"
    ids.add(node["id"])
    if not isinstance(node.get("type"), str) or not node.get("type"):
        return f"{where} has no node type (field 'type' is {node.get('type')!r})"
    for key, check, what in (("pos", _point, "[x, y]"), ("size", _point, "[width, height]"),
                             ("mode", _is_int, "an integer"), ("title", lambda v: isinstance(v, str), "a string"),
                             ("widgets_values", lambda v: isinstance(v, (list, dict)), "a list"),
                             ("properties", lambda v: isinstance(v, dict), "an object"),
                             ("flags", lambda v: isinstance(v, dict), "an object")):
        if key in node and node[key] is not None and not check(node[key]):
            return f"{where}: field {key!r} is {node[key]!r}; it must be {what}"
    for side, field in (("inputs", "link"), ("outputs", "links")):
        entries = node.get(side)
        if entries is None:
            continue
        if not isinstance(entries, list):
            return f"{where}: field {side!r} is {_kind(entries)}, not a list"
        for slot, entry in enumerate(entries):
            if not isinstance(entry, dict):
                return f"{where}: {side} slot {slot} is {_kind(entry)}, not an object"
            if not isinstance(entry.get("name"), str):
                return f"{where}: {side} slot {slot} has no 'name' (it is {entry.get('name')!r})"
            if entry.get("type") is not None and not isinstance(entry["type"], str):
                return f"{where}: {side[:-1]} {entry['name']!r}: field 'type' is {entry['type']!r}; it must be a type name"
            value = entry.get(field)
            ok = (value is None or _is_int(value)) if side == "inputs" else (
                value is None or (isinstance(value, list) and all(_is_int(x) for x in value)))
            if not ok:
                return f"{where}: {side[:-1]} {entry['name']!r}: field {field!r} is {value!r}; it must be " + (
                    "a link id or null" if side == "inputs" else "a list of link ids")
            widget = entry.get("widget")
            if widget is not None and not (isinstance(widget, dict) and isinstance(widget.get("name"), str)):
                return f"{where}: input {entry['name']!r}: field 'widget' is {widget!r}; it must be {{\"name\": ...}}"
    return None


def graph_problem(workflow: dict) -> Optional[str]:
    """The first structural problem of a UI workflow (one line naming the node or link and the field), or None."""
    for key, kind, ok in (("groups", "a list", lambda v: isinstance(v, list)),
                          ("definitions", "an object", lambda v: isinstance(v, dict)),
                          ("last_node_id", "an integer", _is_int), ("last_link_id", "an integer", _is_int)):
        if workflow.get(key) is not None and not ok(workflow[key]):
            return f"the workflow's field {key!r} is {workflow[key]!r}; it must be {kind}"
    for i, group in enumerate(workflow.get("groups") or []):
        bounding = group.get("bounding") if isinstance(group, dict) else None
        if not isinstance(group, dict) or (bounding is not None and not (
                isinstance(bounding, (list, tuple)) and len(bounding) == 4 and all(map(_is_number, bounding)))):
            return f"group #{i + 1} in 'groups': field 'bounding' is {bounding!r}; it must be [x, y, width, height]"
    ids: set = set()
    for i, node in enumerate(workflow["nodes"]):
        problem = _node_problem(node, i, ids)
        if problem:
            return problem
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links, problem = _links(workflow)
    if problem:
        return problem
    by_id = {}
    for lid, oid, oslot, tid, tslot, ltype in links:
        if lid in by_id:
            return f"link {lid}: field 'id' is used by two links"
        by_id[lid] = (oid, oslot, tid, tslot)
        for end, nid, slot, side in (("origin", oid, oslot, "outputs"), ("target", tid, tslot, "inputs")):
            node = nodes.get(nid)
            if node is None:
                return f"link {lid}: field '{end}_id' is {nid}, a node the graph does not have"
            entries = node.get(side) or []
            if slot >= len(entries):
                return f"link {lid}: field '{end}_slot' is {slot} but node {nid} ({node['type']}) has {len(entries)} " \
                       f"{side}"
    for nid, node in nodes.items():
        for slot, inp in enumerate(node.get("inputs") or []):
            lid = inp.get("link")
            if lid is not None and by_id.get(lid, (None, None, None, None))[2:] != (nid, slot):
                return (f"node {nid} ({node['type']}): input {inp['name']!r} has field 'link' {lid}, "
                        + ("a link the graph does not have" if lid not in by_id else "a link that ends elsewhere"))
    for lid, oid, oslot, tid, tslot, ltype in links:
        target_input = nodes[tid]["inputs"][tslot]
        if target_input.get("link") != lid:
            return (f"link {lid} ends at node {tid} ({nodes[tid]['type']}) input {target_input['name']!r}, whose "
                    f"field 'link' is {target_input.get('link')!r}, not {lid}")
        out_type = nodes[oid]["outputs"][oslot].get("type")
        if ltype and out_type and not types_match(out_type, ltype):
            return (f"node {oid} ({nodes[oid]['type']}): output {nodes[oid]['outputs'][oslot]['name']!r} has field "
                    f"'type' {out_type!r} but link {lid} from it carries {ltype!r}")
    return None


# Widget values the release converter reads (released processors, conditionings and loader, KSampler,
# FluxGuidance): name -> what it must be.
INTEGER, NUMBER, TEXT, FLAG = "an integer", "a finite number", "a string", "true or false"
WIDGET_KINDS = {"use_reference": FLAG, "height": INTEGER, "width": INTEGER, "task_type": TEXT, "max_seq_length": INTEGER,
                "keep_pixels_rate": NUMBER, "noise_mask": FLAG, "unet_name": TEXT, "weight_dtype": TEXT,
                "seed": INTEGER, "control_after_generate": TEXT, "steps": INTEGER, "cfg": NUMBER,
                "sampler_name": TEXT, "scheduler": TEXT, "denoise": NUMBER, "guidance": NUMBER}


def widgets_problem(nodes: list[dict], names_by_type: dict[str, tuple[str, ...]]) -> Optional[str]:
    """The first widget value of a node of ``names_by_type`` that is not of its ``WIDGET_KINDS`` kind."""
    return next((p for n in nodes if n["type"] in names_by_type
                 if (p := widget_problem(n, names_by_type[n["type"]], WIDGET_KINDS))), None)


def widget_problem(node: dict, names: tuple[str, ...], kinds: dict[str, str]) -> Optional[str]:
    """The first widget of ``node`` (positional ``names``) whose value is not of its kind, in one line."""
    values = node.get("widgets_values") or []
    named = values if isinstance(values, dict) else dict(zip(names, values))
    for name in names:
        if name not in named or name not in kinds:
            continue
        value, kind = named[name], kinds[name]
        ok = {INTEGER: lambda v: _is_int(v) or (_is_number(v) and float(v).is_integer()), NUMBER: _is_number,
              TEXT: lambda v: isinstance(v, str), FLAG: lambda v: isinstance(v, bool)}[kind](value)
        if not ok:
            return f"node {node['id']} ({node['type']}): widget {name!r} is {value!r}; it must be {kind}"
    return None


def unconnected_input(nodes: dict[int, dict], origin: dict[int, str], schemas: dict) -> Optional[str]:
    """After a conversion: a required socket of an emitted node (id -> the released node it replaces, in
    ``origin``) left unlinked, because the released graph had no link for it. Refused, naming the released node,
    instead of a converted graph that cannot run."""
    for nid, source in origin.items():
        node = nodes.get(nid)
        if node is None:
            continue
        linked = {i.get("name") for i in node.get("inputs") or [] if i.get("link") is not None}
        for spec in input_specs(schemas[node["type"]]):
            if spec.required and not spec.is_widget and spec.name not in linked:
                return (f"{source}: nothing in the released graph feeds what becomes input {spec.name!r} of "
                        f"{node['type']}; connect it as the released workflows do, then convert again")
    return None
