"""Workflow JSON without a browser: UI format -> API format, and a soundness check.

Users drag the UI format into ComfyUI (``nodes``, ``links``, positional
``widgets_values``); ``POST /prompt`` only takes the API format
(``{"id": {"class_type", "inputs"}}``). The front end converts one to the other in
``graphToPrompt``; this module does the same from the server's ``/object_info``
so that tests and scripts can run a shipped workflow headless. The rules below
follow the front end that ComfyUI 0.3.75 pins (``comfyui-frontend-package``
1.32.9), and the front-end tests compare the two on every shipped workflow.

Rules of the front end reproduced here:

* A node's widgets are its widget-type inputs (INT, FLOAT, STRING, BOOLEAN, combo)
  in ``input_order`` (required, then optional), minus ``forceInput`` ones.
  ``widgets_values`` holds one value per widget, plus the values of the helper
  widgets the front end adds: a "control after generate" combo after an INT/FLOAT
  input with ``control_after_generate`` (or named ``seed``/``noise_seed``), a
  control and a filter value after a combo with ``control_after_generate``, and an
  upload button after a combo with ``image_upload`` / ``video_upload`` /
  ``audio_upload`` / ``animated_image_upload``. Helper values never reach the prompt.
* A widget whose input socket is linked takes the link; its positional value stays
  in ``widgets_values`` and is ignored.
* ``Note``, ``MarkdownNote``, ``Reroute`` and ``PrimitiveNode`` are front-end only:
  a Reroute forwards its input link, a PrimitiveNode's value is written into each
  widget it feeds.
* Mode 2 (muted / "never") drops the node; inputs fed only by it are left out.
  Mode 4 (bypass) drops the node and forwards each of its outputs from the input of
  the same slot if the types match, else from its first input of that type.

Nothing here imports ComfyUI.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

MODE_ALWAYS = 0
MODE_NEVER = 2  # "muted"
MODE_BYPASS = 4

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
VIRTUAL_TYPES = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
MODEL_EXTENSIONS = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin")


class WorkflowError(ValueError):
    """The workflow cannot be converted (unknown node, bad link, wrong widget count...)."""


# -- input specs from /object_info ---------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for option lists
    options: dict
    required: bool
    combo: tuple | None = None  # the allowed values of a combo

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def helper_widgets(self) -> int:
        """Extra positional values the front end stores after this widget."""
        if not self.is_widget:
            return 0
        extra = 0
        if self.type in ("INT", "FLOAT"):
            control = self.options.get("control_after_generate")
            if control is None:  # the front end's ``?? ["seed", "noise_seed"].includes(name)``
                control = self.type == "INT" and self.name in ("seed", "noise_seed")
            extra += 1 if control else 0
        if self.type == "COMBO":
            if self.options.get("control_after_generate"):
                extra += 2  # control mode + filter list
            if any(self.options.get(key) for key in UPLOAD_OPTIONS):
                extra += 1  # the upload button
        return extra


def _spec(name: str, raw: Any, required: bool) -> InputSpec:
    if isinstance(raw, str):  # hidden inputs and some custom packs use a bare type
        raw = [raw]
    kind = raw[0]
    options = dict(raw[1]) if len(raw) > 1 and isinstance(raw[1], dict) else {}
    if isinstance(kind, list):  # V1 combo: the option list itself
        return InputSpec(name, "COMBO", options, required, tuple(kind))
    if kind == "COMBO":  # V3 combo: ["COMBO", {"options": [...]}]
        return InputSpec(name, "COMBO", options, required, tuple(options.get("options", ())))
    return InputSpec(name, str(kind), options, required)


def input_specs(info: dict) -> list[InputSpec]:
    """The node's inputs (required then optional) in the order the front end builds them."""
    specs = []
    inputs = info.get("input", {})
    order = info.get("input_order", {})
    for section in ("required", "optional"):
        group = inputs.get(section) or {}
        names = order.get(section) or list(group)
        for name in names:
            if name in group:
                specs.append(_spec(name, group[name], section == "required"))
    return specs


