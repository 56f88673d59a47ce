"""The nodes in-process, on the real ComfyUI host with the tiny random-weight fixtures.

Covers the id scheme and schema hygiene, the loader's checks, what the conditioning attaches, the
sampler's schedule, and the equivalence of the tensor reaching ``img_in`` with aceplus_core's
LCU++ assembly (Fill 384 and FFT 448).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
RELEASED_IDS = {"ACEPlusLoader", "ACEPlusConditioning", "ACEPlusFFTProcessor", "ACEPlusLoraProcessor",
                "ACEPlusLoraConditioning"}


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def core(pack):
    return pack.aceplus_core


@pytest.fixture(scope="module")
def fill_model(pack, fixture_paths):
    model, kind = pack.nodes.loader.load_model(str(fixture_paths["tiny_fill"]), "default")
    assert kind == "fill"
    return model


@pytest.fixture(scope="module")
def fft_load(pack, fixture_paths):
    """The FFT model, and ComfyUI's model-config list before and after loading it."""
    import comfy.supported_models

    before = list(comfy.supported_models.models)
    model, kind = pack.nodes.loader.load_model(str(fixture_paths["tiny_fft"]), "default")
    assert kind == "fft"
    return model, before, list(comfy.supported_models.models)


@pytest.fixture(scope="module")
def fft_model(fft_load):
    return fft_load[0]


@pytest.fixture(scope="module")
def vae(fixture_paths, comfy_root):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(fixture_paths["tiny_vae"])))


def text_cond(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 6, 64, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]


def edit_inputs(batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 64, 96, 3, generator=g)  # ComfyUI IMAGE, B H W C
    mask = torch.zeros(1, 64, 96)
    mask[:, 16:48, 24:72] = 1.0
    ref = torch.rand(1, 80, 56, 3, generator=g)
    return image, mask, ref


def run_conditioning(pack, model, vae, *, image=None, mask=None, reference=None, more=None, task="repainting",
                     parity=False, hold=True, width=1024, height=1024, max_tokens=8192, **optional):
    node = pack.nodes.conditioning.Conditioning
    return node.execute(text_cond(0), text_cond(1), vae, model, task, -1.0, "pad", "target_first", max_tokens, 4096,
                        width, height, 50.0, "crop", hold, parity, edit_image=image, mask=mask, reference=reference,
                        more_references=more, **optional).args


# ---- ids and schema -----------------------------------------------------------------------------
def test_node_ids_are_namespaced_and_never_collide_with_the_release(pack):
    nodes = pack.nodes.NODES
    ids = [n.GET_SCHEMA().node_id for n in nodes]
    assert len(set(ids)) == len(ids)
    assert not RELEASED_IDS & set(ids)
    for node, node_id in zip(nodes, ids):
        schema = node.GET_SCHEMA()
        assert node_id.startswith(pack.nodes.NODE_ID_PREFIX), node_id
        assert schema.display_name.startswith("ACE++ ")
        assert schema.category == "ACE++"
        assert schema.description
        missing = [i.id for i in schema.inputs if not i.tooltip]
        assert not missing, f"{node_id}: inputs without tooltip {missing}"
    assert {"ACEPP_Loader", "ACEPP_Conditioning", "ACEPP_Sampler", "ACEPP_CropBack", "ACEPP_AddReference"} <= set(ids)


def test_extension_registers_every_node_class_of_the_pack(pack, tmp_path, monkeypatch):
    import asyncio
    import inspect

    import folder_paths
    from comfy_api.v0_0_2 import io

    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path))  # the entrypoint copies example inputs
    ext = asyncio.run(pack.nodes.comfy_entrypoint())
    registered = set(asyncio.run(ext.get_node_list()))
    defined = set()
    for mod in (pack.nodes.loader, pack.nodes.conditioning, pack.nodes.sampler, pack.nodes.helpers):
        defined |= {c for _, c in inspect.getmembers(mod, inspect.isclass)
                    if issubclass(c, io.ComfyNode) and c.__module__ == mod.__name__}
    assert defined == registered


