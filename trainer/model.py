"""The DiT through ComfyUI's own loader and FLUX code, plus LoRA and per-block checkpointing.

Loading: the steps of ``comfy.sd.load_diffusion_model_state_dict`` (the loader behind
``UNETLoader``), run here: detect the config with ``comfy.model_detection.detect_unet_config``,
set ``num_heads = hidden / 128`` (ComfyUI up to 0.8 fixes 24 in detection, which tiny test models
lack; >= 0.9 does the same), pick the model class with ``model_config_from_unet_config``, then build
it on the meta device and *assign* the memory-mapped file's tensors (``_mmap_model``: no private
copy of the base per process). Scaled-fp8 / quantized files go through the stock loader itself.
Either way the result is ComfyUI's ``Flux`` module with the file's weights.

LoRA: a forward hook on each target Linear adds ``(alpha / r) * up(down(x))`` (the "bypass"
form: no full-size weight or weight gradient is materialised, unlike a weight-function patch).
Key names are built by string replacement (``kohya_name``: ``lora_unet_`` + the BFL module name with
dots as underscores), the rule ComfyUI's ``comfy.lora.model_lora_keys_unet`` applies to BFL keys; the
export runs every file through ComfyUI's own parser (``comfy.lora.load_lora``) before writing it
(``trainer.export.check_lora_loads_in_comfy``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
import torch
import torch.nn as nn
import torch.utils.checkpoint

from .config import Config, ConfigError

log = logging.getLogger(__name__)

IN_FEATURES = {"fill": 384, "fft": 448}  # img_in input width: (16 + 16 | 32 + 64) x 2x2 patch


def file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (no weights read)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def check_dit_file(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Fail before training if the DiT file is missing or lacks the channels the run needs."""
    path = cfg.model.dit
    if not Path(path).is_file():
        raise ConfigError(f"model.dit {path!r} does not exist; point it at FLUX.1-Fill-dev (or the ACE++ FFT "
                          "model), e.g. ComfyUI/models/diffusion_models/flux1-fill-dev.safetensors.")
    shapes = file_shapes(path)
    prefix = next((p for p in ("", "model.diffusion_model.") if f"{p}img_in.weight" in shapes), None)
    if prefix is None:
        raise ConfigError(f"model.dit {path!r} has no img_in.weight: it is not a BFL-layout FLUX diffusion model.")
    feats = shapes[f"{prefix}img_in.weight"][1]
    want = IN_FEATURES[cfg.model.kind]
    if feats != want:
        other = {v: k for k, v in IN_FEATURES.items()}.get(feats)
        hint = (f"set model.kind = '{other}'" if other else
                "use FLUX.1-Fill-dev (384) or the ACE++ FFT model (448); plain FLUX.1-dev (64) has no Fill channels")
        raise ConfigError(f"model.dit {path!r}: img_in takes {feats} input features but model.kind = "
                          f"'{cfg.model.kind}' needs {want} (noisy|condition|mask); {hint}.")
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[name]


def load_dit(cfg: Config, device: torch.device, convert=None, on_host: bool = False) -> nn.Module:
    """ComfyUI's Flux module with the file's weights, on ``device``, in the storage dtype of the run."""
    return load_base_model(cfg, device, convert, on_host).diffusion_model