def widget_layout(info: dict) -> list[InputSpec | None]:
    """One entry per positional widget value: the input it sets, or None for a helper widget."""
    layout: list[InputSpec | None] = []
    for spec in input_specs(info):
        if spec.is_widget:
            layout.append(spec)
            layout.extend([None] * spec.helper_widgets)
    return layout


def widget_values(node: dict, info: dict) -> dict[str, Any]:
    """Map a UI node's ``widgets_values`` onto input names (helper widgets dropped)."""
    values = node.get("widgets_values")
    if values is None:
        return {}
    if isinstance(values, dict):  # some packs serialise widgets by name
        names = {spec.name for spec in input_specs(info) if spec.is_widget}
        return {k: v for k, v in values.items() if k in names}
    layout = widget_layout(info)
    if len(values) != len(layout):
        expected = [spec.name if spec else "(helper)" for spec in layout]
        raise WorkflowError(
            f"node {node.get('id')} ({node.get('type')}): {len(values)} widget values {values!r} but the server's "
            f"definition has {len(layout)} widgets {expected}; the workflow was saved against another version "
            "of this node: re-save it from a current ComfyUI")
    return {spec.name: value for spec, value in zip(layout, values) if spec is not None}


# -- graph helpers -----------------------------------------------------------------------


@dataclass
class _Graph:
    nodes: dict[int, dict]
    links: dict[int, tuple]  # id -> (origin_id, origin_slot, target_id, target_slot, type)

    @classmethod
    def of(cls, workflow: dict) -> "_Graph":
        if (workflow.get("definitions") or {}).get("subgraphs"):
            raise WorkflowError("subgraphs are not supported by this converter; convert them to nodes first")
        nodes = {int(n["id"]): n for n in workflow.get("nodes", [])}
        links = {}
        for link in workflow.get("links", []):
            if isinstance(link, dict):  # the 1.0 schema stores links as objects
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                        link.get("type")]
            lid, oid, oslot, tid, tslot, ltype = link[:6]
            links[int(lid)] = (int(oid), int(oslot), int(tid), int(tslot), ltype)
        return cls(nodes, links)

    def input_link(self, node: dict, slot: int) -> int | None:
        inputs = node.get("inputs") or []
        return inputs[slot].get("link") if slot < len(inputs) else None

    def resolve(self, link_id: int, seen: frozenset = frozenset()) -> tuple[str, Any] | None:
        """Follow a link back through Reroutes and bypassed nodes.

        Returns ``("link", (origin_id, slot))``, ``("value", v)`` for a PrimitiveNode, or
        None when the source is muted or unconnected.
        """
        if link_id is None or link_id not in self.links:
            return None
        if link_id in seen:
            raise WorkflowError(f"link {link_id} is part of a cycle of reroutes or bypassed nodes")
        seen = seen | {link_id}
        oid, oslot, _, _, ltype = self.links[link_id]
        origin = self.nodes.get(oid)
        if origin is None:
            raise WorkflowError(f"link {link_id} starts at node {oid}, which is not in the workflow")
        kind = origin.get("type")
        if kind == "Reroute":
            return self.resolve(self.input_link(origin, 0), seen)
        if kind == "PrimitiveNode":
            values = origin.get("widgets_values") or [None]
            return ("value", values[0])
        mode = origin.get("mode", MODE_ALWAYS)
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            slot = self.bypass_slot(origin, oslot, ltype)
            return None if slot is None else self.resolve(self.input_link(origin, slot), seen)
        return ("link", (str(oid), oslot))

    @staticmethod
    def bypass_slot(node: dict, out_slot: int, link_type: str | None) -> int | None:
        inputs = node.get("inputs") or []
        outputs = node.get("outputs") or []
        out_type = link_type or (outputs[out_slot].get("type") if out_slot < len(outputs) else None)
        if out_type == "*":
            return out_slot if out_slot < len(inputs) else (0 if inputs else None)
        if out_slot < len(inputs) and inputs[out_slot].get("type") == out_type:
            return out_slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == out_type:
                return i
        return None