# ---- example inputs -------------------------------------------------------------------------------
EXAMPLES = sorted(p.name for p in (ROOT / "workflows" / "inputs").glob("*.png"))


def test_pack_load_copies_the_example_inputs_into_comfyuis_input_folder(pack, tmp_path, monkeypatch, caplog):
    import asyncio

    import folder_paths

    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    with caplog.at_level(logging.INFO):
        asyncio.run(pack.nodes.comfy_entrypoint())
    assert EXAMPLES and sorted(p.name for p in (tmp_path / "input").iterdir()) == EXAMPLES
    for name in EXAMPLES:
        assert (tmp_path / "input" / name).read_bytes() == (ROOT / "workflows" / "inputs" / name).read_bytes()
    assert f"copied {len(EXAMPLES)} example input(s)" in caplog.text and str(tmp_path / "input") in caplog.text


def test_example_inputs_never_overwrite_a_users_file_and_copy_only_what_is_missing(pack, tmp_path):
    install = pack.nodes.example_inputs.install_example_inputs
    mine = tmp_path / EXAMPLES[0]
    mine.write_bytes(b"the user's own picture")
    copied = install(tmp_path)
    assert sorted(p.name for p in copied) == EXAMPLES[1:]
    assert mine.read_bytes() == b"the user's own picture"
    (tmp_path / EXAMPLES[1]).unlink()
    assert [p.name for p in install(tmp_path)] == [EXAMPLES[1]]
    assert install(tmp_path) == []


def test_example_inputs_fail_soft_with_a_warning_when_the_folder_cannot_be_written(pack, tmp_path, caplog):
    blocked = tmp_path / "input"
    blocked.write_text("a file where the input folder should be")
    with caplog.at_level(logging.WARNING):
        assert pack.nodes.example_inputs.install_example_inputs(blocked) == []
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert str(blocked) in message and "copy" in message and "workflows/inputs" in message


# ---- loader ---------------------------------------------------------------------------------------
def test_loader_refuses_flux_dev_from_the_header_before_loading(pack, fixture_paths, monkeypatch):
    loader = pack.nodes.loader

    def must_not_load(*a, **k):
        raise AssertionError("weights were loaded before the header check")

    monkeypatch.setattr(loader.compat, "load_diffusion_model", must_not_load)
    with pytest.raises(ValueError, match=r"64 features.*flux1-fill-dev\.safetensors.*ace_plus_fft\.safetensors"):
        loader.load_model(str(fixture_paths["tiny_dev"]), "default")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_img_in", "not_safetensors"])
def test_loader_names_the_file_of_a_bad_model(pack, tmp_path, damage):
    path = tmp_path / f"bad_{damage}.safetensors"
    save_file({"img_in.weight": torch.zeros(8, 384), "other": torch.zeros(4096)}, str(path))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
        match = r"bad_truncated\.safetensors.*corrupt or incompletely downloaded"
    elif damage == "garbage":
        path.write_bytes(b"this is an HTML error page, not a model" * 10)
        match = r"bad_garbage\.safetensors.*corrupt"
    elif damage == "no_img_in":
        save_file({"weight": torch.zeros(2)}, str(path))
        match = r"bad_no_img_in\.safetensors.*no img_in\.weight"
    else:
        path = path.with_suffix(".ckpt")
        path.write_bytes(data)
        match = r"bad_not_safetensors\.ckpt is not a \.safetensors file"
    with pytest.raises(ValueError, match=match):
        pack.nodes.loader.load_model(str(path), "default")


