"""Equivalents of the nine released ACE++ workflows (``ali-vilab/ACE_plus``, ``workflow_example/``), built from a spec.

The released repository carries no licence, so its files are not vendored: these graphs are
rebuilt here with the same node types, widget values, links (processor outputs wired into the
ImageCrop, previews, Redux chain), group and wiring quirks. Prompts and image file names are our
own (the tests generate the images); every other widget value is the released one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Sockets and outputs of the node types the released graphs use, as their UI JSON records them.
SOCKETS = {
    "VAELoader": ([], [("VAE", "VAE")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "DifferentialDiffusion": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "LoraLoaderModelOnly": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "ACEPlusLoader": ([], [("MODEL", "MODEL")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "ImageCrop": ([("image", "IMAGE"), ("width", "INT*"), ("height", "INT*"), ("x", "INT*")], [("IMAGE", "IMAGE")]),
    "PreviewImage": ([("images", "IMAGE")], []),
    "MaskPreview+": ([("mask", "MASK")], []),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "Note": ([], []),
    "ACEPlusLoraProcessor": ([("reference_image", "IMAGE"), ("edit_image", "IMAGE"), ("edit_mask", "MASK")],
                             [("IMAGE", "IMAGE"), ("MASK", "MASK"), ("OUT_H", "INT"), ("OUT_W", "INT"),
                              ("SLICE_W", "INT")]),
    "ACEPlusFFTProcessor": ([("reference_image", "IMAGE"), ("edit_image", "IMAGE"), ("edit_mask", "MASK")],
                            [("UC_IMAGE", "IMAGE"), ("C_IMAGE", "IMAGE"), ("MASK", "MASK"), ("OUT_H", "INT"),
                             ("OUT_W", "INT"), ("SLICE_W", "INT")]),
    "ACEPlusLoraConditioning": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                                 ("pixels", "IMAGE"), ("mask", "MASK")],
                                [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")]),
    "ACEPlusConditioning": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                             ("ucpixels", "IMAGE"), ("cpixels", "IMAGE"), ("mask", "MASK")],
                            [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")]),
    "StyleModelLoader": ([], [("STYLE_MODEL", "STYLE_MODEL")]),
    "CLIPVisionLoader": ([], [("CLIP_VISION", "CLIP_VISION")]),
    "CLIPVisionEncode": ([("clip_vision", "CLIP_VISION"), ("image", "IMAGE")],
                         [("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")]),
    "StyleModelApply": ([("conditioning", "CONDITIONING"), ("style_model", "STYLE_MODEL"),
                         ("clip_vision_output", "CLIP_VISION_OUTPUT")], [("CONDITIONING", "CONDITIONING")]),
}

EDIT_FILE, REF_FILE, FACE_FILE = "released_edit.png", "released_reference.png", "released_face.png"
FILL, FFT = "flux1-fill-dev.safetensors", "ace_plus_fft.safetensors"
RELEASED_GROUP = "ACE_Plus FFT Workflow"  # every released graph carries one group of this title


@dataclass
class Spec:
    name: str
    kind: str  # "lora" | "fft"
    processor: list  # the processor's widgets_values, as released
    seed: tuple[int, str]
    prompt: str
    lora: str | None = None
    reference: str | None = None
    edit: bool = False
    redux: tuple[float, str] | None = None  # StyleModelApply (strength, strength_type)
    preview_edit: bool = False  # the edit LoadImage also feeds a PreviewImage
    extra: dict = field(default_factory=dict)


SPECS = [
    Spec("ACE_Plus_FFT_workflow_controlpreprocess", "fft", [True, 1024, 1024, "contour_repainting", 0.8, 3072],
         (38616314728576, "randomize"), "{image} a robot with a smooth white shell.", edit=True),
    Spec("ACE_Plus_FFT_workflow_no_preprocess", "fft", [True, 1024, 1024, "no_preprocess", 0.8, 3072],
         (10000002, "fixed"), "{image} a sharp photo of a tiger cub on a rock.", edit=True),
    Spec("ACE_Plus_FFT_workflow_reference_generation", "fft", [True, 1024, 1024, "repainting", 0.8, 3072],
         (3999647, "fixed"), "Maintain the facial features, a woman in a police uniform, smiling.",
         reference=FACE_FILE),
    Spec("ACE_Plus_FFT_workflow_referenceediting_generation", "fft", [True, 1024, 1024, "repainting", 0.8, 3072],
         (3999647, "fixed"), "Maintain the facial features, the woman wears a red scarf.", reference=FACE_FILE,
         edit=True),
    Spec("ACE_Plus_LoRA_workflow_localcontrol_generation", "lora", [True, 1024, 1024, "contour_repainting", 4096],
         (709677106466456, "randomize"), "a robot with a smooth white shell.", lora="comfyui_local_lora16.safetensors",
         edit=True, preview_edit=True),
    Spec("ACE_Plus_LoRA_workflow_redux_reference_editing", "lora", [True, 1024, 1024, "repainting", 3072],
         (1096118265821203, "randomize"), "The logo is printed on the mug.", lora="comfyui_subject_lora16.safetensors",
         reference=REF_FILE, edit=True, redux=(1.0, "multiply"), preview_edit=True),
    Spec("ACE_Plus_LoRA_workflow_redux_reference_generation", "lora", [True, 1024, 1024, "repainting", 3072],
         (676826848980252, "randomize"), "Maintain the facial features. A woman reading in a cafe.",
         lora="comfyui_portrait_lora64.safetensors", reference=FACE_FILE, redux=(0.2, "attn_bias")),
    Spec("ACE_Plus_LoRA_workflow_reference_editing", "lora", [True, 1024, 1024, "repainting", 3072],
         (302179725261768, "randomize"), "The logo is printed on the mug.", lora="comfyui_subject_lora16.safetensors",
         reference=REF_FILE, edit=True, preview_edit=True),
    Spec("ACE_Plus_LoRA_workflow_reference_generation", "lora", [True, 1024, 1024, "repainting", 3072],
         (41446931693062, "randomize"), "Maintain the facial features, a woman in a police uniform.",
         lora="comfyui_face_lora64.safetensors", reference=FACE_FILE),  # the released graph names this file
]


class _Builder:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.next_id = 286  # the released graphs number from the 280s up

    def add(self, kind: str, widgets: list, pos, title: str | None = None) -> dict:
        inputs, outputs = SOCKETS[kind]
        node = {"id": self.next_id, "type": kind, "pos": list(pos), "size": [315, 120], "flags": {},
                "order": len(self.nodes), "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs if not t.endswith("*")],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": kind}, "widgets_values": list(widgets)}
        if title:
            node["title"] = title
        self.next_id += 1
        self.nodes.append(node)
        return node

    def link(self, src: dict, slot: int, dst: dict, name: str) -> None:
        lid = 438 + len(self.links)
        ltype = SOCKETS[src["type"]][1][slot][1]
        inp = next((i for i in dst["inputs"] if i["name"] == name), None)
        if inp is None:  # a widget converted to an input (ImageCrop's width/height/x)
            inp = {"name": name, "type": ltype, "link": None, "widget": {"name": name}}
            dst["inputs"].append(inp)
        inp["link"] = lid
        src["outputs"][slot]["links"].append(lid)
        self.links.append([lid, src["id"], slot, dst["id"], dst["inputs"].index(inp), ltype])


def build(spec: Spec) -> dict:
    """The UI-format workflow of ``spec``, shaped like the released file."""
    b = _Builder()
    fft = spec.kind == "fft"
    vae = b.add("VAELoader", ["ae.safetensors"], (-4800, 1500))
    clip = b.add("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux"], (-4800, 1620))
    pos = b.add("CLIPTextEncode", [spec.prompt], (-4400, 1500))
    neg = b.add("CLIPTextEncode", [""], (-4400, 1750))
    guide = b.add("FluxGuidance", [50], (-4000, 1500))
    b.link(clip, 0, pos, "clip")
    b.link(clip, 0, neg, "clip")
    b.link(pos, 0, guide, "conditioning")
    if fft:
        model = b.add("ACEPlusLoader", [FFT, "default"], (-4800, 1800))
        note = "ACE_Plus model download: the ace_plus_fft file of ali-vilab/ACE_Plus"
    else:
        unet = b.add("UNETLoader", [FILL, "fp8_e4m3fn"], (-4800, 1800))
        model = b.add("LoraLoaderModelOnly", [spec.lora, 1], (-4800, 1950))
        b.link(unet, 0, model, "model")
        note = "ACE_Plus model download: the LoRA files of ali-vilab/ACE_Plus"
    b.add("Note", [note], (-4800, 2100))
    diff = b.add("DifferentialDiffusion", [], (-4000, 1800))
    b.link(model, 0, diff, "model")

    ref = b.add("LoadImage", [spec.reference, "image"], (-4400, 1900)) if spec.reference else None
    edit = b.add("LoadImage", [EDIT_FILE, "image"], (-4400, 2250), title="Edit Image") if spec.edit else None
    proc = b.add("ACEPlusFFTProcessor" if fft else "ACEPlusLoraProcessor", spec.processor, (-3600, 1500))
    if ref:
        b.link(ref, 0, proc, "reference_image")
    if edit:
        b.link(edit, 0, proc, "edit_image")
        b.link(edit, 1, proc, "edit_mask")
        if spec.preview_edit:
            b.link(edit, 0, b.add("PreviewImage", [], (-4000, 2250)), "images")

    positive = guide
    if spec.redux:
        style = b.add("StyleModelLoader", ["flux1-redux-dev.safetensors"], (-4400, 2600))
        vision = b.add("CLIPVisionLoader", ["sigclip_vision_patch14_384.safetensors"], (-4400, 2700))
        encode = b.add("CLIPVisionEncode", ["center"], (-4000, 2650))
        apply = b.add("StyleModelApply", list(spec.redux), (-3700, 2600))
        b.link(vision, 0, encode, "clip_vision")
        b.link(ref, 0, encode, "image")
        b.link(guide, 0, apply, "conditioning")
        b.link(style, 0, apply, "style_model")
        b.link(encode, 0, apply, "clip_vision_output")
        positive = apply

    cond = b.add("ACEPlusConditioning" if fft else "ACEPlusLoraConditioning", [False], (-3200, 1500))
    b.link(positive, 0, cond, "positive")
    b.link(neg, 0, cond, "negative")
    b.link(vae, 0, cond, "vae")
    if fft:
        b.link(proc, 0, cond, "ucpixels")
        b.link(proc, 1, cond, "cpixels")
        b.link(proc, 2, cond, "mask")
        b.link(proc, 0, b.add("PreviewImage", [], (-3600, 1900)), "images")
        b.link(proc, 1, b.add("PreviewImage", [], (-3600, 2200)), "images")
        b.link(proc, 2, b.add("MaskPreview+", [], (-3600, 2500)), "mask")
    else:
        b.link(proc, 0, cond, "pixels")
        b.link(proc, 1, cond, "mask")
        b.link(proc, 0, b.add("PreviewImage", [], (-3600, 1900)), "images")
        b.link(proc, 1, b.add("MaskPreview+", [], (-3600, 2200)), "mask")

    ks = b.add("KSampler", [spec.seed[0], spec.seed[1], 28, 1, "euler", "normal", 1], (-2800, 1500))
    b.link(diff, 0, ks, "model")
    b.link(cond, 0, ks, "positive")
    b.link(cond, 1, ks, "negative")
    b.link(cond, 2, ks, "latent_image")
    decode = b.add("VAEDecode", [], (-2450, 1500))
    b.link(ks, 0, decode, "samples")
    b.link(vae, 0, decode, "vae")
    crop = b.add("ImageCrop", [512, 512, 0, 0], (-2450, 1650))
    b.link(decode, 0, crop, "image")
    first = 3 if fft else 2  # OUT_H, OUT_W, SLICE_W
    b.link(proc, first + 1, crop, "width")
    b.link(proc, first, crop, "height")
    b.link(proc, first + 2, crop, "x")
    b.link(crop, 0, b.add("PreviewImage", [], (-2100, 1500)), "images")
    return {"last_node_id": b.next_id - 1, "last_link_id": 437 + len(b.links), "nodes": b.nodes, "links": b.links,
            "groups": [{"title": RELEASED_GROUP, "bounding": [-4893.5, 1443.9, 2592.6, 1121.9], "color": "#3f789e",
                        "font_size": 24, "flags": {}}],
            "config": {}, "extra": {"ds": {"scale": 0.5, "offset": [4900, -1400]}}, "version": 0.4}


def released_workflows() -> dict[str, dict]:
    return {spec.name: build(spec) for spec in SPECS}


SPEC_BY_NAME = {spec.name: spec for spec in SPECS}