def _executable(node: dict) -> bool:
    return node.get("type") not in VIRTUAL_TYPES and node.get("mode", MODE_ALWAYS) not in (MODE_NEVER, MODE_BYPASS)


# -- conversion ----------------------------------------------------------------------------


def ui_to_api(workflow: dict, object_info: dict) -> dict[str, dict]:
    """Convert a UI-format workflow to the API format ``/prompt`` accepts.

    ``object_info`` is the server's ``GET /object_info`` (all nodes). Raises
    ``WorkflowError`` for node types the server does not know.
    """
    graph = _Graph.of(workflow)
    prompt: dict[str, dict] = {}
    for nid in sorted(graph.nodes):
        node = graph.nodes[nid]
        if not _executable(node):
            continue
        kind = node["type"]
        info = object_info.get(kind)
        if info is None:
            raise WorkflowError(f"node {nid}: type {kind!r} is not registered on the server (missing custom node?)")
        inputs: dict[str, Any] = dict(widget_values(node, info))
        for slot, inp in enumerate(node.get("inputs") or []):
            name = inp.get("name")
            if inp.get("link") is None:
                continue
            resolved = graph.resolve(inp["link"])
            target = (inp.get("widget") or {}).get("name", name)
            if resolved is None:  # muted or unconnected source: a widget keeps its own value
                continue
            what, value = resolved
            inputs[target] = list(value) if what == "link" else value
        prompt[str(nid)] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or
                                                                                info.get("display_name") or kind}}
    return prompt


# -- soundness -------------------------------------------------------------------------------