def test_loader_leaves_comfyuis_model_list_alone_and_warns_for_lora_on_fft(pack, fixture_paths, fft_load, caplog):
    import comfy.supported_models

    fft_model, before, after = fft_load
    assert after == before
    assert fft_model.model.diffusion_model.img_in.weight.shape == (3072, 448)
    with caplog.at_level(logging.WARNING):
        patched = pack.nodes.loader.apply_loras(
            fft_model, "fft", [("tiny_lora_r16", str(fixture_paths["tiny_lora_r16"]), 1.0)])
    assert comfy.supported_models.models == before
    assert any("FFT" in r.getMessage() for r in caplog.records)
    assert patched is not fft_model and len(patched.patches) > 0 and len(fft_model.patches) == 0


def test_lora_strength_zero_is_skipped_and_foreign_lora_is_refused(pack, fill_model, tmp_path):
    apply = pack.nodes.loader.apply_loras
    assert apply(fill_model, "fill", [("x", "/nonexistent.safetensors", 0.0)]) is fill_model
    foreign = tmp_path / "sdxl_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(320, 4)}, str(foreign))
    with pytest.raises(ValueError, match=r"sdxl_lora.*matched none of the model's weights"):
        apply(fill_model, "fill", [("sdxl_lora", str(foreign), 1.0)])


