"""End to end through a headless ComfyUI (POST /prompt of API-format graphs) with the tiny fixtures.

Images go in as PNG files through ComfyUI's LoadImage (the mask is the alpha channel: alpha 0 =
masked) and come out as the PNGs SaveImage wrote, so "unchanged outside the mask" is checked on the
8-bit values a user actually gets. Sampling runs 1 step: these tests check the plumbing, sizes and
exactness, not picture quality.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from aceplus_host import ComfyError

EDIT_HW = (64, 80)
MASK_BOX = (slice(16, 48), slice(24, 64))  # rows, cols of the masked rectangle
_counter = itertools.count()


# ---- inputs -------------------------------------------------------------------------------------
def procedural(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colourful uint8 image (H, W, 3) with some noise, made here (no files needed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / (5 + seed)), np.cos(y / 7.0), np.sin((x + y) / 11.0)], axis=-1) * 0.4 + 0.5
    return np.clip(base * 255 + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)


def save_png(server, name: str, rgb: np.ndarray, mask: np.ndarray | None = None) -> str:
    """Write into the server's input folder; ``mask`` (H, W bool, True = edit) becomes alpha 0."""
    if mask is None:
        img = Image.fromarray(rgb, "RGB")
    else:
        alpha = np.where(mask, 0, 255).astype(np.uint8)
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    img.save(server.base_dir / "input" / name)
    return name


def edit_mask(hw=EDIT_HW) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[MASK_BOX] = True
    return m


@pytest.fixture(scope="module")
def inputs(comfy_server):
    edit = procedural(*EDIT_HW, seed=1)
    names = {
        "edit": save_png(comfy_server, "acepp_edit.png", edit, edit_mask()),
        "edit_full": save_png(comfy_server, "acepp_edit_full.png", edit, np.ones(EDIT_HW, dtype=bool)),
        "edit_nomask": save_png(comfy_server, "acepp_edit_nomask.png", edit),
        "ref1": save_png(comfy_server, "acepp_ref1.png", procedural(48, 48, seed=2)),
        "ref2": save_png(comfy_server, "acepp_ref2.png", procedural(72, 40, seed=3)),
        "ref3": save_png(comfy_server, "acepp_ref3.png", procedural(40, 96, seed=4)),
        "small_mask": save_png(comfy_server, "acepp_small_mask.png", procedural(48, 48, seed=5)),
    }
    return edit, names


# ---- graphs -------------------------------------------------------------------------------------
COND_DEFAULTS = dict(task="repainting", repainting_scale=-1.0, reference_fit="pad", budget_policy="target_first",
                     max_tokens=8192, target_tokens=4096, width=1024, height=1024, guidance=50.0,
                     aspect_mode="crop", hold_references=True, release_parity=False)
SAMPLER_DEFAULTS = dict(seed=3, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", canvas_shift=True,
                        composite=True, feather=0)


def loader(model="tiny_fill.safetensors", **loras):
    return {"class_type": "ACEPP_Loader", "inputs": {"model_name": model, "weight_dtype": "default", **loras}}