def load_base_model(cfg: Config, device: torch.device, convert=None, on_host: bool = False):
    """ComfyUI's ``BaseModel`` (model_base.Flux) for the file; ``.diffusion_model`` is the DiT.

    ``device`` decides the dtypes and ops (as ComfyUI decides them for it); ``on_host`` leaves the weights
    on the CPU for ``trainer.offload`` to place, and ``convert(weights, dtypes)`` (offload) returns the
    weights in the run's dtypes from one shared file instead of private per-process conversions."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    shapes = check_dit_file(cfg)
    if not cfg.lora.enabled:
        weight_dtype = torch.float32  # full fine-tune: fp32 master weights, autocast does the rest
    elif cfg.model.base_dtype == "auto":
        weight_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        weight_dtype = _dtype(cfg.model.base_dtype)
    hidden = shapes["img_in.weight"][0]
    heads = cfg.model.num_heads or hidden // 128
    sd, metadata = comfy.utils.load_torch_file(cfg.model.dit, return_metadata=True)  # safetensors: memory-mapped
    stock = None
    if heads == 24 and hidden == 3072:
        probe = comfy.model_detection.model_config_from_unet(dict(sd), "", metadata=metadata)
        if probe is None or probe.scaled_fp8 is not None or getattr(probe, "layer_quant_config", None):
            stock = True  # scaled-fp8 / quantized files: ComfyUI's own loader handles their extra keys
    if stock:
        patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": weight_dtype}, metadata=metadata)
        model = patcher.model
    else:
        if heads != 24:
            log.info("hidden %d: building the FLUX config with num_heads=%d (ComfyUI <= 0.8 detection fixes 24)",
                     hidden, heads)
        prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
        sd = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True) or sd
        unet_config = comfy.model_detection.detect_unet_config(sd, "", metadata=metadata)
        if unet_config is None or unet_config.get("image_model") != "flux":
            raise ConfigError(f"model.dit {cfg.model.dit!r} is not detected as a FLUX model by ComfyUI.")
        unet_config["num_heads"] = heads
        pe = hidden // heads
        unet_config["axes_dim"] = [pe - 2 * (pe * 7 // 16), pe * 7 // 16, pe * 7 // 16]  # 128 -> [16, 56, 56]
        model_config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
        manual_cast = comfy.model_management.unet_manual_cast(weight_dtype, device,
                                                              model_config.supported_inference_dtypes)
        model_config.set_inference_dtype(weight_dtype, manual_cast)
        model = _mmap_model(model_config, sd, convert)
    dit = model.diffusion_model
    if not on_host:
        dit.to(device)
    n = sum(p.numel() for p in dit.parameters())
    log.info("DiT %s: %.1f M parameters, hidden %d, %d heads, %d double / %d single blocks, weights %s",
             Path(cfg.model.dit).name, n / 1e6, hidden, heads, len(dit.double_blocks), len(dit.single_blocks),
             weight_dtype)
    return model


def _mmap_model(model_config, sd: dict, convert=None):
    """ComfyUI's model for ``model_config`` built on the meta device, its weights *assigned* from the
    memory-mapped file instead of copied into freshly allocated ones.

    ``comfy.sd.load_diffusion_model_state_dict`` allocates every weight on the CPU and copies the file
    into it: one private copy of the whole DiT per process (23.8 GB for FLUX in bf16, x 8 ranks on an
    8-GPU node) before ``.to(cuda)``. Assigned, a weight whose dtype already matches stays a view of
    the file's pages (page cache, shared by every rank on the host, dropped under memory pressure);
    only weights that need a dtype conversion are copied, one at a time. Same classes, dtypes and
    values as the stock path (``tests/test_trainer_ddp.py`` checks bit-equality).
    """
    model = model_config.get_model(sd, "", device=torch.device("meta"))
    dit = model.diffusion_model
    skeleton = dit.state_dict()
    weights = model_config.process_unet_state_dict(dict(sd))
    unexpected = sorted(set(weights) - set(skeleton))
    missing = sorted(set(skeleton) - set(weights))
    if missing or unexpected:
        raise ConfigError(f"model.dit: the file does not match the detected FLUX layout: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}. Is it a complete BFL-key FLUX diffusion model?")
    if convert is not None:
        weights = convert(weights, {k: skeleton[k].dtype for k in weights})
    dit.load_state_dict({k: (v if v.dtype == skeleton[k].dtype else v.to(skeleton[k].dtype))
                         for k, v in weights.items()}, strict=True, assign=True)
    left = [n for n, t in [*dit.named_parameters(), *dit.named_buffers()] if t.is_meta]
    if left:  # a tensor the file does not hold (e.g. a non-persistent buffer): cannot come from the file
        raise RuntimeError(f"FLUX tensors not in the file stayed on the meta device: {left[:5]}")
    return model


@contextlib.contextmanager
def host_training_mode():
    """Tell ComfyUI that gradients flow through its model code.

    Newer ComfyUI (0.33 tested) runs FLUX's rope through comfy_kitchen kernels that have no autograd
    formula, unless ``comfy.model_management.in_training`` is set: the switch ComfyUI's own
    TrainLoraNode flips. Older versions (0.3.75) have no such flag and nothing to switch.
    """
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    previous, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = previous


class OutOfPlaceAdds(torch.overrides.TorchFunctionMode):
    """Run ``a += b`` as ``a = a + b`` inside ComfyUI's FLUX blocks.

    The blocks update the residual stream in place (``img += attn``) after a norm has saved it for
    backward. Without grad (inference) that is fine; with grad it either raises ("modified by an
    inplace operation") or, under a checkpoint's recompute, silently corrupts a saved tensor
    (measured: 0.4% gradient error vs finite differences). ``x += y`` rebinds ``x`` to what
    ``__iadd__`` returns, so returning a new tensor keeps the block's semantics exactly.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # ``x += y`` arrives as Tensor.add_; only grad-tracked updates need rewriting
        if (func is _IADD or func is torch.Tensor.__iadd__) and torch.is_grad_enabled():
            return torch.add(*args, **kwargs)
        return func(*args, **kwargs)


_IADD = torch.Tensor.add_


def _out_of_place(fn):
    """``fn`` with in-place adds made out-of-place and ComfyUI told that it is training; the same
    wrapper runs in the forward pass and in checkpointing's recomputation, so both take one path."""
    def run(*a):
        with OutOfPlaceAdds(), host_training_mode():
            return fn(*a)
    return run


# --- LoRA ----------------------------------------------------------------------------------------

class LoRA(nn.Module):
    """``y = base(x) + (alpha / r) * x @ down^T @ up^T``; down: r x in, up: out x r (kohya layout)."""

    def __init__(self, in_f: int, out_f: int, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.rank, self.alpha = rank, float(alpha)
        # kohya / PEFT init: down ~ kaiming-uniform, up = 0, so training starts at the base model.
        bound = 1.0 / math.sqrt(in_f)
        self.down = nn.Parameter(torch.rand(rank, in_f, generator=generator) * 2 * bound - bound)
        self.up = nn.Parameter(torch.zeros(out_f, rank))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        # x: B, T, in -> B, T, r -> B, T, out, in the compute dtype of the base output
        delta = nn.functional.linear(nn.functional.linear(x.to(out.dtype), self.down.to(out.dtype)),
                                     self.up.to(out.dtype))
        return out + self.scale * delta


def target_modules(dit: nn.Module, cfg: Config) -> dict[str, nn.Module]:
    """{BFL module name: Linear} for the configured double/single targets (+ img_in)."""
    names = {}
    for i in range(len(dit.double_blocks)):
        for t in cfg.lora.double_targets:
            names[f"double_blocks.{i}.{t}"] = None
    for i in range(len(dit.single_blocks)):
        for t in cfg.lora.single_targets:
            names[f"single_blocks.{i}.{t}"] = None
    if cfg.lora.train_img_in:
        names["img_in"] = None
    mods = dict(dit.named_modules())
    for n in names:
        m = mods.get(n)
        if not isinstance(m, nn.Linear):
            raise ConfigError(f"LoRA target {n!r} is not a Linear layer of this FLUX model; check "
                              "lora.double_targets / lora.single_targets (default = the released list).")
        names[n] = m
    return names


def kohya_name(module_name: str) -> str:
    """BFL module name -> the released key stem: ``lora_unet_double_blocks_0_img_attn_qkv``."""
    return "lora_unet_" + module_name.replace(".", "_")


def ops_input_dtype(dit: nn.Module):
    """The input dtype the DiT's ops need, or None when they take any float input.

    ComfyUI picks the ops from the weight dtype and the device (``comfy.ops.pick_operations``):
    ``manual_cast`` (and the fp8 ops built on it, ``comfy_cast_weights = True``) casts each weight to
    its input's dtype, so fp32 inputs run as fp32 and bf16 (autocast) as bf16. ``disable_weight_init``
    (bf16 or fp16 weights on CUDA, fp32 anywhere) does not cast: its Linear needs inputs in the weight
    dtype, or ``F.linear`` raises "mat1 and mat2 must have the same dtype".
    """
    lin = dit.img_in
    if getattr(lin, "comfy_cast_weights", False):
        return None
    dt = lin.weight.dtype
    return dt if dt in (torch.bfloat16, torch.float16) else None


class Trainable(nn.Module):
    """What accelerate wraps: the DiT and (for LoRA runs) the adapters, with one forward.

    forward(x_in B,C_in,h,w; s B; ctx B,L,D; pooled B,768) -> B,16,h,w velocity ``eps - x0``.
    """

    def __init__(self, dit: nn.Module, cfg: Config):
        super().__init__()
        self.dit = dit
        self.cfg = cfg
        self.loras = nn.ModuleDict()
        self.module_names: dict[str, str] = {}  # ModuleDict key -> BFL module name
        if cfg.lora.enabled:
            dit.requires_grad_(False)
            gen = torch.Generator().manual_seed(cfg.run.seed)
            for name, lin in target_modules(dit, cfg).items():
                key = name.replace(".", "_")
                lora = LoRA(lin.in_features, lin.out_features, cfg.lora.rank, cfg.lora.alpha, gen).to(
                    lin.weight.device)
                self.loras[key] = lora
                self.module_names[key] = name
                lin.register_forward_hook(lora.hook)
        else:
            dit.requires_grad_(True)
        self.checkpointing = cfg.model.gradient_checkpointing
        self.input_dtype = ops_input_dtype(dit)
        # offload.activations: (block args) -> saved-tensor hooks around each checkpointed block (trainer.offload)
        self.saved_block_inputs = None

    def _block_patches(self, checkpointing: bool) -> dict:
        """Blocks run through FLUX's own ``patches_replace`` hook (no monkey patching): with copies of
        their inputs (ComfyUI's blocks add in place, which autograd rejects when the input is saved
        for backward), and with per-block checkpointing when enabled."""
        def ckpt(fn, args, *tensors):
            if not checkpointing:
                return _out_of_place(fn)(*tensors)
            hooks = self.saved_block_inputs(args) if self.saved_block_inputs else contextlib.nullcontext()
            with hooks:
                return torch.utils.checkpoint.checkpoint(_out_of_place(fn), *tensors, use_reentrant=False)

        patches = {}
        # ``run`` captures the mask and options, never ``args``: the checkpoint keeps ``run`` until backward,
        # and ``args`` would keep the block inputs alive on the device beside what the checkpoint saved
        for i, blk in enumerate(self.dit.double_blocks):
            def double(args, extra, blk=blk):  # bind blk now: closures in loops bind late
                mask, topts = args.get("attn_mask"), args.get("transformer_options", {})

                def run(img, txt, vec, pe):
                    return blk(img=img, txt=txt, vec=vec, pe=pe, attn_mask=mask, transformer_options=topts)
                img, txt = ckpt(run, args, args["img"], args["txt"], args["vec"], args["pe"])
                return {"img": img, "txt": txt}
            patches[("double_block", i)] = double
        for i, blk in enumerate(self.dit.single_blocks):
            def single(args, extra, blk=blk):
                mask, topts = args.get("attn_mask"), args.get("transformer_options", {})

                def run(img, vec, pe):
                    return blk(img, vec=vec, pe=pe, attn_mask=mask, transformer_options=topts)
                return {"img": ckpt(run, args, args["img"], args["vec"], args["pe"])}
            patches[("single_block", i)] = single
        return patches

    def forward(self, x_in: torch.Tensor, s: torch.Tensor, ctx: torch.Tensor, pooled: torch.Tensor,
                guidance: float) -> torch.Tensor:
        opts = {}
        if torch.is_grad_enabled():
            ckpt = self.checkpointing and self.training
            opts["patches_replace"] = {"dit": self._block_patches(ckpt)}
        # Ops without manual cast (bf16 weights on CUDA) multiply their weight with what they are fed:
        # feed them their weight dtype, in training (with or without autocast) and in sampling alike.
        dt = self.input_dtype or x_in.dtype
        x_in = x_in.to(dt)
        g = torch.full((x_in.shape[0],), float(guidance), device=x_in.device, dtype=dt)
        # ComfyUI's Flux: timestep = sigma (model_sampling.timestep for FLUX), embedded x1000 inside.
        return self.dit(x_in, s.to(dt), ctx.to(dt), y=pooled.to(dt), guidance=g, transformer_options=opts)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must store to restore the trained weights."""
        if self.cfg.lora.enabled:
            return {k: v.detach() for k, v in self.loras.state_dict().items()}
        return {k: v.detach() for k, v in self.dit.state_dict().items()}

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        target = self.loras if self.cfg.lora.enabled else self.dit
        missing, unexpected = target.load_state_dict(sd, strict=True), None
        del missing, unexpected


def init_from_lora(model: Trainable, path: str) -> None:
    """Continue from a LoRA file in the released format: every key must find its module."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ConfigError(f"lora.init_from {path!r} does not exist.")
    sd = load_file(path)
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}
    ours = {kohya_name(n): key for key, n in model.module_names.items()}
    unknown = sorted(stems - set(ours))
    if unknown:
        raise ConfigError(f"lora.init_from {path!r} has {len(unknown)} module(s) this run does not train, e.g. "
                          f"{unknown[:3]}; match lora.double_targets/single_targets/train_img_in to the file "
                          "(the released LoRAs use the default lists) or check the base model's block count.")
    missing = sorted(set(ours) - stems)
    if missing:
        log.warning("lora.init_from: %d trained module(s) are not in %s and start from zero, e.g. %s",
                    len(missing), path, missing[:3])
    for stem in stems:
        lora = model.loras[ours[stem]]
        down, up = sd[f"{stem}.lora_down.weight"].float(), sd[f"{stem}.lora_up.weight"].float()
        if down.shape[0] != lora.rank:
            raise ConfigError(f"lora.init_from {path!r} has rank {down.shape[0]} but lora.rank = {lora.rank}; "
                              f"set lora.rank = {down.shape[0]}.")
        if down.shape != lora.down.shape or up.shape != lora.up.shape:
            raise ConfigError(f"lora.init_from {stem}: shapes {tuple(down.shape)}/{tuple(up.shape)} do not fit the "
                              f"model's {tuple(lora.down.shape)}/{tuple(lora.up.shape)} (a different base model?).")
        alpha = float(sd[f"{stem}.alpha"]) if f"{stem}.alpha" in sd else float(lora.rank)
        with torch.no_grad():
            lora.down.copy_(down)
            # keep the file's effective update exactly: (a_file / r) up_file = (a_cfg / r) up_ours
            lora.up.copy_(up * (alpha / lora.alpha))
    log.info("continued from LoRA %s (%d modules)", path, len(stems))
