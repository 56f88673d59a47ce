"""The trainer's one typed config: a frozen dataclass tree loaded from TOML.

Every field carries its documentation in ``metadata["doc"]`` (README.md, "Every option", lists them all;
``python trainer/run.py --print-config`` prints a resolved config with its documentation).
Unknown keys and wrong types fail with a message naming the dotted key; ``--set a.b=value``
overrides any field (the value is parsed as TOML, falling back to a plain string).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

# The module names (BFL layout) the released ACE++ LoRAs train, per block type.
RELEASED_DOUBLE_TARGETS = ("img_attn.qkv", "txt_attn.qkv", "img_attn.proj", "txt_attn.proj", "img_mlp.0",
                           "img_mlp.2", "txt_mlp.0", "txt_mlp.2", "img_mod.lin", "txt_mod.lin")
RELEASED_SINGLE_TARGETS = ("linear1", "linear2", "modulation.lin")


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING, example: Any = None) -> Any:
    """A documented field; ``example`` is what ``describe`` shows (commented out) for an unset optional."""
    meta = {"doc": text, "example": example}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = doc("Folder for checkpoints, the exported weights, TensorBoard logs and samples.", "output")
    seed: int = doc("Seed for LoRA init, data order, noise and timesteps (a run is reproducible from it).", 42)
    max_steps: int = doc("Optimizer steps to train (each = grad_accum micro-batches).", 1000)
    log_every: int = doc("Log loss/lr to TensorBoard every N optimizer steps.", 1)
    save_every: int = doc("Write a checkpoint every N optimizer steps (0 = only at the end / on Ctrl-C).", 500)
    keep_checkpoints: int = doc("Checkpoints kept on disk (oldest removed first); 0 keeps all.", 3)
    sample_every: int = doc("Render sample images every N optimizer steps (0 = never).", 0)
    resume: str = doc("'' = fresh run, 'latest' = newest checkpoint in output_dir, or a checkpoint folder.", "")


@dataclass(frozen=True)
class ModelConfig:
    dit: str = doc("BFL-key FLUX diffusion model file (FLUX.1-Fill-dev, ACE++ FFT, or a previous full fine-tune).", "")
    kind: Literal["fill", "fft"] = doc(
        "'fill': img_in takes 384 features (noisy|cond|mask); 'fft': 448 (noisy|edit|modify|mask).", "fill")
    vae: str = doc("FLUX VAE file (ComfyUI's models/vae); used only by the caching pass and sampling.", "")
    clip_l: str = doc("CLIP-L text encoder file (ComfyUI's models/text_encoders); caching pass only.", "")
    t5xxl: str = doc("T5-XXL text encoder file; caching pass only.", "")
    text_encoder: Literal["comfy", "stub_test_only"] = doc(
        "'comfy' encodes prompts with CLIP-L + T5-XXL through ComfyUI's loader. 'stub_test_only' makes "
        "seeded random embeddings from the prompt text (TESTS ONLY: the model learns nothing from text).", "comfy")
    num_heads: int = doc(
        "Attention heads; 0 = hidden_size / 128 (24 for every real FLUX). Only tiny test models need this: "
        "ComfyUI <= 0.8 detection fixes 24 heads.", 0)
    base_dtype: Literal["auto", "fp32", "bf16", "fp8_e4m3fn"] = doc(
        "Storage dtype of the frozen base weights for LoRA runs ('auto' = bf16 on CUDA, fp32 on CPU). "
        "fp8 halves the base (23.8 -> 11.9 GB); compute still runs in the mixed-precision dtype. "
        "Full fine-tunes always keep fp32 master weights.", "auto")
    gradient_checkpointing: bool = doc("Recompute each transformer block in backward (saves activations).", True)


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = doc("true = train a LoRA; false = full fine-tune of every DiT weight.", True)
    rank: int = doc("LoRA rank (the released LoRAs: 16 or 64).", 64)
    alpha: float = doc("LoRA alpha; the update is (alpha / rank) * up @ down (released: alpha = rank).", 64.0)
    double_targets: list[str] = doc("Double-block modules to adapt (default = the released list).",
                                    factory=lambda: list(RELEASED_DOUBLE_TARGETS))
    single_targets: list[str] = doc("Single-block modules to adapt (default = the released list).",
                                    factory=lambda: list(RELEASED_SINGLE_TARGETS))
    train_img_in: bool = doc("Also adapt img_in (the LCU++ input projection); off in the release.", False)
    init_from: str = doc("Continue from this LoRA file (released ACE++ format or ours); keys are kept.", "")


@dataclass(frozen=True)
class DataConfig:
    manifest: str = doc("Dataset file: release CSV ('#;#'-separated) or JSONL (any number of references).", "")
    format: Literal["auto", "csv", "jsonl"] = doc("Manifest format; 'auto' = by extension (.jsonl/.json).", "auto")
    image_root: str = doc("Relative image paths resolve against this folder ('' = the manifest's folder).", "")
    data_types: list[str] = doc("Stage filter: keep only rows whose data_type is listed ([] = all).",
                                factory=list)
    mask_mismatch: Literal["resize", "skip"] = doc(
        "A mask whose size differs from its edit image: 'resize' it (nearest) or 'skip' the sample; logged.", "resize")


# data_type -> the task preset the ACE++ Conditioning node applies when sampling that task. The caching
# pass pastes the same preset inside the mask with the same core function (aceplus_core.task_canvas).
LOCAL_EDIT_PRESETS = {"recolorizing": "recolorizing", "mosaic": "mosaic", "canny": "canny", "control": "control",
                      "contour_repainting": "control", "depth_repainting": "control"}


@dataclass(frozen=True)
class CanvasConfig:
    policy: Literal["target_first", "official"] = doc("Token-budget policy, as in the nodes.", "target_first")
    max_tokens: int = doc("Token budget of the whole canvas (release training: 2048; 1024+1024 px = 8192).", 2048)
    target_tokens: int = doc("Tokens the target keeps before references shrink (target_first policy).", 1024)
    reference_fit: Literal["pad", "resize"] = doc("How references fit the canvas height (FFT: pad, LoRA: resize).",
                                                  "pad")
    keep_pixels_rate: float = doc(
        "pad fit: references at least this fraction of the canvas height shrink to it, shorter ones keep their "
        "pixels (the node's keep_pixels_rate widget; release 0.8).", 0.8)
    reference_height_jitter: list[float] = doc(
        "Training augmentation of the release: reference height drawn in [lo, hi] x canvas height and padded "
        "([] = off; release: [0.3333, 1.0]).", factory=list)
    repainting_scale: float = doc(
        "Share of the masked area blanked in the condition canvas (1 = all, 0 = none) for samples WITHOUT a "
        "reference; samples with one use 1.0, local-edit presets their node default (as the release).", 0.5)
    repainting_scales: dict[str, float] = doc(
        "Per-data_type repainting scale, overriding the rule above, e.g. {inpainting = 1.0}.", factory=dict)
    presets: dict[str, str] = doc(
        "data_type -> task preset pasted inside the mask, as ACE++ Conditioning does when sampling it "
        "(recolorizing, mosaic, canny; control: the row's edit_image is the control map, pasted into the target).",
        factory=lambda: dict(LOCAL_EDIT_PRESETS))
    aspect_mode: Literal["error", "crop"] = doc("Images beyond max_aspect: 'crop' centre-crops, 'error' skips.",
                                                "crop")
    max_aspect: float = doc("Largest aspect ratio accepted (release: 4).", 4.0)
    variants: int = doc("Cached canvas variants per sample (>1 only useful with reference_height_jitter).", 1)


@dataclass(frozen=True)
class CacheConfig:
    dir: str = doc("Cache folder for latents and text embeddings ('' = <output_dir>/cache).", "")
    only: bool = doc("Run the caching pass and stop (then train with the cache and no VAE/TE in memory).", False)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = doc("Samples per process per micro-batch (global batch = this x processes).", 1)
    grad_accum: int = doc("Micro-batches accumulated per optimizer step.", 1)
    lr: float = doc("Learning rate; 0 = the release's (1e-3 LoRA, 5e-5 full fine-tune).", 0.0)
    betas: list[float] = doc("AdamW betas.", factory=lambda: [0.9, 0.999])
    eps: float = doc("AdamW epsilon (release 1e-6).", 1e-6)
    weight_decay: float = doc("AdamW decoupled weight decay (release 1e-2).", 1e-2)
    optimizer: Literal["adamw", "adamw_fused", "adamw8bit"] = doc(
        "'adamw8bit' needs bitsandbytes (falls back to adamw with a warning); 'adamw_fused' needs CUDA.", "adamw")
    scheduler: Literal["cosine", "constant"] = doc("LR schedule after warmup.", "cosine")
    warmup_steps: int = doc("Linear warmup steps.", 0)
    max_grad_norm: float = doc("Gradient clipping norm (0 = off; release 1.0).", 1.0)
    mixed_precision: Literal["no", "bf16", "fp16"] = doc("Autocast dtype (accelerate).", "no")
    guidance: float = doc("FLUX guidance embedding during training (release: 1.0).", 1.0)
    ref_weight: float = doc("Loss weight of the reference region (reconstruction); release 1.", 1.0)
    target_weight: float = doc("Loss weight of the target region (generation); release 1.", 1.0)
    unmasked_weight: Optional[float] = doc("If set, weight of target tokens with no masked pixel.", None, example=0.5)
    distributed: Literal["auto", "ddp", "fsdp"] = doc(
        "Multi-process strategy: 'auto' = DDP for LoRA (only the LoRA moves; the frozen base is never "
        "broadcast), FSDP2 full sharding for full fine-tunes (per-block units, bf16 params / fp32 reduce with "
        "mixed_precision = 'bf16'). 'ddp' replicates a full fine-tune (small models only). One process: unused.",
        "auto")


@dataclass(frozen=True)
class OffloadConfig:
    base_blocks: int = doc(
        "LoRA on small cards: this many transformer blocks (in the order they run: FLUX.1's 19 double, then 38 "
        "single) keep their frozen base weights in host memory and are copied to the GPU just before they run "
        "(forward, checkpoint recompute + backward), the next ones ahead on a side stream; -1 = every block, "
        "0 = off. The LoRA, its gradients and optimizer state stay on the GPU. Needs gradient_checkpointing.", 0)
    activations: bool = doc(
        "Keep the block inputs that checkpointing saves in host memory (torch's save_on_cpu; 2.9 GiB at 8192 "
        "tokens) instead of on the GPU.", False)
    auto: bool = doc(
        "Choose base_blocks and activations: the least offloading whose predicted peak (the simulation's model, "
        "with margin) fits offload.memory_gib or the card's free memory; leave those two unset.", False)
    memory_gib: float = doc(
        "Device memory the run may use, for auto and the fit check before the first step; 0 = what the card "
        "has free at the start.", 0.0)
    prefetch: int = doc("Blocks copied ahead of the running one (1-4); each holds one more block on the GPU.", 1)


@dataclass(frozen=True)
class SampleConfig:
    steps: int = doc("Euler steps for sample images.", 20)
    guidance: float = doc("Guidance embedding for samples (release inference: 50).", 50.0)
    indices: list[int] = doc("Dataset samples rendered at each sample_every.", factory=lambda: [0])


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def learning_rate(self) -> float:
        if self.train.lr > 0:
            return self.train.lr
        return 1e-3 if self.lora.enabled else 5e-5


class ConfigError(ValueError):
    """A config problem, reported with the dotted key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not one of {list(choices)}.")
        return value
    if origin is dict:
        _, inner = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of {_type_name(inner)} values, got {value!r}.")
        return {str(k): _coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (inner,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of {_type_name(inner)}, got {value!r}.")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}.")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # a programming error


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}] must be a table, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"Unknown config key(s) {', '.join(f'{prefix}.{k}'.lstrip('.') for k in unknown)} in "
                          f"{where}; valid keys there: {sorted(names)}.")
    kwargs = {}
    for name in names & set(data):
        tp, key = hints[name], f"{prefix}.{name}".lstrip(".")
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key)
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value); the value is TOML, else a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if raw.strip().lower() in ("none", "null"):
        value = None
    return key.strip().split("."), value


