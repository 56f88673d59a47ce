"""The caching pass: canvases -> VAE latents and prompts -> text embeddings, on disk.

Training then holds only the DiT (no VAE, no 9.5 GB of T5). One file per (sample, variant):
``<key>.safetensors`` with

- ``x0``     16, h, w   normalised latent of the un-blanked canvas ``[refs | target]`` (the x0)
- ``cond``   16|32, h, w normalised condition latent(s): Fill = the blanked canvas; FFT = edit, modify
- ``mask``   1, H, W    canvas mask in {0, 1} (1 = generate), pixel resolution (H = 8 h)
- ``ctx``    L, D       text-encoder sequence (T5-XXL: L <= 512, D = 4096)
- ``pooled`` P          pooled vector (CLIP-L: 768)

and the canvas layout as JSON metadata. The key hashes everything that changes the content
(sample paths + mtimes, canvas options, VAE/TE identity, variant), so an edited dataset or
option re-encodes only what changed. An entry that cannot be opened (torn: a full disk, a copy cut
short) is encoded again. A sample whose image disappeared or changed into something unreadable
after validation is skipped with its row and reason (a ``<key>.skip`` note beside the entries tells
every process), instead of failing later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config, ConfigError
from .data import Sample, SampleUnreadable, load_sample_tensors

log = logging.getLogger(__name__)

STUB_TEXT_LEN = 8


def cache_root(cfg: Config) -> Path:
    return Path(cfg.cache.dir) if cfg.cache.dir else Path(cfg.run.output_dir) / "cache"


def _stat(p: str) -> list:
    st = os.stat(p)
    return [p, st.st_size, st.st_mtime_ns]


def entry_key(cfg: Config, s: Sample, variant: int) -> str:
    def ident_of(p: str) -> list:  # path, size and mtime: a different file under the same name re-encodes
        return _stat(p) if p and os.path.isfile(p) else [p]

    te = (["stub", cfg.model.dit] if cfg.model.text_encoder == "stub_test_only"
          else [ident_of(cfg.model.clip_l), ident_of(cfg.model.t5xxl)])
    ident = {
        "files": [_stat(p) for p in (s.target_image, s.edit_image, s.edit_mask, *s.references) if p],
        "prompt": s.prompt, "canvas": dataclasses.asdict(cfg.canvas), "kind": cfg.model.kind,
        "vae": ident_of(cfg.model.vae), "te": te, "variant": variant, "seed": cfg.run.seed, "v": 2,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def canvas_spec(cfg: Config, training: bool = True):
    """The ``[canvas]`` config as the ``aceplus_core.CanvasSpec`` the nodes build from their widgets
    (the repainting scale is chosen per sample: ``sample_task``)."""
    from aceplus_core import CanvasSpec

    c = cfg.canvas
    jitter = tuple(c.reference_height_jitter) if (training and c.reference_height_jitter) else None
    return CanvasSpec(policy=c.policy, max_tokens=c.max_tokens, target_tokens=c.target_tokens,
                      reference_fit=c.reference_fit, keep_pixels_rate=c.keep_pixels_rate, aspect_mode=c.aspect_mode,
                      max_aspect=c.max_aspect, reference_height_jitter=jitter)


def sample_task(cfg: Config, s: Sample) -> tuple[str, float]:
    """(task preset, repainting scale) of one sample.

    The preset is ``canvas.presets[data_type]`` (default: repainting). The scale, as the release picks it
    per sample: ``canvas.repainting_scales[data_type]`` if listed; else a local-edit preset's default,
    the scale ACE++ Conditioning samples it with (0: the pasted guide stays visible); else 1.0 with a
    reference; else ``canvas.repainting_scale`` (release 0.5).
    """
    from aceplus_core import DEFAULT_REPAINTING_SCALE

    c = cfg.canvas
    preset = c.presets.get(s.data_type, "repainting")
    if s.data_type in c.repainting_scales:
        return preset, float(c.repainting_scales[s.data_type])
    if preset != "repainting":
        return preset, DEFAULT_REPAINTING_SCALE[preset]
    return preset, 1.0 if s.references else float(c.repainting_scale)


def build_sample_canvas(cfg: Config, s: Sample, variant: int, training: bool = True):
    """The canvas of one sample, built by ``aceplus_core.task_canvas`` exactly as ACE++ Conditioning builds
    it (same spec, preset and scale), plus the release's reference-height jitter when training.

    Control rows: the row's edit image is the control map, pasted inside the mask of the target image,
    as the node pastes its ``control_image`` into the image being edited."""
    from aceplus_core import task_canvas

    t = load_sample_tensors(s)
    gen = torch.Generator().manual_seed(int(hashlib.sha1(f"{cfg.run.seed}/{s.row}/{variant}".encode())
                                            .hexdigest()[:8], 16))
    preset, scale = sample_task(cfg, s)
    spec = canvas_spec(cfg, training).replace(repainting_scale=scale)
    image, control = t["edit"], None
    if preset == "control" and image is not None:
        image, control = t["target"], t["edit"]
    built = task_canvas(image, t["mask"], t["refs"], spec, preset, control_image=control, target_image=t["target"],
                        generator=gen)
    # what crop-back composites with: the image the canvas was built from and the mask it used
    t["image"], t["mask"] = image, built.mask
    return t, built.canvas


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn,
              "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def mmap_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file as tensors over a copy-on-write memory map (pages come from the page cache
    on first use; nothing is read up front). Text-encoder files only: no weights are written back."""
    import numpy as np

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    buf = np.memmap(path, dtype=np.uint8, mode="c")
    out = {}
    for key, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise ConfigError(f"{path}: tensor {key} has dtype {info['dtype']}, which the trainer cannot read.")
        a, b = info["data_offsets"]
        raw = torch.from_numpy(buf[8 + n + a: 8 + n + b])
        dtype = _ST_DTYPES[info["dtype"]]
        if (8 + n + a) % dtype.itemsize:  # misaligned for a zero-copy view: copy this one tensor
            raw = raw.clone()
        out[key] = raw.view(dtype).reshape(info["shape"])
    return out