@dataclass
class Soundness:
    """What ``check_workflow`` found: ``errors`` must be empty for a sound workflow."""

    errors: list[str] = field(default_factory=list)
    # (node id, input name, value): model files the workflow names on purpose although the
    # server does not have them (the released weights a user downloads).
    missing_models: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def types_match(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule (``comfy_execution.validation``): equal, ``*``, or overlapping unions."""
    if output_type == input_type or "*" in (output_type, input_type):
        return True
    out = {t.strip() for t in str(output_type).split(",")}
    inp = {t.strip() for t in str(input_type).split(",")}
    return bool(out & inp)


def check_value(spec: InputSpec, value: Any) -> str | None:
    """Why ``value`` is not valid for ``spec``, or None when it is."""
    if spec.type == "COMBO":
        if spec.combo is not None and value not in spec.combo:
            shown = list(spec.combo) if len(spec.combo) <= 20 else f"{len(spec.combo)} options"
            return f"{value!r} is not one of {shown}"
        return None
    if spec.type == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if spec.type == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if spec.type in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if value != value or value in (float("inf"), float("-inf")):
            return f"{value!r} is not a finite number"
        if spec.type == "INT" and float(value) != int(value):
            return f"{value!r} is not an integer"
        low, high = spec.options.get("min"), spec.options.get("max")
        if low is not None and value < low:
            return f"{value!r} is below the minimum {low}"
        if high is not None and value > high:
            return f"{value!r} is above the maximum {high}"
    return None


def _output_types(node: dict, info: dict | None) -> list[str]:
    if info is not None:
        return [str(t) if not isinstance(t, list) else "COMBO" for t in info.get("output", [])]
    return [o.get("type") for o in node.get("outputs") or []]


def check_workflow(workflow: dict, object_info: dict, expected_missing: Iterable[str] = ()) -> Soundness:
    """Check a UI workflow against the server's node definitions.

    * every node type exists on the server (notes, reroutes and primitives excepted);
    * every widget value is valid (number range and kind, combo option);
      a combo value in ``expected_missing`` that names a model file (the released weights
      the user downloads) is reported in ``missing_models`` instead of ``errors``;
    * every required input is linked or set;
    * every link joins an output and an input of matching types, and the type the link
      records is the output's type.
    """
    expected_missing = set(expected_missing)
    report = Soundness()
    graph = _Graph.of(workflow)
    for nid, node in sorted(graph.nodes.items()):
        kind = node.get("type")
        where = f"node {nid} ({kind})"
        if kind in VIRTUAL_TYPES:
            continue
        info = object_info.get(kind)
        if info is None:
            report.errors.append(f"{where}: node type is not registered on the server")
            continue
        specs = {spec.name: spec for spec in input_specs(info)}
        try:
            values = widget_values(node, info)
        except WorkflowError as err:
            report.errors.append(str(err))
            continue
        linked = {((inp.get("widget") or {}).get("name", inp.get("name")))
                  for inp in node.get("inputs") or [] if inp.get("link") is not None}
        for name, value in values.items():
            if name in linked:
                continue
            problem = check_value(specs[name], value)
            if problem is None:
                continue
            if (specs[name].type == "COMBO" and isinstance(value, str) and value in expected_missing
                    and value.lower().endswith(MODEL_EXTENSIONS)):
                report.missing_models.append((nid, name, value))
            else:
                report.errors.append(f"{where}: input {name!r}: {problem}")
        for inp in node.get("inputs") or []:
            name = inp.get("name")
            if name not in specs and not inp.get("widget"):  # helper widgets (upload) have sockets too
                report.errors.append(f"{where}: has an input socket {name!r} the server's definition does not have")
        for name, spec in specs.items():
            if spec.required and name not in linked and name not in values:
                report.errors.append(f"{where}: required input {name!r} is neither linked nor set")
    for lid, (oid, oslot, tid, tslot, ltype) in sorted(graph.links.items()):
        origin, target = graph.nodes.get(oid), graph.nodes.get(tid)
        if origin is None or target is None:
            report.errors.append(f"link {lid}: joins missing node {oid if origin is None else tid}")
            continue
        if origin.get("type") in VIRTUAL_TYPES or target.get("type") in VIRTUAL_TYPES:
            continue  # reroutes and primitives take the type of what they join
        outs = _output_types(origin, object_info.get(origin["type"]))
        t_inputs = target.get("inputs") or []
        if oslot >= len(outs) or tslot >= len(t_inputs):
            report.errors.append(f"link {lid}: slot out of range ({origin['type']}[{oslot}] -> "
                                 f"{target['type']}[{tslot}])")
            continue
        t_info = object_info.get(target["type"])
        t_name = (t_inputs[tslot].get("widget") or {}).get("name", t_inputs[tslot].get("name"))
        spec = {s.name: s for s in input_specs(t_info)}.get(t_name) if t_info else None
        in_type = spec.type if spec else t_inputs[tslot].get("type")
        if t_inputs[tslot].get("link") != lid:
            report.errors.append(f"link {lid}: node {tid} input {t_name!r} does not point back at it")
        if not types_match(outs[oslot], in_type):
            report.errors.append(f"link {lid}: {origin['type']} output {oslot} ({outs[oslot]}) -> "
                                 f"{target['type']}.{t_name} ({in_type}): types do not match")
        elif ltype not in (None, "*") and not types_match(ltype, outs[oslot]):
            report.errors.append(f"link {lid}: records type {ltype} but {origin['type']} output {oslot} is "
                                 f"{outs[oslot]}")
    return report


# -- edits for tests and scripts ------------------------------------------------------------


def replace_values(prompt: dict, mapping: dict[str, str]) -> dict:
    """A copy of an API prompt with every literal input value found in ``mapping`` replaced."""
    out = copy.deepcopy(prompt)
    for node in out.values():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and value in mapping:
                node["inputs"][name] = mapping[value]
    return out


def strip_meta(prompt: dict) -> dict:
    """The prompt without ``_meta`` (titles), for comparisons."""
    return {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in prompt.items()}
