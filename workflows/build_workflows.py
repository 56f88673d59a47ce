"""Write the shipped UI-format workflows (``workflows/*.json``) from the specs below.

    python workflows/build_workflows.py            # starts a headless ComfyUI for /object_info
    python workflows/build_workflows.py --object-info object_info.json

The JSON files are what users drag into ComfyUI (and what ComfyUI lists as this pack's
templates); they are committed. This script is how they are made and changed: widget
values are given by input name here and placed in the positional order the front end
uses, read from the server's node definitions, so a reordered node definition never
silently shifts a value. tests/test_workflows_*.py load, check, run and screenshot them.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from aceplus_host.workflows import input_specs, widget_layout  # noqa: E402

# Released file names (ace_plus_reference.md section 3 and the FLUX releases).
FILL = "flux1-fill-dev.safetensors"
FFT = "ace_plus_fft.safetensors"
SUBJECT_LORA = "comfyui_subject_lora16.safetensors"
PORTRAIT_LORA = "comfyui_portrait_lora64.safetensors"
LOCAL_LORA = "comfyui_local_lora16.safetensors"
CLIP_L = "clip_l.safetensors"
T5 = "t5xxl_fp16.safetensors"
VAE = "ae.safetensors"
REDUX = "flux1-redux-dev.safetensors"  # black-forest-labs/FLUX.1-Redux-dev
SIGCLIP = "sigclip_vision_patch14_384.safetensors"  # the SigLIP vision encoder Redux reads
RELEASED_FILES = (FILL, FFT, SUBJECT_LORA, PORTRAIT_LORA, LOCAL_LORA, CLIP_L, T5, VAE, REDUX, SIGCLIP)
STEPS, GUIDANCE = 28, 50.0  # the release's defaults

FOLDERS = f"""**Model files** (ComfyUI/models/...):
- diffusion_models/{FILL} (black-forest-labs/FLUX.1-Fill-dev)
- loras/{SUBJECT_LORA}, {PORTRAIT_LORA}, {LOCAL_LORA} (ali-vilab/ACE_plus)
- text_encoders/{CLIP_L}, {T5} (comfyanonymous/flux_text_encoders; clip/ works too)
- vae/{VAE} (FLUX.1 VAE)"""

# Helper-widget values the front end stores after some widgets (see aceplus_host.workflows).
HELPER_DEFAULTS = {"INT": "fixed", "FLOAT": "fixed", "COMBO": "image"}
# A node's title bar sits above its ``pos``; GAP leaves room for the Vue renderer's "Issues" footer under a node.
TITLE_HEIGHT, GAP = 30, 40


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    size: tuple[float, float]
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    text: str | None = None  # Note / MarkdownNote
    color: tuple[str, str] | None = None


class Graph:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[Node] = []
        self.links: list[list] = []  # [id, origin, origin_slot, target, target_name, type]

    def add(self, kind: str, pos, size=None, title=None, **widgets) -> Node:
        if kind not in ("Note", "MarkdownNote"):
            specs = {s.name for s in input_specs(self.info[kind]) if s.is_widget}
            unknown = set(widgets) - specs
            if unknown:
                raise ValueError(f"{kind} has no widget(s) {sorted(unknown)}; it has {sorted(specs)}")
        node = Node(len(self.nodes) + 1, kind, pos, size or self.size_of(kind), dict(widgets), title)
        self.nodes.append(node)
        return node

    def note(self, text: str, pos, size=(430, 300), title="Read me") -> Node:
        node = Node(len(self.nodes) + 1, "MarkdownNote", pos, size, title=title, text=text)
        self.nodes.append(node)
        return node

    def size_of(self, kind: str) -> tuple[float, float]:
        """Room for every widget in either renderer: the Vue node renderer's rows (about 30 px a widget, 24 a
        socket row, 40 of padding) are taller than the canvas's (24, 22, 34), and a node never shrinks below
        its saved size, so the canvas draws the same box. The front-end tests check that no node overlaps."""
        specs = input_specs(self.info[kind])
        sockets = sum(not s.is_widget for s in specs)
        widgets = sum(s.is_widget for s in specs)  # helper widgets (seed control, upload) share a row
        outputs = len(self.info[kind]["output"])
        height = 40 + 24 * max(sockets, outputs) + 30 * widgets
        if kind == "LoadImage":
            height = 430  # room for the preview: the Vue renderer of 1.32.9 draws it the node's width high
        if kind == "CLIPTextEncode":
            return (400, 170)
        return (320 if widgets else 240, height)

    @staticmethod
    def below(node: Node) -> float:
        """The y of a node placed under ``node`` in the same column: its title bar clears ``node`` by GAP."""
        return node.pos[1] + node.size[1] + TITLE_HEIGHT + GAP

    def connect(self, src: Node, out: int | str, dst: Node, inp: str) -> None:
        outputs = self.info[src.type]["output"]
        names = self.info[src.type]["output_name"]
        slot = out if isinstance(out, int) else names.index(out)
        self.links.append([len(self.links) + 1, src.id, slot, dst.id, inp, outputs[slot]])

    # -- UI JSON --------------------------------------------------------------------------
    def to_ui(self) -> dict:
        nodes_json = []
        for order, node in enumerate(self.nodes):
            nodes_json.append(self._node_json(node, order))
        links_json = []
        for lid, origin, oslot, target, tname, ltype in self.links:
            tnode = next(n for n in nodes_json if n["id"] == target)
            tslot = next(i for i, inp in enumerate(tnode["inputs"]) if inp["name"] == tname)
            tnode["inputs"][tslot]["link"] = lid
            onode = next(n for n in nodes_json if n["id"] == origin)
            onode["outputs"][oslot]["links"].append(lid)
            links_json.append([lid, origin, oslot, target, tslot, ltype])
        return {"id": "", "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": nodes_json, "links": links_json, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}}, "version": 0.4}

    def _node_json(self, node: Node, order: int) -> dict:
        base = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                "order": order, "mode": 0}
        if node.title:
            base["title"] = node.title
        if node.type in ("Note", "MarkdownNote"):
            base.update(inputs=[], outputs=[], properties={}, widgets_values=[node.text],
                        color="#432", bgcolor="#653")
            return base
        info = self.info[node.type]
        specs = input_specs(info)
        inputs = [{"name": s.name, "type": s.type, "link": None} | ({"shape": 7} if not s.required else {})
                  for s in specs if not s.is_widget]
        values = []
        for spec in specs:
            if not spec.is_widget:
                continue
            value = node.widgets.get(spec.name, spec.options.get("default"))
            if value is None and spec.type == "COMBO" and spec.combo:
                value = spec.combo[0]
            if value is None:
                raise ValueError(f"{node.type}.{spec.name} needs a value (no default)")
            values.append(value)
            inputs.append({"name": spec.name, "type": spec.type, "widget": {"name": spec.name}, "link": None})
            for _ in range(spec.helper_widgets):
                values.append(HELPER_DEFAULTS[spec.type])
                if spec.type == "COMBO":  # the upload button has a socket of its own
                    inputs.append({"name": "upload", "type": "IMAGEUPLOAD", "widget": {"name": "upload"}, "link": None})
        outputs = [{"name": name, "type": kind, "links": []}
                   for name, kind in zip(info["output_name"], info["output"])]
        if info.get("output_node") and not any(link[1] == node.id for link in self.links):
            # An output node nothing reads from is written without outputs, so the file is the same
            # whichever ComfyUI builds it: 0.33 gave SaveImage a pass-through IMAGE output, 0.3.75 has
            # none. Both hosts load and run it (tests/test_workflows_shipped.py, test_workflows_frontend.py).
            outputs = []
        base.update(inputs=inputs, outputs=outputs, properties={"Node name for S&R": node.type},
                    widgets_values=values)
        if node.color:
            base["color"], base["bgcolor"] = node.color
        return base


# -- the shared parts of every workflow ----------------------------------------------------------

X_LOAD, X_TEXT, X_COND, X_SAMPLE, X_SAVE = 0, 470, 930, 1290, 1630


@dataclass
class Common:
    loader: Node
    clip: Node
    positive: Node
    negative: Node
    vae: Node


def common(g: Graph, prompt: str, model: str = FILL, lora: str | None = SUBJECT_LORA, lora_strength: float = 1.0,
           weight_dtype: str = "default", y0: float = 330) -> Common:
    loader_widgets = dict(model_name=model, weight_dtype=weight_dtype)
    if lora:
        loader_widgets.update(lora_1=lora, strength_1=lora_strength)
    loader = g.add("ACEPP_Loader", (X_LOAD, y0), **loader_widgets)
    clip = g.add("DualCLIPLoader", (X_LOAD, g.below(loader)), clip_name1=CLIP_L, clip_name2=T5, type="flux")
    vae = g.add("VAELoader", (X_LOAD, g.below(clip)), vae_name=VAE)
    positive = g.add("CLIPTextEncode", (X_TEXT, 0), title="Instruction (positive)", text=prompt)
    negative = g.add("CLIPTextEncode", (X_TEXT, g.below(positive)), size=(400, 110), title="Negative (unused at cfg 1)",
                     text="")
    g.connect(clip, 0, positive, "clip")
    g.connect(clip, 0, negative, "clip")
    return Common(loader, clip, positive, negative, vae)


def finish(g: Graph, c: Common, name: str, *, edit: Node | None = None, mask: bool = True,
           reference: Node | None = None, more: Node | None = None, control: Node | None = None,
           seed: int = 42, positive: Node | None = None, **cond_widgets) -> Node:
    cond = g.add("ACEPP_Conditioning", (X_COND, 0), guidance=GUIDANCE, **cond_widgets)
    g.connect(positive or c.positive, 0, cond, "positive")
    g.connect(c.negative, 0, cond, "negative")
    g.connect(c.vae, 0, cond, "vae")
    g.connect(c.loader, 0, cond, "model")
    if edit is not None:
        g.connect(edit, "IMAGE", cond, "edit_image")
        if mask:
            g.connect(edit, "MASK", cond, "mask")
    if reference is not None:
        g.connect(reference, "IMAGE", cond, "reference")
    if more is not None:
        g.connect(more, 0, cond, "more_references")
    if control is not None:
        g.connect(control, "IMAGE", cond, "control_image")
    sampler = g.add("ACEPP_Sampler", (X_SAMPLE, 0), seed=seed, steps=STEPS, cfg=1.0)
    g.connect(c.loader, 0, sampler, "model")
    for out, inp in ((0, "positive"), (1, "negative"), (2, "latent"), (3, "layout")):
        g.connect(cond, out, sampler, inp)
    g.connect(c.vae, 0, sampler, "vae")
    save = g.add("SaveImage", (X_SAVE, 0), size=(420, 460), filename_prefix=f"ACE++/{name}")
    g.connect(sampler, 0, save, "images")
    return save


def below_conditioning(g: Graph) -> float:
    """The y of a node under ACE++ Conditioning (placed at y 0 of its column by ``finish``)."""
    return g.size_of("ACEPP_Conditioning")[1] + TITLE_HEIGHT + GAP


def load_image(g: Graph, file: str, pos, title: str) -> Node:
    return g.add("LoadImage", pos, title=title, image=file)


INPUT_NOTE = ("**Inputs:** the example images (this pack's `workflows/inputs/`) are copied into `ComfyUI/input/` "
              "when ComfyUI loads the pack; a file of the same name already there is left alone. Replace them "
              "with your own.")


def note_text(title: str, what: str, models: str, inputs: str) -> str:
    return f"## {title}\n\n{what}\n\n{models}\n\n{inputs}\n\n{INPUT_NOTE}\n\n" \
           f"Defaults are the release's: guidance {GUIDANCE:g}, {STEPS} steps, euler, cfg 1."


def models_line(*files: str) -> str:
    where = {FILL: "diffusion_models", FFT: "diffusion_models", SUBJECT_LORA: "loras", PORTRAIT_LORA: "loras",
             LOCAL_LORA: "loras", CLIP_L: "text_encoders", T5: "text_encoders", VAE: "vae",
             REDUX: "style_models", SIGCLIP: "clip_vision"}
    lines = [f"- `models/{where[f]}/{f}`" for f in files + (CLIP_L, T5, VAE)]
    return "**Models** (ComfyUI/models/...):\n" + "\n".join(lines)


def start(info: dict, note: tuple[str, str, str, str], prompt: str, note_height: float,
          **loader) -> tuple[Graph, Common]:
    """A new graph: the "Read me" note (``note_text(*note)``) top left, the shared loaders below it."""
    g = Graph(info)
    readme = g.note(note_text(*note), (X_LOAD, -40), size=(430, note_height))
    return g, common(g, prompt, y0=g.below(readme), **loader)


# -- the workflows -----------------------------------------------------------------------------


def subject_generation(info: dict) -> dict:
    g, c = start(info, ("ACE++ subject-driven generation",
                        "Generates a new image of the subject in the reference, placed as the instruction says "
                        "(FLUX.1-Fill-dev + the ACE++ subject LoRA). No edit image: the output is width x height "
                        "on the Conditioning node.",
                        models_line(FILL, SUBJECT_LORA),
                        "**Change:** the reference image (your subject, ideally on a plain background), the "
                        "instruction, and width/height."),
                 "Display this toy robot on a wooden shelf in a sunny children's room, product photo.", 460,
                 lora=SUBJECT_LORA)
    ref = load_image(g, "acepp_subject_robot.png", (X_TEXT, g.below(c.negative)), "Reference (subject)")
    finish(g, c, "subject", reference=ref)
    return g.to_ui()


def portrait_generation(info: dict) -> dict:
    g, c = start(info, ("ACE++ portrait-consistent generation",
                        "Generates a new picture of the person in the reference with the same face "
                        "(FLUX.1-Fill-dev + the ACE++ portrait LoRA, rank 64).",
                        models_line(FILL, PORTRAIT_LORA),
                        "**Change:** the reference (a clear, front-facing face), the instruction (start with "
                        "\"Maintain the facial features\"), and width/height."),
                 "Maintain the facial features. A photo of this person reading a book in a cosy cafe, warm light.",
                 460, lora=PORTRAIT_LORA)
    ref = load_image(g, "acepp_portrait_face.png", (X_TEXT, g.below(c.negative)), "Reference (face)")
    finish(g, c, "portrait", reference=ref)
    return g.to_ui()


def reference_editing(info: dict, fft: bool = False, low_vram: bool = False) -> dict:
    model, lora = (FFT, None) if fft else (FILL, SUBJECT_LORA)
    if fft:
        title = "ACE++ reference editing, FFT model"
        what = ("Pastes the reference (a logo, a garment, an object) into the masked area of the edit image "
                "with the ACE++ full fine-tune (448-channel input, no LoRA). The ACE++ Conditioning node sees "
                "the model's input width and builds the FFT canvas (edit + modify latents) by itself.")
        models = models_line(FFT).replace("- `models/text", "- (FFT: 23.8 GB; on less than 32 GB of VRAM "
                                                           "set weight_dtype fp8_e4m3fn rather than using "
                                                           "ace_plus_fft_fp8.safetensors, whose output is "
                                                           "reported red)\n- `models/text", 1)
    elif low_vram:
        title = "ACE++ reference editing, low VRAM (fp8)"
        what = ("The reference-editing workflow with the diffusion model cast to fp8 at load "
                "(weight_dtype fp8_e4m3fn: about 12 GB instead of 24 GB). "
                "GGUF: install city96/ComfyUI-GGUF, put e.g. flux1-fill-dev-Q4_K_S.gguf in models/unet, and "
                "replace ACE++ Loader by Unet Loader (GGUF) -> LoraLoaderModelOnly (the ACE++ LoRA) -> the "
                "model inputs of ACE++ Conditioning and Sampler: they accept any FLUX-Fill MODEL. A fp8 T5 "
                "(t5xxl_fp8_e4m3fn.safetensors) in DualCLIPLoader saves another 5 GB of RAM.")
        models = models_line(FILL, SUBJECT_LORA)
    else:
        title = "ACE++ reference editing (logo paste, try-on)"
        what = ("Pastes the reference (a logo, a garment, an object) into the masked area of the edit image "
                "(FLUX.1-Fill-dev + the ACE++ subject LoRA). The output has the edit image's size and every "
                "pixel outside the mask is kept.")
        models = models_line(FILL, SUBJECT_LORA)
    change = ("**Change:** the edit image and its mask (right-click the Load Image node > Open in MaskEditor, "
              "paint where the reference goes), the reference, and the instruction.")
    g, c = start(info, (title, what, models, change), "The logo is printed on the front of the white T-shirt.",
                 600 if low_vram else 520, model=model, lora=lora,
                 weight_dtype="fp8_e4m3fn" if low_vram else "default")
    edit = load_image(g, "acepp_shirt_edit.png", (X_TEXT, g.below(c.negative)), "Edit image (mask = alpha)")
    ref = load_image(g, "acepp_logo.png", (X_TEXT, g.below(edit)), "Reference (logo)")
    finish(g, c, "reference_edit_fft" if fft else ("reference_edit_fp8" if low_vram else "reference_edit"),
           edit=edit, reference=ref)
    return g.to_ui()


LOCAL_TASKS = {
    "repainting": ("Regenerates the masked area from the instruction alone (the area is blanked).",
                   "A small wooden windmill stands in the meadow."),
    "recolorizing": ("Recolours the masked area: a grayscale copy is pasted in as the guide, the instruction "
                     "gives the colours.", "The house is painted bright blue with a white roof."),
    "mosaic": ("Restores a pixelated area: the masked area is pixelated as the guide and redrawn sharp.",
               "A detailed red wooden cottage with a dark roof."),
    "canny": ("Redraws the masked area following its own edges (canny 100/200): changes the look, keeps "
              "the shapes.", "A stone cottage with a slate roof."),
    "control": ("Draws the masked area following YOUR control image (contours, depth or pose map, the edit "
                "image's size), pasted inside the mask.", "A tall grey stone tower with small windows."),
}


def local_editing(info: dict, task: str) -> dict:
    what, prompt = LOCAL_TASKS[task]
    extra = ("\n\nThe control image must have the edit image's size; only its part inside the mask is used."
             if task == "control" else "")
    g, c = start(info, (f"ACE++ local editing: {task}",
                        what + " FLUX.1-Fill-dev + the ACE++ local-editing LoRA; the output has the edit image's "
                        "size and every pixel outside the mask is kept." + extra,
                        models_line(FILL, LOCAL_LORA),
                        "**Change:** the edit image and its mask (right-click > Open in MaskEditor), the "
                        "instruction; `task` on ACE++ Conditioning picks the preset (repainting_scale -1 = the "
                        "preset's own)."), prompt, 540, lora=LOCAL_LORA)
    edit = load_image(g, "acepp_landscape_edit.png", (X_TEXT, g.below(c.negative)), "Edit image (mask = alpha)")
    control = None
    if task == "control":
        control = load_image(g, "acepp_control_contours.png", (X_TEXT, g.below(edit)), "Control image (contours)")
    finish(g, c, f"local_{task}", edit=edit, control=control, task=task)
    return g.to_ui()


def instruction_editing(info: dict) -> dict:
    g, c = start(info, ("ACE++ instruction editing (no mask)",
                        "Edits the whole image as the instruction says; no mask (the whole image is the edit "
                        "area). FLUX.1-Fill-dev + the ACE++ local-editing LoRA; the ACE++ FFT model "
                        f"({FFT}) can replace it for broad edits.",
                        models_line(FILL, LOCAL_LORA),
                        "**Change:** the image and the instruction. To protect parts of the image, use a local "
                        "editing workflow with a mask instead."),
                 "Make it a snowy winter evening, keep the buildings and the car.", 460, lora=LOCAL_LORA)
    edit = load_image(g, "acepp_street.png", (X_TEXT, g.below(c.negative)), "Image to edit")
    finish(g, c, "instruction_edit", edit=edit, mask=False)
    return g.to_ui()


def multi_reference(info: dict) -> dict:
    g, c = start(info, ("ACE++ multi-reference generation",
                        "Generates one image from three references: the `reference` input, then each ACE++ Add "
                        "Reference in the chain, placed left to right on the canvas. The token budget goes to "
                        "the output first; the references share the rest. FLUX.1-Fill-dev + the ACE++ subject "
                        "LoRA (trained on one reference: more references work, with looser fidelity).",
                        models_line(FILL, SUBJECT_LORA),
                        "**Change:** the references (add more with further Add Reference nodes), the instruction "
                        "(name each reference), width/height."),
                 "The toy robot wears the black top hat and sits in the green armchair.", 530, lora=SUBJECT_LORA)
    ref1 = load_image(g, "acepp_subject_robot.png", (X_TEXT, g.below(c.negative)), "Reference 1 (robot)")
    ref2 = load_image(g, "acepp_ref_hat.png", (X_TEXT, g.below(ref1)), "Reference 2 (hat)")
    ref3 = load_image(g, "acepp_ref_armchair.png", (X_TEXT, g.below(ref2)), "Reference 3 (armchair)")
    add2 = g.add("ACEPP_AddReference", (X_COND, below_conditioning(g)), title="Add Reference 2")
    add3 = g.add("ACEPP_AddReference", (X_COND, g.below(add2)), title="Add Reference 3")
    g.connect(ref2, "IMAGE", add2, "image")
    g.connect(add2, 0, add3, "references")
    g.connect(ref3, "IMAGE", add3, "image")
    finish(g, c, "multi_reference", reference=ref1, more=add3)
    return g.to_ui()


def redux(g: Graph, c: Common, reference: Node, strength: float, strength_type: str) -> Node:
    """FLUX Redux style conditioning from ``reference`` on the instruction, with stock nodes (as released):
    the loaders under ``reference`` (the last image of the text column), the rest under the Conditioning."""
    style = g.add("StyleModelLoader", (X_TEXT, g.below(reference)), style_model_name=REDUX)
    vision = g.add("CLIPVisionLoader", (X_TEXT, g.below(style)), clip_name=SIGCLIP)
    encode = g.add("CLIPVisionEncode", (X_COND, below_conditioning(g)), crop="center")
    apply = g.add("StyleModelApply", (X_COND, g.below(encode)), title="Redux style (on the instruction)",
                  strength=strength, strength_type=strength_type)
    g.connect(vision, 0, encode, "clip_vision")
    g.connect(reference, "IMAGE", encode, "image")
    g.connect(c.positive, 0, apply, "conditioning")
    g.connect(style, 0, apply, "style_model")
    g.connect(encode, 0, apply, "clip_vision_output")
    return apply


REDUX_WHAT = (" The reference also reaches the instruction through FLUX Redux (stock Load Style Model, Load CLIP "
              "Vision, CLIP Vision Encode, Apply Style Model), as in the released Redux graphs: `strength` on Apply "
              "Style Model sets how much of the reference's look goes into the text conditioning.")


def redux_generation(info: dict) -> dict:
    g, c = start(info, ("ACE++ reference generation + FLUX Redux",
                        "Generates a new picture of the person in the reference (FLUX.1-Fill-dev + the ACE++ "
                        "portrait LoRA)." + REDUX_WHAT + " The released graph's values: strength 0.2, attn_bias.",
                        models_line(FILL, PORTRAIT_LORA, REDUX, SIGCLIP),
                        "**Change:** the reference (a clear face), the instruction, the Redux strength, and "
                        "width/height."),
                 "Maintain the facial features. A photo of this person reading a book in a cosy cafe, warm light.",
                 570, lora=PORTRAIT_LORA)
    ref = load_image(g, "acepp_portrait_face.png", (X_TEXT, g.below(c.negative)), "Reference (face)")
    apply = redux(g, c, ref, 0.2, "attn_bias")
    finish(g, c, "redux_generation", reference=ref, positive=apply)
    return g.to_ui()


def redux_editing(info: dict) -> dict:
    g, c = start(info, ("ACE++ reference editing + FLUX Redux",
                        "Pastes the reference into the masked area of the edit image (FLUX.1-Fill-dev + the ACE++ "
                        "subject LoRA)." + REDUX_WHAT + " The released graph's values: strength 1.0, multiply.",
                        models_line(FILL, SUBJECT_LORA, REDUX, SIGCLIP),
                        "**Change:** the edit image and its mask (right-click the Load Image node > Open in "
                        "MaskEditor), the reference, the instruction and the Redux strength."),
                 "The logo is printed on the front of the white T-shirt.", 570, lora=SUBJECT_LORA)
    edit = load_image(g, "acepp_shirt_edit.png", (X_TEXT, g.below(c.negative)), "Edit image (mask = alpha)")
    ref = load_image(g, "acepp_logo.png", (X_TEXT, g.below(edit)), "Reference (logo)")
    apply = redux(g, c, ref, 1.0, "multiply")
    finish(g, c, "redux_edit", edit=edit, reference=ref, positive=apply)
    return g.to_ui()


WORKFLOWS = {
    "ace_subject_generation": subject_generation,
    "ace_portrait_generation": portrait_generation,
    "ace_reference_editing": reference_editing,
    **{f"ace_local_{task}": (lambda info, task=task: local_editing(info, task)) for task in LOCAL_TASKS},
    "ace_instruction_editing": instruction_editing,
    "ace_multi_reference_generation": multi_reference,
    "ace_reference_editing_fft": lambda info: reference_editing(info, fft=True),
    "ace_reference_editing_low_vram": lambda info: reference_editing(info, low_vram=True),
    "ace_redux_reference_generation": redux_generation,
    "ace_redux_reference_editing": redux_editing,
}


def make_all(object_info: dict) -> dict[str, dict]:
    """Every shipped workflow by file stem, as the UI-format dict written to ``<stem>.json``."""
    made = {}
    for name, make in WORKFLOWS.items():
        workflow = make(object_info)
        workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"aceplusplus/workflows/{name}"))  # stable across builds
        made[name] = workflow
    return made


def build(object_info: dict, out: Path = HERE) -> list[Path]:
    paths = []
    for name, workflow in make_all(object_info).items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=1) + "\n")
        paths.append(path)
    return paths


def fetch_object_info() -> dict:
    from aceplus_host import ComfyServer, cache_dir

    with ComfyServer(cache_dir() / "workflow_builder") as server:
        return server.object_info()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--object-info", type=Path, help="a saved /object_info JSON instead of starting ComfyUI")
    args = parser.parse_args()
    info = json.loads(args.object_info.read_text()) if args.object_info else fetch_object_info()
    for path in build(info):
        print(path.name)  # noqa: T201 (a command-line report)


if __name__ == "__main__":
    main()