class Encoders:
    """VAE + text encoder, loaded through ComfyUI's loaders, only for the caching pass."""

    def __init__(self, cfg: Config, dit_shapes: dict):
        import comfy.sd
        import comfy.utils

        self.cfg = cfg
        self._text_memo: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        if not cfg.model.vae or not Path(cfg.model.vae).is_file():
            raise ConfigError(f"model.vae {cfg.model.vae!r} does not exist; set it to the FLUX VAE "
                              "(ComfyUI/models/vae/ae.safetensors).")
        self.vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(cfg.model.vae))
        self.ctx_dim = dit_shapes["txt_in.weight"][1]
        self.vec_dim = dit_shapes["vector_in.in_layer.weight"][1] if "vector_in.in_layer.weight" in dit_shapes else 768
        self.clip = None
        if cfg.model.text_encoder == "comfy":
            for key in ("clip_l", "t5xxl"):
                p = getattr(cfg.model, key)
                if not p or not Path(p).is_file():
                    raise ConfigError(f"model.{key} {p!r} does not exist; set it to the {key} text encoder file "
                                      "(ComfyUI/models/text_encoders), or use model.text_encoder = "
                                      "'stub_test_only' for tests.")
            # ComfyUI's own loader (what load_clip / DualCLIPLoader call after reading the files), fed
            # memory-mapped tensors: the 4.8-9.5 GB T5 file is never copied into RAM before the load.
            self.clip = comfy.sd.load_text_encoder_state_dicts(
                [mmap_safetensors(cfg.model.clip_l), mmap_safetensors(cfg.model.t5xxl)],
                clip_type=comfy.sd.CLIPType.FLUX)
        else:
            log.warning("model.text_encoder = 'stub_test_only': prompts become seeded random embeddings. "
                        "TEST ONLY: a model trained like this ignores its prompts.")

    @torch.no_grad()
    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """B, 3, H, W in [0, 1] -> normalised latent B, 16, H/8, W/8 (``0.3611 * (z - 0.1159)``)."""
        from aceplus_core.lcu import normalize_latent

        z = self.vae.encode(img.permute(0, 2, 3, 1))  # ComfyUI VAE takes B, H, W, C
        return normalize_latent(z.float().cpu())

    TEXT_MEMO = 32  # prompts remembered: a sample's canvas variants, and repeated instructions, encode once

    @torch.no_grad()
    def encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ctx L x D, pooled D) of one prompt; the last TEXT_MEMO prompts are remembered, so a sample's
        stage-2 canvas variants (cached one after another) cost one T5 forward, not one each."""
        memo = self._text_memo
        if prompt in memo:
            memo.move_to_end(prompt)
            return memo[prompt]
        out = memo[prompt] = self._encode_text(prompt)
        if len(memo) > self.TEXT_MEMO:
            memo.popitem(last=False)
        return out

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clip is None:
            seed = int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16)
            g = torch.Generator().manual_seed(seed)
            return torch.randn(STUB_TEXT_LEN, self.ctx_dim, generator=g), torch.randn(self.vec_dim, generator=g)
        cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
        if cond.shape[-1] != self.ctx_dim:
            raise ConfigError(f"The text encoder gives {cond.shape[-1]} features but the DiT's txt_in takes "
                              f"{self.ctx_dim}; use the T5-XXL that matches the model.")
        return cond[0].float().cpu(), pooled[0].float().cpu()


def encode_sample(enc: Encoders, cfg: Config, s: Sample, variant: int) -> tuple[dict, dict]:
    from aceplus_core.lcu import fft_condition_images

    _, canvas = build_sample_canvas(cfg, s, variant)
    x0 = enc.encode_image(canvas.target)[0]
    if cfg.model.kind == "fill":
        cond = enc.encode_image(canvas.image)[0]
    else:
        edit, modify = fft_condition_images(canvas.image, canvas.mask)
        cond = torch.cat([enc.encode_image(edit)[0], enc.encode_image(modify)[0]], 0)
    ctx, pooled = enc.encode_text(s.prompt)
    tensors = {"x0": x0.contiguous(), "cond": cond.contiguous(), "mask": canvas.mask[0].contiguous().float(),
               "ctx": ctx.contiguous(), "pooled": pooled.contiguous()}
    layout = dataclasses.asdict(canvas.layout)
    return tensors, {"layout": json.dumps(layout), "row": str(s.row)}


def entry_readable(path: Path) -> bool:
    """True when ``path`` is a complete entry (safetensors checks that the header covers the whole file)."""
    try:
        with safe_open(str(path), "pt") as f:
            return "layout" in (f.metadata() or {})
    except (OSError, SafetensorError):
        return False


def _sample_keys(cfg: Config, samples: list[Sample]) -> tuple[list[tuple[int, int, str]], dict[int, str]]:
    """Entry keys of every (sample, variant); samples whose files vanished since validation -> {i: why}."""
    keys, gone = [], {}
    for i, s in enumerate(samples):
        try:
            keys += [(i, v, entry_key(cfg, s, v)) for v in range(cfg.canvas.variants)]
        except FileNotFoundError as e:
            gone[i] = f"{e.filename} disappeared after the dataset was validated"
    return keys, gone


def run_cache_pass(cfg: Config, samples: list[Sample], dit_shapes: dict, is_main: bool = True) -> list[tuple]:
    """Encode what is missing (or torn); returns the keys [(sample, variant, key)] for ``read_index``."""
    root = cache_root(cfg)
    keys, gone = _sample_keys(cfg, samples)
    if not is_main:
        return keys
    for i, why in gone.items():
        log.warning("row %d: %s; sample skipped (missing)", samples[i].row, why)
    todo = []
    for i, v, k in keys:
        path = root / f"{k}.safetensors"
        if path.exists() and not entry_readable(path):
            log.warning("cache entry %s (row %d) is damaged (cut short?); encoding it again", path.name,
                        samples[i].row)
            path.unlink()
        if not path.exists():
            todo.append((i, v, k))
    if todo:
        from tqdm.auto import tqdm

        root.mkdir(parents=True, exist_ok=True)
        log.info("caching %d of %d entries into %s", len(todo), len(keys), root)
        enc = Encoders(cfg, dit_shapes)
        for i, v, k in tqdm(todo, desc="cache", unit="entry", dynamic_ncols=True):
            skip_note = root / f"{k}.skip"
            try:
                tensors, meta = encode_sample(enc, cfg, samples[i], v)
            except SampleUnreadable as e:
                log.warning("%s; sample skipped (%s)", e, e.reason)
                skip_note.write_text(json.dumps({"row": e.row, "reason": e.reason, "message": str(e)}))
                continue
            tmp = root / f".{k}.tmp"
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, root / f"{k}.safetensors")  # atomic: a killed pass leaves no torn entry
            skip_note.unlink(missing_ok=True)
        del enc
    return keys


def read_index(cfg: Config, keys: list[tuple[int, int, str]]) -> list[dict]:
    """The entries of ``keys``; those the caching pass skipped (a ``.skip`` note) are left out."""
    root = cache_root(cfg)
    index, skipped = [], 0
    for i, v, k in keys:
        path = root / f"{k}.safetensors"
        if not path.exists():
            if (root / f"{k}.skip").exists():
                skipped += 1
                continue
            raise ConfigError(f"cache entry {path} is missing; run the caching pass (it runs on the main process).")
        with safe_open(str(path), "pt") as f:
            layout = json.loads(f.metadata()["layout"])
        index.append({"key": k, "sample": i, "variant": v, "h": layout["canvas_h"], "w": layout["canvas_w"],
                      "path": str(path)})
    if not index:
        raise ConfigError(f"No cache entry could be made ({skipped} skipped: their images disappeared or changed "
                          "after validation; see the warnings above). Restore the images and run again.")
    return index


def load_entry(path: str) -> tuple[dict, dict]:
    from aceplus_core.layout import Box, CanvasLayout

    tensors = {}
    with safe_open(path, "pt") as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
        lay = json.loads(f.metadata()["layout"])
    for k in ("target_box", "source_crop"):
        lay[k] = Box(**lay[k])
    for k in ("reference_boxes", "reference_content_boxes"):
        lay[k] = tuple(Box(**b) for b in lay[k])
    return tensors, CanvasLayout(**lay)


def load_batch(paths: list[str]) -> tuple[dict, list]:
    """Stack entries of one bucket: x0 B,16,h,w; cond B,C,h,w; mask B,1,H,W; ctx B,L,D (same L assumed)."""
    items = [load_entry(p) for p in paths]
    out = {}
    for k in items[0][0]:
        ts = [it[0][k] for it in items]
        if k == "ctx" and len({t.shape[0] for t in ts}) > 1:  # pad text to the longest (zeros = padding)
            L = max(t.shape[0] for t in ts)
            ts = [torch.cat([t, t.new_zeros(L - t.shape[0], t.shape[1])]) for t in ts]
        out[k] = torch.stack(ts)
    return out, [it[1] for it in items]


def prompt_of(samples: list[Sample], i: int) -> Optional[str]:
    return samples[i].prompt if 0 <= i < len(samples) else None
