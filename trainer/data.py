"""Dataset manifests (release CSV and JSONL), per-sample validation, and image loading.

Release CSV: one sample per line, fields separated by ``#;#``:
``edit_image#;#edit_mask#;#ref_image#;#target_image#;#prompt#;#data_type`` (a header line with
those names is optional). Any field but ``target_image`` may be empty: no edit image = pure
reference generation (grey canvas, full mask), no mask = full mask.

JSONL: one object per line with the same names, and ``references``: a list of any length
(``ref_image`` is accepted as a one-element list).

Validation happens once, before training: unreadable images are logged with their row and
skipped, a mask whose size differs from its edit image is resized or skipped (logged), and an
empty result raises before any model is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .config import Config, ConfigError

log = logging.getLogger(__name__)

CSV_SEP = "#;#"
CSV_FIELDS = ("edit_image", "edit_mask", "ref_image", "target_image", "prompt", "data_type")


@dataclass(frozen=True)
class Sample:
    row: int                      # 1-based line number in the manifest (for messages)
    target_image: str
    prompt: str = ""
    edit_image: str = ""
    edit_mask: str = ""
    references: tuple[str, ...] = ()
    data_type: str = ""
    fixes: tuple[str, ...] = field(default=(), compare=False)  # e.g. ("mask_resized",)


@dataclass
class DataReport:
    kept: int = 0
    filtered: int = 0              # dropped by the data_type stage filter
    skipped: dict = field(default_factory=dict)  # reason -> count
    fixed: dict = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        return (f"{self.kept} samples kept, {self.filtered} filtered by data_type, "
                f"skipped {sum(self.skipped.values())} {self.skipped or ''}, fixed {self.fixed or '{}'}")


def _read_rows(path: Path, fmt: str) -> list[tuple[int, dict]]:
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "csv"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if fmt == "jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n} is not valid JSON ({e}); each line must be one JSON object.") from e
            if not isinstance(rec, dict):
                raise ConfigError(f"{path}:{n} must be a JSON object, got {type(rec).__name__}.")
            unknown = set(rec) - set(CSV_FIELDS) - {"references"}
            if unknown:
                raise ConfigError(f"{path}:{n} has unknown field(s) {sorted(unknown)}; "
                                  f"use {list(CSV_FIELDS[:2]) + ['references'] + list(CSV_FIELDS[3:])}.")
            refs = rec.get("references", [])
            if isinstance(refs, str):
                refs = [refs]
            if rec.get("ref_image"):
                refs = [rec["ref_image"], *refs]
            rec = {**rec, "references": [r for r in refs if r]}
        else:
            parts = line.split(CSV_SEP)
            if len(parts) != len(CSV_FIELDS):
                raise ConfigError(f"{path}:{n} has {len(parts)} '#;#'-separated fields, expected {len(CSV_FIELDS)} "
                                  f"({CSV_SEP.join(CSV_FIELDS)}).")
            if n == 1 and parts[0].strip() == "edit_image":
                continue  # header
            rec = dict(zip(CSV_FIELDS, (p.strip() for p in parts)))
            rec["references"] = [rec.pop("ref_image")] if rec.get("ref_image") else []
        rows.append((n, rec))
    return rows


def _resolve(root: Path, p: str) -> str:
    return str((root / p) if p and not Path(p).is_absolute() else p) if p else ""


def _image_size(path: str) -> tuple[int, int]:
    """(h, w) after a full decode (catches truncated files, not just bad headers)."""
    with Image.open(path) as im:
        im.load()
        return im.height, im.width


def load_samples(cfg: Config) -> tuple[list[Sample], DataReport]:
    """Parse, filter and validate the manifest; raises if nothing usable is left."""
    path = Path(cfg.data.manifest)
    if not path.is_file():
        raise ConfigError(f"data.manifest {str(path)!r} does not exist; point it at your .csv or .jsonl file.")
    root = Path(cfg.data.image_root) if cfg.data.image_root else path.parent
    report, samples = DataReport(), []
    stage = set(cfg.data.data_types)
    for n, rec in _read_rows(path, cfg.data.format):
        if stage and rec.get("data_type", "") not in stage:
            report.filtered += 1
            continue
        s = _validate(n, rec, root, cfg, report)
        if s is not None:
            samples.append(s)
    report.kept = len(samples)
    log.info("dataset %s: %s", path, report.summary())
    if not samples:
        raise ConfigError(
            f"The dataset {path} has no usable sample ({report.summary()}). Check the paths (relative paths resolve "
            f"against {root}), data.data_types = {sorted(stage)} and the log lines above.")
    return samples, report


def _validate(n: int, rec: dict, root: Path, cfg: Config, report: DataReport) -> Optional[Sample]:
    where = f"{cfg.data.manifest}:{n}"
    target = _resolve(root, rec.get("target_image", ""))
    if not target:
        log.warning("%s: no target_image; skipped (every sample needs one)", where)
        report.skip("no_target")
        return None
    edit, mask = _resolve(root, rec.get("edit_image", "")), _resolve(root, rec.get("edit_mask", ""))
    refs = tuple(_resolve(root, r) for r in rec.get("references", []))
    sizes = {}
    for name, p in [("target_image", target), ("edit_image", edit), ("edit_mask", mask)] + [
            (f"reference {i}", r) for i, r in enumerate(refs)]:
        if not p:
            continue
        try:
            sizes[name] = _image_size(p)
        except FileNotFoundError:
            log.warning("%s: %s %s does not exist; sample skipped", where, name, p)
            report.skip("missing_image")
            return None
        except Exception as e:  # PIL raises many types for corrupt data
            log.warning("%s: %s %s cannot be read (%s: %s); sample skipped", where, name, p, type(e).__name__, e)
            report.skip("corrupt_image")
            return None
    fixes = []
    if mask and not edit:
        log.info("%s: edit_mask %s is not used without an edit_image (reference generation masks the whole "
                 "target)", where, mask)
    base = sizes.get("edit_image", sizes["target_image"])
    if "edit_image" in sizes and sizes["target_image"] != base:
        log.info("%s: target %s differs from edit image %s; the target is resized to the edit image",
                 where, sizes["target_image"], base)
        fixes.append("target_resized")
    if "edit_mask" in sizes and sizes["edit_mask"] != base:
        if cfg.data.mask_mismatch == "skip":
            log.warning("%s: mask %s is %s but its image is %s; sample skipped (data.mask_mismatch = 'skip')",
                        where, mask, sizes["edit_mask"], base)
            report.skip("mask_size_mismatch")
            return None
        log.warning("%s: mask %s is %s but its image is %s; mask resized (nearest) to the image "
                    "(data.mask_mismatch = 'resize')", where, mask, sizes["edit_mask"], base)
        fixes.append("mask_resized")
    for f in fixes:
        report.fixed[f] = report.fixed.get(f, 0) + 1
    return Sample(row=n, target_image=target, prompt=rec.get("prompt", "") or "", edit_image=edit, edit_mask=mask,
                  references=refs, data_type=rec.get("data_type", "") or "", fixes=tuple(fixes))


# --- image loading: PIL -> BCHW float tensors in [0, 1] -------------------------------------------

def load_image(path: str) -> torch.Tensor:
    """-> 1, 3, H, W float32 in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_mask(path: str, size_hw: tuple[int, int]) -> torch.Tensor:
    """-> 1, 1, H, W in {0, 1} (release: > 128 of 255 is masked), resized nearest to ``size_hw``."""
    with Image.open(path) as im:
        im = im.convert("L")
        if (im.height, im.width) != tuple(size_hw):
            im = im.resize((size_hw[1], size_hw[0]), Image.NEAREST)
        arr = np.asarray(im, dtype=np.uint8) > 128
    return torch.from_numpy(arr.astype(np.float32))[None, None]


def load_sample_tensors(s: Sample) -> dict:
    """The images of one sample as tensors; edit and mask are None without an edit image, mask is None
    without a mask file (build_canvas then edits everything)."""
    target = load_image(s.target_image)
    edit = load_image(s.edit_image) if s.edit_image else None
    if edit is not None and target.shape[-2:] != edit.shape[-2:]:
        target = torch.nn.functional.interpolate(target, size=edit.shape[-2:], mode="bilinear", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    base_hw = tuple((edit if edit is not None else target).shape[-2:])
    # No edit image (reference generation): the whole canvas target is generated and there is no mask
    # to pass (``_validate`` already said once if the row had one).
    mask = load_mask(s.edit_mask, base_hw) if (s.edit_mask and edit is not None) else None
    refs = [load_image(r) for r in s.references]
    return {"edit": edit, "mask": mask, "target": target, "refs": refs}