def base_graph(model_node=None) -> dict:
    """Text stand-ins, VAE and model: node ids stay the same across tests so ComfyUI's cache reuses them."""
    return {
        "txt_pos": {"class_type": "ACEPPTest_RandomConditioning", "inputs": {"text": "the cat wears a hat", "tokens": 8}},
        "txt_neg": {"class_type": "ACEPPTest_RandomConditioning", "inputs": {"text": "", "tokens": 8}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_vae.safetensors"}},
        "model": model_node or loader(),
    }


def add_load(g: dict, node_id: str, image: str) -> list:
    g[node_id] = {"class_type": "LoadImage", "inputs": {"image": image}}
    return [node_id, 0]


def add_ace(g: dict, tag: str, *, model="model", edit=None, mask=None, reference=None, more=None, control=None,
            cond=None, sampler=None, save=True) -> str:
    """Conditioning + Sampler (+ SaveImage of the final image); returns the SaveImage node id."""
    inputs = {"positive": ["txt_pos", 0], "negative": ["txt_neg", 0], "vae": ["vae", 0], "model": [model, 0],
              **COND_DEFAULTS, **(cond or {})}
    for key, link in (("edit_image", edit), ("mask", mask), ("reference", reference), ("more_references", more),
                      ("control_image", control)):
        if link is not None:
            inputs[key] = link
    g[f"cond_{tag}"] = {"class_type": "ACEPP_Conditioning", "inputs": inputs}
    c = f"cond_{tag}"
    g[f"samp_{tag}"] = {"class_type": "ACEPP_Sampler", "inputs": {
        "model": [model, 0], "positive": [c, 0], "negative": [c, 1], "latent": [c, 2], "layout": [c, 3],
        "vae": ["vae", 0], **SAMPLER_DEFAULTS, **(sampler or {})}}
    if save:
        g[f"save_{tag}"] = {"class_type": "SaveImage", "inputs": {"images": [f"samp_{tag}", 0],
                                                                   "filename_prefix": f"acepp_test_{tag}_{next(_counter)}"}}
    return f"save_{tag}"


def run_images(server, g: dict) -> dict[str, np.ndarray]:
    entry = server.run(g, timeout=300)
    out = {}
    for node_id in g:
        if g[node_id]["class_type"] == "SaveImage":
            pngs = server.output_images(entry, node_id)
            out[node_id] = np.stack([np.array(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])
    return out


def assert_edit_result(result: np.ndarray, edit: np.ndarray, mask: np.ndarray) -> None:
    assert result.shape[1:] == edit.shape, f"output {result.shape[1:]} != input {edit.shape}"
    for img in result:
        assert np.array_equal(img[~mask], edit[~mask]), "pixels outside the mask changed"
        assert not np.array_equal(img[mask], edit[mask]), "nothing was generated inside the mask"


# ---- the tasks ----------------------------------------------------------------------------------
def test_nodes_registered_with_the_server(comfy_server):
    info = comfy_server.object_info()
    for node_id in ("ACEPP_Loader", "ACEPP_Conditioning", "ACEPP_Sampler", "ACEPP_CropBack", "ACEPP_AddReference"):
        assert node_id in info and info[node_id]["category"] == "ACE++"
    assert "ACEPlusLoader" not in info


def test_reference_generation_has_the_requested_size(comfy_server, inputs):
    _, names = inputs
    g = base_graph()
    save = add_ace(g, "refgen", reference=add_load(g, "ref1", names["ref1"]), cond={"width": 80, "height": 48})
    out = run_images(comfy_server, g)[save]
    assert out.shape == (1, 48, 80, 3)
    assert out.std() > 0


def test_reference_editing_keeps_size_and_unmasked_pixels(comfy_server, inputs):
    edit, names = inputs
    g = base_graph()
    e = add_load(g, "edit", names["edit"])
    save = add_ace(g, "refedit", edit=e, mask=["edit", 1], reference=add_load(g, "ref1", names["ref1"]))
    assert_edit_result(run_images(comfy_server, g)[save], edit, edit_mask())


def test_local_editing_with_each_preset(comfy_server, inputs):
    edit, names = inputs
    g = base_graph()
    e = add_load(g, "edit", names["edit"])
    control = add_load(g, "ref2", names["ref2"])
    saves = {}
    spec = comfy_server.object_info("ACEPP_Conditioning")["ACEPP_Conditioning"]["input"]["required"]["task"]
    presets = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 combos: ["COMBO", {"options": [...]}]
    assert {"repainting", "no_preprocess", "recolorizing", "mosaic", "canny", "control"} <= set(presets)
    for preset in presets:
        saves[preset] = add_ace(g, f"local_{preset}", edit=e, mask=["edit", 1], cond={"task": preset},
                                control=control if preset == "control" else None)
    out = run_images(comfy_server, g)
    for preset, save in saves.items():
        assert_edit_result(out[save], edit, edit_mask())
    inside = {p: out[s][0][edit_mask()].tobytes() for p, s in saves.items()}
    assert len(set(inside.values())) == len(inside), "two presets gave the same edit"


def test_three_references(comfy_server, inputs):
    edit, names = inputs
    g = base_graph()
    e = add_load(g, "edit", names["edit"])
    g["add2"] = {"class_type": "ACEPP_AddReference", "inputs": {"image": add_load(g, "ref2", names["ref2"])}}
    g["add3"] = {"class_type": "ACEPP_AddReference", "inputs": {"image": add_load(g, "ref3", names["ref3"]),
                                                                "references": ["add2", 0]}}
    save = add_ace(g, "threeref", edit=e, mask=["edit", 1], reference=add_load(g, "ref1", names["ref1"]),
                   more=["add3", 0])
    g["save_canvas"] = {"class_type": "SaveImage", "inputs": {"images": ["samp_threeref", 1],
                                                              "filename_prefix": "acepp_test_canvas"}}
    out = run_images(comfy_server, g)
    assert_edit_result(out[save], edit, edit_mask())
    canvas = out["save_canvas"]
    assert canvas.shape[1] % 16 == 0 and canvas.shape[2] >= EDIT_HW[1] + 3 * 16  # three reference cells + target


def test_fft_model(comfy_server, inputs):
    edit, names = inputs
    g = base_graph()
    g["model_fft"] = loader("tiny_fft.safetensors")
    save = add_ace(g, "fft", model="model_fft", edit=add_load(g, "edit", names["edit"]), mask=["edit", 1],
                   reference=add_load(g, "ref1", names["ref1"]))
    assert_edit_result(run_images(comfy_server, g)[save], edit, edit_mask())


def test_lora_strength_one_changes_the_output_and_zero_equals_no_lora(comfy_server, inputs):
    edit, names = inputs
    g = base_graph()
    g["model_l0"] = loader(lora_1="tiny_lora_r16.safetensors", strength_1=0.0)
    g["model_l1"] = loader(lora_1="tiny_lora_r16.safetensors", strength_1=1.0)
    e, r = add_load(g, "edit", names["edit"]), add_load(g, "ref1", names["ref1"])
    saves = {tag: add_ace(g, f"lora_{tag}", model=model, edit=e, mask=["edit", 1], reference=r)
             for tag, model in (("none", "model"), ("zero", "model_l0"), ("one", "model_l1"))}
    images = run_images(comfy_server, g)
    out = {tag: images[save] for tag, save in saves.items()}
    assert np.array_equal(out["none"], out["zero"])
    diff = np.abs(out["one"].astype(int) - out["zero"].astype(int))[0][edit_mask()]
    assert diff.mean() > 0.5, f"LoRA at strength 1 barely changed the output (mean |diff| {diff.mean():.3f})"
    for img in out.values():
        assert_edit_result(img, edit, edit_mask())


def test_zero_area_mask_edits_everything(comfy_server, inputs):
    edit, names = inputs
    g = base_graph()
    full = add_ace(g, "full", edit=add_load(g, "edit_full", names["edit_full"]), mask=["edit_full", 1])
    zero = add_ace(g, "zero", edit=add_load(g, "edit_nomask", names["edit_nomask"]), mask=["edit_nomask", 1])
    out = run_images(comfy_server, g)
    assert out[zero].shape[1:] == edit.shape
    assert np.array_equal(out[zero], out[full])  # an empty mask means the whole image
    assert (out[zero][0] != edit).any(axis=-1).mean() > 0.5


# ---- bad input ------------------------------------------------------------------------------------
def cheap_good_graph(names) -> dict:
    """Loader + conditioning only (no sampling): proves the server still runs our nodes."""
    g = base_graph()
    g["cond_ok"] = {"class_type": "ACEPP_Conditioning", "inputs": {
        "positive": ["txt_pos", 0], "negative": ["txt_neg", 0], "vae": ["vae", 0], "model": ["model", 0],
        "edit_image": add_load(g, "edit", names["edit"]), "mask": ["edit", 1], **COND_DEFAULTS}}
    g["save_ok"] = {"class_type": "SaveImage", "inputs": {"images": ["cond_ok", 4], "filename_prefix": "acepp_ok"}}
    return g


def expect_error(server, g: dict) -> str:
    with pytest.raises(ComfyError) as err:
        server.run(g, timeout=300)
    return str(err.value) + repr(err.value.details)


@pytest.mark.parametrize("case", ["flux_dev", "mask_mismatch", "truncated_safetensors", "not_an_image"])
def test_bad_input_is_named_and_the_server_keeps_serving(comfy_server, inputs, fixture_paths, case):
    edit, names = inputs
    cleanup = []
    g = base_graph()
    if case == "flux_dev":
        g["model"] = loader("tiny_dev.safetensors")
        add_ace(g, "bad", edit=add_load(g, "edit", names["edit"]), mask=["edit", 1])
        expected = ["flux1-fill-dev.safetensors", "tiny_dev.safetensors"]
    elif case == "mask_mismatch":
        g["small"] = {"class_type": "LoadImageMask", "inputs": {"image": names["small_mask"], "channel": "red"}}
        add_ace(g, "bad", edit=add_load(g, "edit", names["edit"]), mask=["small", 0])
        expected = ["mask is 48x48", "edit_image is 64x80x3 (H x W x C)"]
    elif case == "truncated_safetensors":
        bad = fixture_paths["models"] / "diffusion_models" / "bad_truncated_test.safetensors"
        data = fixture_paths["tiny_fill"].read_bytes()[:1_000_000]
        bad.write_bytes(data)
        cleanup.append(bad)
        g["model"] = loader(bad.name)
        add_ace(g, "bad", edit=add_load(g, "edit", names["edit"]), mask=["edit", 1])
        expected = ["bad_truncated_test.safetensors", "corrupt"]
    else:
        (comfy_server.base_dir / "input" / "bad_not_an_image.png").write_text("<html>404 not found</html>")
        cleanup.append(comfy_server.base_dir / "input" / "bad_not_an_image.png")
        add_ace(g, "bad", edit=add_load(g, "edit", "bad_not_an_image.png"), mask=["edit", 1])
        expected = ["bad_not_an_image.png"]
    try:
        message = expect_error(comfy_server, g)
    finally:
        for path in cleanup:
            path.unlink(missing_ok=True)
    for text in expected:
        assert text in message, f"{text!r} not in the error: {message[:800]}"
    out = run_images(comfy_server, cheap_good_graph(names))["save_ok"]
    assert out.shape[1] == 64 and out.shape[2] >= EDIT_HW[1]