def test_weight_dtype_options_map_to_model_options(pack):
    opts = pack.nodes.compat.model_options_for
    assert opts("default") == {}
    assert opts("fp8_e4m3fn") == {"dtype": torch.float8_e4m3fn}
    assert opts("fp8_e4m3fn_fast") == {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    assert opts("fp8_e5m2") == {"dtype": torch.float8_e5m2}
    with pytest.raises(ValueError, match="fp16"):
        opts("fp16")


# ---- conditioning -----------------------------------------------------------------------------------
def test_fill_conditioning_attaches_the_encoded_canvas_to_copies(pack, core, fill_model, vae):
    image, mask, ref = edit_inputs()
    pos_in, neg_in = text_cond(0), text_cond(1)
    snapshot = [dict(c[1]) for c in pos_in]
    node = pack.nodes.conditioning.Conditioning
    pos, neg, latent, bundle, canvas_img = node.execute(
        pos_in, neg_in, vae, fill_model, "repainting", -1.0, "pad", "target_first", 8192, 4096, 1024, 1024, 50.0,
        "crop", True, False, edit_image=image, mask=mask, reference=ref).args
    expected = core.build_canvas(core.to_bchw(image), core.mask_to_b1hw(mask), [core.to_bchw(ref)])
    assert bundle.layout == expected.layout and bundle.kind == "fill"
    want_latent = vae.encode(core.to_bhwc(expected.image))
    for c in (pos, neg):
        extra = c[0][1]
        torch.testing.assert_close(extra["concat_latent_image"], want_latent, rtol=0, atol=0)
        torch.testing.assert_close(extra["concat_mask"], expected.mask, rtol=0, atol=0)
        assert extra["guidance"] == 50.0
    assert [set(c[1]) for c in pos_in] == [set(s) for s in snapshot]  # inputs untouched
    assert "concat_latent_image" not in neg_in[0][1]
    # held reference: noise mask 0 exactly over the reference cells (latent grid), 1 over the target
    hold = latent["noise_mask"]
    assert hold.shape[-2:] == (expected.layout.canvas_h // 8, expected.layout.canvas_w // 8)
    tx = expected.layout.target_box.x // 8
    assert hold[..., :tx].max() == 0 and hold[..., tx:].min() == 1
    assert canvas_img.shape == (1, expected.layout.canvas_h, expected.layout.canvas_w, 3)


def test_fft_conditioning_is_edit_and_modify_latents(pack, core, fft_model, vae):
    image, mask, ref = edit_inputs()
    pos, _, latent, bundle, _ = run_conditioning(pack, fft_model, vae, image=image, mask=mask, reference=ref, hold=False)
    canvas = core.build_canvas(core.to_bchw(image), core.mask_to_b1hw(mask), [core.to_bchw(ref)])
    edit_px, modify_px = core.fft_condition_images(canvas.image, canvas.mask)
    want = torch.cat([vae.encode(core.to_bhwc(edit_px)), vae.encode(core.to_bhwc(modify_px))], dim=1)
    assert bundle.kind == "fft"
    torch.testing.assert_close(pos[0][1]["concat_latent_image"], want, rtol=0, atol=0)
    assert "noise_mask" not in latent and not latent["samples"].any()
    assert latent["samples"].shape == (1, 16, canvas.layout.canvas_h // 8, canvas.layout.canvas_w // 8)


def test_batch_of_edits_shares_the_references(pack, fill_model, vae):
    image, mask, ref = edit_inputs(batch=2)
    more = pack.nodes.helpers.append_reference(ref.flip(1), None)
    pos, _, latent, bundle, canvas = run_conditioning(pack, fill_model, vae, image=image, mask=mask, reference=ref,
                                                      more=more)
    assert pos[0][1]["concat_latent_image"].shape[0] == 2 and latent["samples"].shape[0] == 2
    assert len(bundle.layout.reference_boxes) == 2
    first, second = bundle.layout.reference_boxes
    torch.testing.assert_close(canvas[0, :, first.x:first.x1], canvas[1, :, first.x:first.x1])  # shared
    assert not torch.equal(canvas[0, :, bundle.layout.target_box.x:], canvas[1, :, bundle.layout.target_box.x:])


def test_mask_size_mismatch_and_missing_control_image_are_clear_errors(pack, fill_model, vae):
    image, _, _ = edit_inputs()
    with pytest.raises(ValueError, match=r"mask is 48x48 but edit_image is 64x96x3 \(H x W x C\)"):
        run_conditioning(pack, fill_model, vae, image=image, mask=torch.ones(1, 48, 48))
    with pytest.raises(ValueError, match="control image"):
        run_conditioning(pack, fill_model, vae, image=image, task="control")


@pytest.mark.parametrize("size", [(64, 96), (64, 64)])  # (64, 64): LoadImage's mask of an image without alpha
def test_zero_area_mask_means_edit_everything(pack, fill_model, vae, size):
    image, _, _ = edit_inputs()
    pos, _, _, bundle, _ = run_conditioning(pack, fill_model, vae, image=image, mask=torch.zeros(1, *size))
    assert pos[0][1]["concat_mask"].min() == 1.0
    assert bundle.mask is None  # crop-back then composites nothing: the whole image is generated


def test_reference_generation_uses_width_and_height(pack, fill_model, vae):
    _, _, ref = edit_inputs()
    _, _, latent, bundle, _ = run_conditioning(pack, fill_model, vae, reference=ref, width=80, height=64)
    lay = bundle.layout
    assert (lay.original_h, lay.original_w) == (64, 80) and bundle.image is None
    assert latent["samples"].shape[-2:] == (lay.canvas_h // 8, lay.canvas_w // 8)


def test_release_parity_reproduces_the_official_canvas(pack, core, fill_model, fft_model, vae):
    image, mask, ref = edit_inputs()
    for model, kind, fit, budget, crop in ((fill_model, "fill", "resize", 6144, "release"),
                                           (fft_model, "fft", "pad", 3072, "release_fft")):
        pos, _, latent, bundle, canvas_img = run_conditioning(pack, model, vae, image=image, mask=mask, reference=ref,
                                                              parity=True, max_tokens=budget)
        spec = core.CanvasSpec(policy="official", reference_fit=fit, max_tokens=budget, crop_mode=crop)
        want = core.build_canvas(core.to_bchw(image), core.mask_to_b1hw(mask), [core.to_bchw(ref)], spec)
        assert bundle.layout == want.layout, kind
        torch.testing.assert_close(core.to_bchw(canvas_img), want.image, rtol=0, atol=0)
        assert "noise_mask" not in latent  # the release samples the whole canvas


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.8, 1.0])
def test_release_parity_fft_follows_the_keep_pixels_rate_widget(pack, core, fft_model, vae, rate):
    """The widget reaches the canvas: release parity on the FFT model equals the released FFT processor's
    formula (written out in test_canvas_spec) at that keep_pixels_rate."""
    from test_canvas_spec import released_fft_processor

    g = torch.Generator().manual_seed(9)
    image, ref = torch.rand(1, 200, 300, 3, generator=g), torch.rand(1, 180, 120, 3, generator=g)
    mask = torch.zeros(1, 200, 300)
    mask[:, 50:120, 100:250] = 1.0
    _, _, _, bundle, canvas_img = run_conditioning(pack, fft_model, vae, image=image, mask=mask, reference=ref,
                                                   parity=True, keep_pixels_rate=rate)
    want_img, _, want_slice = released_fft_processor(core.to_bchw(image), mask[:, None], core.to_bchw(ref), rate)
    torch.testing.assert_close(core.to_bchw(canvas_img), want_img, rtol=0, atol=1e-5)
    assert bundle.layout.release_slice_w == want_slice


# ---- sampler ----------------------------------------------------------------------------------------
def test_canvas_shift_is_installed_on_a_clone(pack, core, fill_model):
    import comfy.samplers

    mu = core.flux_shift_mu(1234)
    shifted = pack.nodes.compat.with_flux_shift(fill_model, mu)
    ms = shifted.get_model_object("model_sampling")
    t = torch.linspace(0.05, 1.0, 20)
    torch.testing.assert_close(ms.sigma(t), core.shift_sigmas(t, mu), rtol=1e-5, atol=1e-6)
    assert fill_model.get_model_object("model_sampling").shift != pytest.approx(mu)
    sig = comfy.samplers.calculate_sigmas(ms, "simple", 28)
    assert len(sig) == 29 and float(sig[0]) == pytest.approx(1.0, abs=1e-4)


def capture_img_in(model):
    """A clone of ``model`` whose DIFFUSION_MODEL wrapper records img_in's input and the guidance of each call."""
    import comfy.patcher_extension

    seen = []

    def wrapper(executor, x, timestep, context, y, guidance, *args, **kwargs):
        flux = executor.class_obj
        handle = flux.img_in.register_forward_hook(lambda mod, inp, out: seen.append(
            {"tokens": inp[0].detach().clone(), "x": x.detach().clone(), "sigma": timestep.detach().clone(),
             "guidance": None if guidance is None else guidance.detach().clone()}))
        try:
            return executor(x, timestep, context, y, guidance, *args, **kwargs)
        finally:
            handle.remove()

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "aceplus-test", wrapper)
    return clone, seen


@pytest.mark.parametrize("kind", ["fill", "fft"])
def test_img_in_receives_the_core_lcu_assembly(pack, core, fill_model, fft_model, vae, kind):
    """The tensor reaching img_in during sampling == aceplus_core's fill_tokens / fft_tokens."""
    import comfy.sample
    import comfy.utils

    model = fill_model if kind == "fill" else fft_model
    image, mask, ref = edit_inputs(seed=3)
    hold = kind == "fill"  # Fill with the held reference (noise mask), FFT without
    pos, neg, latent, bundle, _ = run_conditioning(pack, model, vae, image=image, mask=mask, reference=ref, hold=hold)
    wrapped, seen = capture_img_in(model)
    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: progress.append((value, total)))
    try:
        image_out, canvas_out = pack.nodes.sampler.Sampler.execute(
            wrapped, pos, neg, latent, bundle, vae, 7, 1, 1.0, "euler", "simple", True, True, 0).args
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert progress and progress[-1] == (1, 1)  # ComfyUI's standard progress bar was driven
    assert len(seen) == 1
    got = seen[0]
    # Expected, from the core: the canvas, its latent(s) normalised, the mask, and the step-0 noise.
    canvas = core.build_canvas(core.to_bchw(image), core.mask_to_b1hw(mask), [core.to_bchw(ref)])
    noise = comfy.sample.prepare_noise(latent["samples"], 7)  # at sigma = 1 the noisy latent is the noise
    assert float(got["sigma"][0]) == pytest.approx(1.0, abs=1e-4)
    if kind == "fill":
        cond = core.normalize_latent(vae.encode(core.to_bhwc(canvas.image)))
        want = core.fill_tokens(noise, cond, canvas.mask)
    else:
        edit_px, modify_px = core.fft_condition_images(canvas.image, canvas.mask)
        want = core.fft_tokens(noise, core.normalize_latent(vae.encode(core.to_bhwc(edit_px))),
                               core.normalize_latent(vae.encode(core.to_bhwc(modify_px))), canvas.mask)
    tokens = got["tokens"]
    assert tokens.shape == want.shape == (1, canvas.layout.tokens, 384 if kind == "fill" else 448)
    torch.testing.assert_close(tokens, want.to(tokens.dtype), rtol=0, atol=0)
    assert float(got["guidance"][0]) == 50.0
    assert image_out.shape == image.shape
    assert canvas_out.shape == (1, canvas.layout.canvas_h, canvas.layout.canvas_w, 3)
    outside = mask[0] < 0.5
    assert torch.equal(image_out[0][outside], image[0][outside])


