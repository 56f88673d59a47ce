"""Convert a workflow built on the released ACE++ nodes to this pack's nodes (UI format in, UI format out).

One implementation serves the command line (``python -m aceplus_host convert-release``) and the
front-end action (the pack's ``/acepp/convert_release`` route). Nothing here imports ComfyUI.

What maps to what (the released pack is ``ali-vilab/ACE_plus``, ``workflow/ComfyUI-ACE_Plus``):

* ``ACEPlusLoraProcessor`` / ``ACEPlusFFTProcessor`` + ``ACEPlusLoraConditioning`` /
  ``ACEPlusConditioning`` -> one **ACE++ Conditioning** with ``release_parity`` on. Widgets:
  ``task_type`` -> ``task`` (``contour_repainting`` / ``depth_repainting`` -> ``control``);
  ``max_seq_length`` -> ``max_tokens`` with the released semantics (the LoRA processor budgets
  ``2 x max_seq_length`` tokens, the FFT processor ``max_seq_length``); ``keep_pixels_rate``;
  ``use_reference`` (off with an edit image: the reference is left unconnected); ``height`` /
  ``width``. The processor's inputs (reference, edit image, mask) feed it directly.
* DifferentialDiffusion + FluxGuidance + KSampler + VAEDecode + the ``ImageCrop`` that the
  processor's OUT_H / OUT_W / SLICE_W drive -> **ACE++ Sampler** (seed, steps, cfg, sampler and
  scheduler kept; the FluxGuidance value becomes the Conditioning's ``guidance``). A sampler chain
  that is not exactly that (another sampler node, denoise below 1, more nodes in between) is kept
  as it is and only the ImageCrop becomes **ACE++ Crop Back**.
* ``ACEPlusLoader`` -> **ACE++ Loader** (same file and weight dtype); ``MaskPreview+`` (a third-party
  node the released graphs use) -> stock ``MaskPreview``.
* Everything else stays: prompts, seeds, UNETLoader and its weight dtype, LoRA loaders, Redux
  nodes, images and masks, positions, groups, titles, colours. A Note says what changed.

The node definitions of what is emitted come from ``emitted_nodes.json`` (a snapshot of the
server's ``/object_info`` for those nodes, refreshed by ``tests/test_convert_release.py``), so
widget values land in the positional order the front end uses.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .graph_check import graph_problem, unconnected_input, widgets_problem
from .workflows import MODE_BYPASS, MODE_NEVER, check_value, input_specs, types_match

log = logging.getLogger(__name__)

EMITTED_NODES = Path(__file__).resolve().with_name("emitted_nodes.json")

LORA_PROCESSOR, FFT_PROCESSOR = "ACEPlusLoraProcessor", "ACEPlusFFTProcessor"
LORA_CONDITIONING, FFT_CONDITIONING = "ACEPlusLoraConditioning", "ACEPlusConditioning"
RELEASED_LOADER = "ACEPlusLoader"
RELEASED_TYPES = (LORA_PROCESSOR, FFT_PROCESSOR, LORA_CONDITIONING, FFT_CONDITIONING, RELEASED_LOADER)
PROCESSORS = (LORA_PROCESSOR, FFT_PROCESSOR)
CONDITIONINGS = (LORA_CONDITIONING, FFT_CONDITIONING)

# Positional widgets of the released nodes (their INPUT_TYPES order; helper widgets none).
RELEASED_WIDGETS = {
    LORA_PROCESSOR: ("use_reference", "height", "width", "task_type", "max_seq_length"),
    FFT_PROCESSOR: ("use_reference", "height", "width", "task_type", "keep_pixels_rate", "max_seq_length"),
    LORA_CONDITIONING: ("noise_mask",),
    FFT_CONDITIONING: ("noise_mask",),
    RELEASED_LOADER: ("unet_name", "weight_dtype"),
}
# The released processors' budget: tokens = factor x max_seq_length (LoRA: ``max_seq_len * 2``).
BUDGET_FACTOR = {LORA_PROCESSOR: 2, FFT_PROCESSOR: 1}
RELEASED_TASKS = {"repainting": "repainting", "no_preprocess": "no_preprocess", "recolorizing": "recolorizing",
                  "mosaic": "mosaic", "contour_repainting": "control", "depth_repainting": "control"}
# Which node makes the control map the released task computed with a downloaded annotator.
CONTROL_SOURCES = {
    "contour_repainting": "a contour / line-art map: `LineArtPreprocessor` or `PiDiNetPreprocessor` from the "
                          "community pack comfyui_controlnet_aux (Fannovel16); the stock `Canny` node (needs "
                          "kornia) or this node's own `task = canny` give edges without any extra pack",
    "depth_repainting": "a depth map: `DepthAnythingV2Preprocessor` or `MiDaS-DepthMapPreprocessor` from the "
                        "community pack comfyui_controlnet_aux (Fannovel16)",
}
SAMPLER_WIDGETS = ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise")
READ_WIDGETS = {**RELEASED_WIDGETS, "KSampler": SAMPLER_WIDGETS, "FluxGuidance": ("guidance",)}  # checked first
NOTE_TYPE = "MarkdownNote"
ORIGIN = (0, 0)  # where a replacement goes when the released node has no position


class NotAReleasedGraph(ValueError):
    """The workflow has none of the released ACE++ nodes: nothing to convert."""


class ConversionError(ValueError):
    """A released ACE++ graph this converter cannot map (the message says what and where)."""


class UnexpectedGraph(ConversionError):
    """A graph the checks let through but the mapping could not follow: a bug of the converter (logged)."""


@dataclass
class Result:
    workflow: dict
    changes: list[str] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join(f"- {line}" for line in self.changes)


def load_emitted_nodes() -> dict:
    return json.loads(EMITTED_NODES.read_text())


def is_released_graph(workflow: dict) -> bool:
    nodes = workflow.get("nodes") if isinstance(workflow, dict) else None
    return isinstance(nodes, list) and any(isinstance(n, dict) and n.get("type") in RELEASED_TYPES for n in nodes)


# -- a small editor over the UI format ------------------------------------------------------------


class Editor:
    """Nodes and links of a UI workflow, edited in place (on a copy the caller made)."""

    def __init__(self, workflow: dict, schemas: dict):
        self.wf = workflow
        self.schemas = schemas
        links = []
        for link in workflow.get("links", []):
            if isinstance(link, dict):
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                        link.get("type")]
            links.append(list(link))
        workflow["links"] = links
        self.nodes = {int(n["id"]): n for n in workflow.get("nodes", [])}
        starts = {lk[0]: (lk[1], lk[2]) for lk in links}
        for nid, node in self.nodes.items():  # stale ids in an output's list (LiteGraph keeps them): dropped
            for slot, out in enumerate(node.get("outputs") or []):
                if out.get("links"):
                    out["links"] = [lid for lid in out["links"] if starts.get(lid) == (nid, slot)]
        self.origin: dict[int, str] = {}  # emitted node id -> the released node it replaces, for messages

    # reading
    def link(self, lid: int | None) -> list | None:
        return next((lk for lk in self.wf["links"] if lk[0] == lid), None) if lid is not None else None

    def input_slot(self, node: dict, name: str) -> int | None:
        for i, inp in enumerate(node.get("inputs") or []):
            if inp.get("name") == name or (inp.get("widget") or {}).get("name") == name:
                return i
        return None

    def source(self, node: dict, name: str) -> tuple[int, int] | None:
        """(origin id, origin slot) feeding input ``name``, or None."""
        slot = self.input_slot(node, name)
        lk = self.link((node["inputs"][slot].get("link")) if slot is not None else None)
        return (lk[1], lk[2]) if lk else None

    def consumers(self, node_id: int, out_slot: int) -> list[tuple[int, str]]:
        """(target id, input name) of every link from output ``out_slot``."""
        found = []
        for lk in self.wf["links"]:
            if lk[1] == node_id and lk[2] == out_slot:
                target = self.nodes[lk[3]]
                inp = target["inputs"][lk[4]]
                found.append((lk[3], (inp.get("widget") or {}).get("name", inp.get("name"))))
        return found

    def all_consumers(self, node_id: int) -> list[int]:
        return [lk[3] for lk in self.wf["links"] if lk[1] == node_id]

    def widget(self, node: dict, name: str, default: Any = None) -> Any:
        names = RELEASED_WIDGETS.get(node["type"])
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            return values.get(name, default)
        if names is None or name not in names:
            return default
        i = names.index(name)
        return values[i] if i < len(values) else default

    # writing
    def next_node_id(self) -> int:
        nid = max([int(self.wf.get("last_node_id") or 0), *self.nodes]) + 1
        self.wf["last_node_id"] = nid
        return nid

    def next_link_id(self) -> int:
        lid = max([int(self.wf.get("last_link_id") or 0), *(lk[0] for lk in self.wf["links"])]) + 1
        self.wf["last_link_id"] = lid
        return lid

    def unlink(self, lid: int) -> None:
        lk = self.link(lid)
        if lk is None:
            return
        self.wf["links"].remove(lk)
        origin, target = self.nodes.get(lk[1]), self.nodes.get(lk[3])
        if origin is not None and lk[2] < len(origin.get("outputs") or []):
            out = origin["outputs"][lk[2]]
            out["links"] = [x for x in (out.get("links") or []) if x != lid]
        if target is not None and lk[4] < len(target.get("inputs") or []):
            if target["inputs"][lk[4]].get("link") == lid:
                target["inputs"][lk[4]]["link"] = None

    def remove(self, node_id: int) -> dict:
        node = self.nodes[node_id]
        for lk in [lk for lk in self.wf["links"] if node_id in (lk[1], lk[3])]:
            self.unlink(lk[0])
        del self.nodes[node_id]
        self.wf["nodes"] = [n for n in self.wf["nodes"] if int(n["id"]) != node_id]
        return node

    def connect(self, origin: tuple[int, int] | None, target_id: int, name: str) -> None:
        """Link ``origin`` (node id, slot) to input ``name`` of ``target_id`` (replacing its link)."""
        if origin is None:
            return
        target = self.nodes[target_id]
        slot = self.input_slot(target, name)
        if slot is None:
            raise ConversionError(f"node {target_id} ({target['type']}) has no input {name!r}")
        old = target["inputs"][slot].get("link")
        if old is not None:
            self.unlink(old)
        onode = self.nodes[origin[0]]
        outputs = onode.get("outputs") or []
        ltype = outputs[origin[1]].get("type") if origin[1] < len(outputs) else "*"
        want = target["inputs"][slot].get("type")
        if ltype and want and not types_match(ltype, want):
            raise ConversionError(f"node {origin[0]} ({onode['type']}): output {origin[1]} is a {ltype} but it would "
                                  f"feed {name!r} ({want}) of {self.origin.get(target_id, target['type'])}; fix the "
                                  "link in the released graph and convert again")
        lid = self.next_link_id()
        self.wf["links"].append([lid, origin[0], origin[1], target_id, slot, ltype])
        target["inputs"][slot]["link"] = lid
        outputs[origin[1]].setdefault("links", [])
        outputs[origin[1]]["links"] = list(outputs[origin[1]]["links"] or []) + [lid]

    def add(self, kind: str, pos, size, widgets: dict | None = None, node_id: int | None = None,
            keep: dict | None = None) -> dict:
        """A node of an emitted type, its widget values placed from the schema (``widgets`` by name)."""
        info = self.schemas[kind]
        widgets = dict(widgets or {})
        specs = input_specs(info)
        inputs, values = [], []
        for spec in specs:
            if not spec.is_widget:
                inputs.append({"name": spec.name, "type": spec.type, "link": None} |
                              ({"shape": 7} if not spec.required else {}))
        source = f"node {keep['id']} ({keep['type']})" if keep and "id" in keep else kind
        for spec in specs:
            if not spec.is_widget:
                continue
            value = widgets.pop(spec.name, spec.options.get("default"))
            if value is None and spec.combo:
                value = spec.combo[0]
            problem = check_value(spec, value) if (spec.combo or spec.type != "COMBO") else (
                None if isinstance(value, str) and value else f"{value!r} is not a name")  # host lists left empty
            if problem:
                raise ConversionError(f"{source}: {spec.name} = {value!r} cannot go into {kind}: {problem}")
            values.append(value)
            inputs.append({"name": spec.name, "type": spec.type, "widget": {"name": spec.name}, "link": None})
            # Helper widgets the front end stores after this one: "control after generate" (fixed) for
            # numbers, the upload button ("image") after an image combo, which has a socket of its own.
            if spec.type == "COMBO" and spec.helper_widgets:
                values.extend(["image"] * spec.helper_widgets)
                inputs.append({"name": "upload", "type": "IMAGEUPLOAD", "widget": {"name": "upload"}, "link": None})
            else:
                values.extend(["fixed"] * spec.helper_widgets)
        if widgets:
            raise ConversionError(f"{kind} has no widget(s) {sorted(widgets)} in this version of the pack")
        outputs = [{"name": name, "type": typ, "links": []} for name, typ in zip(info["output_name"], info["output"])]
        nid = node_id if node_id is not None else self.next_node_id()
        if keep and keep.get("type") != kind:
            self.origin[nid] = source
        node = {"id": nid, "type": kind, "pos": list(pos), "size": list(size), "flags": {}, "order": 0, "mode": 0,
                "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": kind},
                "widgets_values": values}
        for key in ("title", "color", "bgcolor", "flags", "order", "mode"):  # what the user set on the old node
            if keep and key in keep:
                node[key] = copy.deepcopy(keep[key])
        self.wf["nodes"].append(node)
        self.nodes[nid] = node
        return node

    def note(self, text: str, pos, size=(460, 260), title: str = "Converted from the released ACE++") -> dict:
        nid = self.next_node_id()
        node = {"id": nid, "type": NOTE_TYPE, "pos": list(pos), "size": list(size), "flags": {}, "order": 0,
                "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
                "title": title, "color": "#432", "bgcolor": "#653"}
        self.wf["nodes"].append(node)
        self.nodes[nid] = node
        return node

    def supports(self, kind: str, widget: str) -> bool:
        return any(s.name == widget for s in input_specs(self.schemas[kind]))


# -- the mapping ------------------------------------------------------------------------------------


def _live(node: dict) -> bool:
    return node.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS)


def _processor_of(ed: Editor, cond: dict) -> dict:
    names = ("pixels", "mask") if cond["type"] == LORA_CONDITIONING else ("ucpixels", "cpixels", "mask")
    found = {ed.source(cond, n)[0] for n in names if ed.source(cond, n)}
    procs = [ed.nodes[i] for i in found if ed.nodes[i]["type"] in PROCESSORS]
    if len(procs) != 1 or len(found) != 1:
        raise ConversionError(
            f"node {cond['id']} ({cond['type']}): its image and mask inputs must come from one ACE++ processor "
            f"node (ACEPlusLoraProcessor / ACEPlusFFTProcessor); they come from nodes {sorted(found)}. Connect them "
            "as the released workflows do, then convert again.")
    return procs[0]


def _through(ed: Editor, origin: tuple[int, int] | None, kind: str) -> tuple[tuple[int, int] | None, dict | None]:
    """Step back over one node of ``kind`` (its first input): (the source before it, the node) or (origin, None)."""
    if origin is None:
        return None, None
    node = ed.nodes[origin[0]]
    if node["type"] == kind and _live(node):
        first = (node.get("inputs") or [{}])[0].get("name")
        return ed.source(node, first), node
    return origin, None


def _note_pos(ed: Editor, height: float) -> tuple[float, float]:
    """Above the top-left node, clear of the graph (and of its groups' title bars)."""
    xs = [n["pos"][0] for n in ed.wf["nodes"] if isinstance(n.get("pos"), (list, tuple))]
    ys = [n["pos"][1] for n in ed.wf["nodes"] if isinstance(n.get("pos"), (list, tuple))]
    ys += [g["bounding"][1] for g in ed.wf.get("groups") or [] if len(g.get("bounding") or ()) == 4]
    return (min(xs, default=0), min(ys, default=0) - height - 60)


def _standard_sampler(ed: Editor, cond: dict, crops: list[dict]) -> dict | None:
    """The released KSampler -> VAEDecode chain behind ``cond`` when it is exactly that, else None."""
    latent_users = ed.consumers(cond["id"], 2)
    if len(latent_users) != 1:
        return None
    ks = ed.nodes[latent_users[0][0]]
    if ks["type"] != "KSampler" or not _live(ks) or latent_users[0][1] != "latent_image":
        return None
    values = ks.get("widgets_values") or []
    if len(values) != len(SAMPLER_WIDGETS) or float(values[6]) != 1.0:
        return None  # denoise below 1: an img2img chain of the user's, kept as it is
    if ed.source(ks, "positive") != (cond["id"], 0) or ed.source(ks, "negative") != (cond["id"], 1):
        return None
    decodes = ed.consumers(ks["id"], 0)
    if len(decodes) != 1 or ed.nodes[decodes[0][0]]["type"] != "VAEDecode" or not _live(ed.nodes[decodes[0][0]]):
        return None
    decode = ed.nodes[decodes[0][0]]
    if not crops or any(ed.source(c, "image") != (decode["id"], 0) for c in crops):
        return None
    return {"ksampler": ks, "decode": decode, "values": dict(zip(SAMPLER_WIDGETS, values))}


def _convert_pair(ed: Editor, cond: dict, changes: list[str], notes: list[str]) -> None:
    proc = _processor_of(ed, cond)
    kind = proc["type"]
    pname = f"node {proc['id']} ({kind})"
    task_type = ed.widget(proc, "task_type", "repainting")
    if task_type not in RELEASED_TASKS:
        raise ConversionError(f"{pname}: task_type {task_type!r} is not one of the released tasks "
                              f"{sorted(RELEASED_TASKS)}")
    task = RELEASED_TASKS[task_type]
    msl = int(ed.widget(proc, "max_seq_length", 3072))
    budget = BUDGET_FACTOR[kind] * msl
    widgets = {"task": task, "max_tokens": budget, "width": int(ed.widget(proc, "width", 1024)),
               "height": int(ed.widget(proc, "height", 1024)), "release_parity": True}
    keep_rate = ed.widget(proc, "keep_pixels_rate", None)
    if keep_rate is not None:
        if ed.supports("ACEPP_Conditioning", "keep_pixels_rate"):
            widgets["keep_pixels_rate"] = float(keep_rate)
        else:
            changes.append(f"{pname}: keep_pixels_rate {keep_rate} has no widget in this version of ACE++ "
                           "Conditioning (it uses 0.8)")
    reference, edit, mask = (ed.source(proc, n) for n in ("reference_image", "edit_image", "edit_mask"))
    if not ed.widget(proc, "use_reference", True) and edit is not None and reference is not None:
        changes.append(f"{pname}: use_reference is off, so the reference image is left unconnected (as the "
                       "release ignored it)")
        reference = None
    if ed.widget(cond, "noise_mask", False):
        changes.append(f"node {cond['id']} ({cond['type']}): noise_mask=True has no equivalent; ACE++ "
                       "Conditioning decides the noise mask itself")

    # FluxGuidance in front of the positive (directly or behind Redux's StyleModelApply): its value moves
    # to the Conditioning's guidance and the node goes.
    positive = ed.source(cond, "positive")
    holder, guidance_node = cond, None
    probe = positive
    for _ in range(8):  # walk back over conditioning-only nodes (StyleModelApply, ...) to FluxGuidance
        if probe is None:
            break
        node = ed.nodes[probe[0]]
        if node["type"] == "FluxGuidance" and _live(node) and len(ed.consumers(node["id"], 0)) == 1:
            guidance_node = node
            break
        if node["type"] != "StyleModelApply":
            break
        holder, probe = node, ed.source(node, "conditioning")
    if guidance_node is not None:
        widgets["guidance"] = float((guidance_node.get("widgets_values") or [50.0])[0])
        before = ed.source(guidance_node, "conditioning")
        if holder is cond:
            positive = before
        else:
            ed.connect(before, holder["id"], "conditioning")
        ed.remove(guidance_node["id"])
        changes.append(f"node {guidance_node['id']} (FluxGuidance {widgets['guidance']:g}) removed: ACE++ "
                       "Conditioning sets the guidance")

    crops = [ed.nodes[t] for t, name in ed.consumers(proc["id"], 5 if kind == FFT_PROCESSOR else 4)
             if ed.nodes[t]["type"] == "ImageCrop" and name == "x"]
    std = _standard_sampler(ed, cond, crops)
    model_src = None
    if std is not None:
        model_src, diff = _through(ed, ed.source(std["ksampler"], "model"), "DifferentialDiffusion")
        if diff is not None and len(ed.consumers(diff["id"], 0)) != 1:
            model_src, diff = ed.source(std["ksampler"], "model"), None
    else:
        for t, name in ed.consumers(cond["id"], 2):
            node = ed.nodes[t]
            if node.get("inputs") and ed.source(node, "model"):
                model_src, _ = _through(ed, ed.source(node, "model"), "DifferentialDiffusion")
                break
    if model_src is None:
        raise ConversionError(f"node {cond['id']} ({cond['type']}): no sampler with a model reads its latent, so "
                              "the model cannot be found; connect the graph as the released workflows do")

    # -- ACE++ Conditioning in place of the released conditioning (same id and position) --
    outs = {slot: ed.consumers(cond["id"], slot) for slot in range(3)}
    sources = {"negative": ed.source(cond, "negative"), "vae": ed.source(cond, "vae")}
    proc_outs = {slot: ed.consumers(proc["id"], slot) for slot in range(len(proc.get("outputs") or []))}
    old = ed.remove(cond["id"])
    ed.remove(proc["id"])
    new = ed.add("ACEPP_Conditioning", old.get("pos", ORIGIN), (340, 560), widgets, node_id=cond["id"], keep=old)
    for name, src in (("positive", positive), ("negative", sources["negative"]), ("vae", sources["vae"]),
                      ("model", model_src), ("edit_image", edit), ("mask", mask), ("reference", reference)):
        ed.connect(src, new["id"], name)
    for slot, users in outs.items():
        for t, name in users:
            ed.connect((new["id"], slot), t, name)
    changes.append(f"nodes {proc['id']} ({kind}) + {cond['id']} ({cond['type']}) -> ACE++ Conditioning "
                   f"{new['id']}: task {task_type} -> {task}, budget {msl} x {BUDGET_FACTOR[kind]} = {budget} tokens, "
                   f"{widgets['width']}x{widgets['height']}, release_parity on")
    if task == "control":
        notes.append(f"**Control map needed.** The released task `{task_type}` made its map with an annotator it "
                     f"downloaded at run time; this pack downloads nothing. Connect {CONTROL_SOURCES[task_type]} "
                     f"to `control_image` of ACE++ Conditioning {new['id']} (the edit image's size; only its part "
                     "inside the mask is used). Until then the node stops with a message.")
        changes.append(f"ACE++ Conditioning {new['id']}: control_image left empty for the {task_type} map")

    # Previews of the processor's outputs now show the stitched canvas; its mask previews show the edit mask.
    mask_slot = 2 if kind == FFT_PROCESSOR else 1
    image_slots = (0, 1) if kind == FFT_PROCESSOR else (0,)
    for slot in image_slots:
        for t, name in proc_outs.get(slot, []):
            if t in ed.nodes and t != new["id"]:
                ed.connect((new["id"], 4), t, name)
    for t, name in proc_outs.get(mask_slot, []):
        if t in ed.nodes and t != new["id"]:
            if mask is not None:
                ed.connect(mask, t, name)
            else:
                removed = ed.remove(t)
                changes.append(f"node {t} ({removed['type']}) removed: it previewed the released canvas mask, and "
                               "there is no edit mask to show")

    # -- the sampler chain --
    if std is not None:
        ks, decode = std["ksampler"], std["decode"]
        v = std["values"]
        vae_src = ed.source(decode, "vae")
        crop_users = {c["id"]: ed.consumers(c["id"], 0) for c in crops}
        canvas_users = [u for u in ed.consumers(decode["id"], 0) if u[0] not in crop_users]
        for c in crops:
            ed.remove(c["id"])
        ed.remove(decode["id"])
        diff = ed.nodes.get(ed.source(ks, "model")[0]) if ed.source(ks, "model") else None
        ed.remove(ks["id"])
        if diff is not None and diff["type"] == "DifferentialDiffusion" and not ed.all_consumers(diff["id"]):
            ed.remove(diff["id"])
            changes.append(f"node {diff['id']} (DifferentialDiffusion) removed: ACE++ Sampler holds what must not "
                           "change itself")
        sampler = ed.add("ACEPP_Sampler", ks.get("pos", ORIGIN), (320, 420),
                         {"seed": v["seed"], "steps": v["steps"], "cfg": v["cfg"], "sampler_name": v["sampler_name"],
                          "scheduler": v["scheduler"], "canvas_shift": False}, node_id=ks["id"], keep=ks)
        sampler["widgets_values"][1] = v["control_after_generate"]  # keep fixed / randomize
        for name, src in (("model", model_src), ("positive", (new["id"], 0)), ("negative", (new["id"], 1)),
                          ("latent", (new["id"], 2)), ("layout", (new["id"], 3)), ("vae", vae_src)):
            ed.connect(src, sampler["id"], name)
        for users in crop_users.values():
            for t, name in users:
                ed.connect((sampler["id"], 0), t, name)
        for t, name in canvas_users:
            ed.connect((sampler["id"], 1), t, name)
        changes.append(f"nodes {ks['id']} (KSampler) + {decode['id']} (VAEDecode) + "
                       f"{', '.join(str(c['id']) for c in crops)} (ImageCrop) -> ACE++ Sampler {sampler['id']} (seed "
                       f"{v['seed']}, {v['steps']} steps, cfg {v['cfg']:g}, {v['sampler_name']}/{v['scheduler']}, "
                       "canvas_shift off as in the release)")
    else:
        for c in crops:
            canvas_src = ed.source(c, "image")
            users = ed.consumers(c["id"], 0)
            ed.remove(c["id"])
            back = ed.add("ACEPP_CropBack", c.get("pos", ORIGIN), (300, 130), node_id=c["id"], keep=c)
            ed.connect(canvas_src, back["id"], "canvas")
            ed.connect((new["id"], 3), back["id"], "layout")
            for t, name in users:
                ed.connect((back["id"], 0), t, name)
            changes.append(f"node {c['id']} (ImageCrop) -> ACE++ Crop Back {back['id']}; your sampler chain is kept")
        if not crops:
            changes.append("no ImageCrop driven by the processor: the decoded canvas is left as it was")


def _convert_loaders(ed: Editor, changes: list[str]) -> None:
    for node in [n for n in ed.wf["nodes"] if n["type"] == RELEASED_LOADER]:
        users = ed.consumers(node["id"], 0)
        name, dtype = ed.widget(node, "unet_name", ""), ed.widget(node, "weight_dtype", "default")
        old = ed.remove(node["id"])
        new = ed.add("ACEPP_Loader", old.get("pos", ORIGIN), (320, 250), {"model_name": name, "weight_dtype": dtype},
                     node_id=old["id"], keep=old)
        for t, inp in users:
            ed.connect((new["id"], 0), t, inp)
        changes.append(f"node {node['id']} (ACEPlusLoader {name}, {dtype}) -> ACE++ Loader")


def _convert_mask_previews(ed: Editor, changes: list[str]) -> None:
    for node in [n for n in ed.wf["nodes"] if n["type"] == "MaskPreview+"]:
        src = ed.source(node, "mask")
        old = ed.remove(node["id"])
        new = ed.add("MaskPreview", old.get("pos", ORIGIN), old.get("size", (240, 250)), node_id=old["id"], keep=old)
        ed.connect(src, new["id"], "mask")
        changes.append(f"node {node['id']} (MaskPreview+, a third-party node) -> stock MaskPreview")


NOTE_TEXT = """## Converted from the released ACE++

This graph was built on the released ACE++ nodes (ali-vilab/ACE_plus) and has been converted to this pack.

**What changed:**
{changes}

**It opens with `release_parity` on**, so the first run reproduces the release's canvas: one token budget
for the whole canvas (the released `max_seq_length`, x2 for the LoRA processor, now `max_tokens`), the
release's reference fit, the 30 px seam crop and no resize back (the output is smaller than the input,
as before), and the model's own time shift (`canvas_shift` off on ACE++ Sampler).

**Full-resolution defaults:** on ACE++ Conditioning set `release_parity` off and `max_tokens` 8192 (the
edit keeps up to `target_tokens`, references are padded, not stretched); on ACE++ Sampler set
`canvas_shift` on. The output then has the input's exact size, and every pixel outside the mask is the
input's.{extra}"""


def convert(workflow: dict, schemas: dict | None = None) -> Result:
    """The converted copy of ``workflow`` and the list of changes. The input is never modified.

    Raises ``NotAReleasedGraph`` when no released ACE++ node is present, ``ConversionError`` when a
    released node is wired in a way the mapping cannot follow.
    """
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise NotAReleasedGraph("this is not a ComfyUI workflow in the UI format (no 'nodes' list); save it from "
                                "ComfyUI with Workflow > Save (not Export (API))")
    if not is_released_graph(workflow):
        kinds = sorted({str(n.get("type")) for n in workflow["nodes"] if isinstance(n, dict)})
        raise NotAReleasedGraph(
            f"no released ACE++ node ({', '.join(RELEASED_TYPES)}) in this workflow (it has {len(kinds)} node types: "
            f"{', '.join(kinds[:12])}{', ...' if len(kinds) > 12 else ''}); nothing to convert")
    problem = graph_problem(workflow) or widgets_problem(workflow["nodes"], READ_WIDGETS)
    if problem:
        raise ConversionError(f"{problem}; the graph is damaged: fix that field (or re-save the workflow from ComfyUI) "
                              "and convert again")
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise ConversionError("subgraphs are not supported by the converter; unpack them (right-click > Unpack "
                              "Subgraph) and convert again")
    try:
        return _convert(workflow, schemas)
    except ConversionError:
        raise
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as err:  # a gap in the checks above
        log.exception("the converter failed on a graph its checks accepted")
        raise UnexpectedGraph(f"this graph could not be converted ({type(err).__name__}: {err}); it is wired in a way "
                              "the converter does not know. Please report it with the workflow attached") from err


def _convert(workflow: dict, schemas: dict | None) -> Result:
    ed = Editor(copy.deepcopy(workflow), schemas or load_emitted_nodes())
    changes: list[str] = []
    notes: list[str] = []
    conds = [n for n in ed.wf["nodes"] if n["type"] in CONDITIONINGS]
    for cond in conds:
        _convert_pair(ed, cond, changes, notes)
    _convert_loaders(ed, changes)
    left = [n for n in ed.wf["nodes"] if n["type"] in PROCESSORS]
    for proc in left:  # a processor without a released conditioning: nothing consumes its canvas
        raise ConversionError(f"node {proc['id']} ({proc['type']}) feeds no ACEPlusLoraConditioning / "
                              "ACEPlusConditioning; connect it as the released workflows do, then convert again")
    _convert_mask_previews(ed, changes)
    unlinked = unconnected_input(ed.nodes, ed.origin, ed.schemas)
    if unlinked:
        raise ConversionError(unlinked)
    extra = "".join(f"\n\n{n}" for n in notes)
    height = 420 + 60 * len(notes)
    ed.note(NOTE_TEXT.format(changes="\n".join(f"- {c}" for c in changes), extra=extra), _note_pos(ed, height),
            size=(620, height))
    for order, node in enumerate(sorted(ed.wf["nodes"], key=lambda n: int(n["id"]))):
        node["order"] = order
    ed.wf["nodes"] = sorted(ed.wf["nodes"], key=lambda n: int(n["id"]))
    log.info("converted a released ACE++ workflow: %d changes", len(changes))
    return Result(ed.wf, changes)