def load_config(path: Optional[str | Path] = None, overrides: tuple[str, ...] | list[str] = (),
                data: Optional[dict] = None) -> Config:
    """Read TOML (or a dict), apply ``key=value`` overrides, validate every key and type."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist; pass --config with a TOML file.")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
    if data:
        raw = _merge(raw, copy.deepcopy(data))  # overrides below must not edit the caller's dict
    for ov in overrides:
        keys, value = parse_override(ov)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {ov!r}: {k} is not a table.")
        node[keys[-1]] = value
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(cfg: Config) -> None:
    """Cross-field checks that need no file access (files are checked by the loaders)."""
    def positive(key: str, v: float) -> None:
        if v <= 0:
            raise ConfigError(f"{key} must be > 0, got {v}.")

    positive("run.max_steps", cfg.run.max_steps)
    positive("train.batch_size", cfg.train.batch_size)
    positive("train.grad_accum", cfg.train.grad_accum)
    positive("canvas.max_tokens", cfg.canvas.max_tokens)
    positive("canvas.variants", cfg.canvas.variants)
    positive("run.log_every", cfg.run.log_every)
    if cfg.lora.enabled:
        positive("lora.rank", cfg.lora.rank)
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"train.betas must have two numbers, got {cfg.train.betas}.")
    if not 0.0 <= cfg.canvas.keep_pixels_rate <= 1.0:
        raise ConfigError(f"canvas.keep_pixels_rate must be in [0, 1], got {cfg.canvas.keep_pixels_rate}; "
                          "the release uses 0.8.")
    for key, v in (("canvas.repainting_scale", cfg.canvas.repainting_scale),
                   *((f"canvas.repainting_scales.{k}", v) for k, v in cfg.canvas.repainting_scales.items())):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1] (1 blanks the masked area, 0 keeps it), got {v}.")
    from aceplus_core import TASK_PRESETS

    bad = {k: v for k, v in cfg.canvas.presets.items() if v not in TASK_PRESETS}
    if bad:
        raise ConfigError(f"canvas.presets {bad}: unknown preset(s); use one of {list(TASK_PRESETS)}.")
    jit = cfg.canvas.reference_height_jitter
    if jit and not (len(jit) == 2 and 0 < jit[0] <= jit[1] <= 1):
        raise ConfigError(f"canvas.reference_height_jitter must be [] or [lo, hi] with 0 < lo <= hi <= 1, got {jit}.")
    if cfg.train.distributed == "fsdp" and cfg.lora.enabled:
        raise ConfigError("train.distributed = 'fsdp' shards full fine-tunes (lora.enabled = false); a LoRA run "
                          "replicates the frozen base and moves only the LoRA: use 'ddp' or 'auto'.")
    if cfg.train.distributed == "fsdp" and cfg.train.mixed_precision == "fp16":
        raise ConfigError("train.distributed = 'fsdp' with train.mixed_precision = 'fp16' needs a sharded grad "
                          "scaler, which this trainer does not use; set train.mixed_precision = 'bf16' or 'no'.")
    validate_offload(cfg)
    if not cfg.model.dit:
        raise ConfigError("model.dit is empty: set it to the FLUX.1-Fill-dev (or ACE++ FFT) .safetensors file.")
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is empty: set it to your dataset's .csv or .jsonl file.")


def validate_offload(cfg: Config) -> None:
    o = cfg.offload
    if not (o.base_blocks or o.activations or o.auto):
        return
    if not cfg.lora.enabled:
        raise ConfigError("offload.* streams the frozen base of a LoRA run; a full fine-tune trains every weight "
                          "(nothing is frozen): set offload.base_blocks = 0, offload.activations = false and "
                          "offload.auto = false, and shard it over several GPUs instead (train.distributed = 'auto').")
    if not cfg.model.gradient_checkpointing:
        raise ConfigError("offload.* needs model.gradient_checkpointing = true: without it every block's weights "
                          "and activations stay alive until backward, so streaming would save nothing.")
    if o.base_blocks < -1:
        raise ConfigError(f"offload.base_blocks = {o.base_blocks}: use -1 (every block), 0 (off) or a block count.")
    if not 1 <= o.prefetch <= 4:
        raise ConfigError(f"offload.prefetch = {o.prefetch}: use 1 (one block ahead) to 4.")
    if o.memory_gib < 0:
        raise ConfigError(f"offload.memory_gib = {o.memory_gib} must be >= 0 (0 = the card's free memory).")
    if o.auto and (o.base_blocks or o.activations):
        raise ConfigError("offload.auto = true chooses offload.base_blocks and offload.activations itself; leave "
                          f"them at 0 / false (got {o.base_blocks} / {str(o.activations).lower()}), or set "
                          "offload.auto = false to keep yours.")


def toml_value(v: Any) -> str:
    """A TOML literal: JSON for scalars and lists, an inline table for a dict."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def describe() -> str:
    """Every field with its default and documentation, as valid TOML (for --print-config and the README)."""
    lines = []
    for sec in dataclasses.fields(Config):
        lines.append(f"[{sec.name}]")
        for f in dataclasses.fields(sec.type if isinstance(sec.type, type) else typing.get_type_hints(Config)[sec.name]):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"# {f.metadata.get('doc', '')}")
            if default is None:  # TOML has no null: an unset optional is shown commented out
                lines.append(f"# {f.name} = {json.dumps(f.metadata.get('example'))}   (unset by default)")
            else:
                lines.append(f"{f.name} = {toml_value(default)}")
        lines.append("")
    return "\n".join(lines)