def test_sampler_sends_latent_previews_through_the_progress_bar_hook(pack, fill_model, vae):
    """With ComfyUI's --preview-method set, every step's progress update carries a preview image.

    The server reads the hook's preview payload (format, PIL image, max size) and sends it to the
    browser, as for KSampler.
    """
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args

    image, mask, ref = edit_inputs(seed=5)
    pos, neg, latent, bundle, _ = run_conditioning(pack, fill_model, vae, image=image, mask=mask, reference=ref)
    updates = []
    saved = args.preview_method
    args.preview_method = LatentPreviewMethod.Latent2RGB
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **kw: updates.append((value, total, preview)))
    try:
        pack.nodes.sampler.Sampler.execute(fill_model, pos, neg, latent, bundle, vae, 3, 2, 1.0, "euler", "simple",
                                           True, True, 0)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        args.preview_method = saved
    assert [(value, total) for value, total, _ in updates] == [(1, 2), (2, 2)]
    previews = [preview for _, _, preview in updates]
    h, w = latent["samples"].shape[-2:]
    for preview in previews:
        fmt, picture, max_size = preview
        assert fmt in ("JPEG", "PNG") and max_size == args.preview_size
        assert picture.size == (w, h)  # latent2rgb: one pixel per latent cell of the whole canvas
    assert previews[0][1].tobytes() != previews[1][1].tobytes()  # each step shows its own x0


def test_crop_back_node_matches_the_sampler_path(pack, core, fill_model, vae):
    image, mask, ref = edit_inputs()
    _, _, _, bundle, canvas_img = run_conditioning(pack, fill_model, vae, image=image, mask=mask, reference=ref)
    out = pack.nodes.helpers.CropBack.execute(canvas_img, bundle, True, 0).args[0]
    want = core.crop_back(core.to_bchw(canvas_img), bundle.layout, core.to_bchw(image), core.mask_to_b1hw(mask))
    torch.testing.assert_close(out, core.to_bhwc(want), rtol=0, atol=0)
    assert out.shape == image.shape


def test_sampler_rejects_a_latent_of_another_canvas(pack, fill_model, vae):
    image, mask, ref = edit_inputs()
    pos, neg, latent, bundle, _ = run_conditioning(pack, fill_model, vae, image=image, mask=mask, reference=ref)
    other = {"samples": torch.zeros(1, 16, 8, 8)}
    with pytest.raises(ValueError, match=r"latent is 8x8.*canvas is"):
        pack.nodes.sampler.Sampler.execute(fill_model, pos, neg, other, bundle, vae, 0, 1, 1.0, "euler", "simple",
                                           True, True, 0)
