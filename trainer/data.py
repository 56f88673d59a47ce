"""Dataset manifests (release CSV and JSONL), per-sample validation, and image loading.

Release CSV: one sample per line, fields separated by ``#;#``:
``edit_image#;#edit_mask#;#ref_image#;#target_image#;#prompt#;#data_type`` (a header line with
those names is optional). Any field but ``target_image`` may be empty: no edit image = pure
reference generation (grey canvas, full mask), no mask = full mask (or the edit image's alpha).

JSONL: one object per line with the same names, and ``references``: a list of any length
(``ref_image`` is accepted as a one-element list).

Manifests are UTF-8 with or without a BOM, with LF or CRLF line ends; paths may hold spaces and
any unicode. Images are read by ``aceplus_core.image_files``, the way ComfyUI's LoadImage reads them
(EXIF orientation, ``1 - alpha`` as the mask, 16-bit by its range). An edit image with alpha and no
mask file is masked by its alpha, as in ComfyUI; a mask file wins over the alpha.

Validation happens once, before training: a row with an image that cannot be used (missing,
zero-byte, truncated, not an image, a side under 16 px, over the pixel limit) is skipped and
counted once with its row number and reason; a mask whose size differs from its edit image is
resized or skipped (logged), and an empty result raises before any model is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from aceplus_core.image_files import ImageFileError, describe_reason, luminance, probe_image, read_image

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
    alpha_mask: bool = False      # no mask file: the edit image's alpha is the mask (1 - alpha, as LoadImage)


@dataclass
class DataReport:
    kept: int = 0
    filtered: int = 0              # dropped by the data_type stage filter
    skipped: dict = field(default_factory=dict)  # reason -> count
    fixed: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)    # e.g. {"mask_from_alpha": 3}: how rows were read, not errors
    skipped_rows: list = field(default_factory=list)  # (row, reason, message): each skipped row once

    def skip(self, reason: str, row: int = 0, message: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_rows.append((row, reason, message))

    def note(self, what: str) -> None:
        self.notes[what] = self.notes.get(what, 0) + 1

    def summary(self) -> str:
        rows = {}
        for row, reason, _ in self.skipped_rows:
            rows.setdefault(reason, []).append(row)
        where = "; ".join(f"{reason} rows {_rows(r)}" for reason, r in rows.items())
        return (f"{self.kept} samples kept, {self.filtered} filtered by data_type, "
                f"skipped {sum(self.skipped.values())} {self.skipped or ''}{f' ({where})' if where else ''}, "
                f"fixed {self.fixed or '{}'}" + (f", {self.notes}" if self.notes else ""))


def _rows(rows: list[int], shown: int = 8) -> str:
    return ", ".join(map(str, rows[:shown])) + (f" and {len(rows) - shown} more" if len(rows) > shown else "")


def _read_rows(path: Path, fmt: str) -> list[tuple[int, dict]]:
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "csv"
    rows = []
    try:  # utf-8-sig: a BOM (Excel, Notepad) is not part of the first field
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e}); save the manifest as UTF-8.") from e
    header_seen = False
    # split on "\n" only (CRLF ends lose their "\r"): str.splitlines would also split a prompt at U+2028 etc.
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
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
            if not header_seen and not rows and parts[0].strip() == "edit_image":
                header_seen = True
                continue  # header
            rec = dict(zip(CSV_FIELDS, (p.strip() for p in parts)))
            rec["references"] = [rec.pop("ref_image")] if rec.get("ref_image") else []
        rows.append((n, rec))
    return rows


def _resolve(root: Path, p: str) -> str:
    return str((root / p) if p and not Path(p).is_absolute() else p) if p else ""


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
    both = report.notes.get("mask_file_over_alpha", 0)
    if both:  # said once for the dataset, not once per row
        log.info("dataset %s: %d row(s) have an edit_image with alpha AND an edit_mask file; the mask file is used "
                 "and the alpha ignored (as ComfyUI does when a mask is connected).", path, both)
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
        report.skip("no_target", n, "no target_image")
        return None
    edit, mask = _resolve(root, rec.get("edit_image", "")), _resolve(root, rec.get("edit_mask", ""))
    refs = tuple(_resolve(root, r) for r in rec.get("references", []))
    infos = {}
    for name, p in [("target_image", target), ("edit_image", edit), ("edit_mask", mask)] + [
            (f"reference {i}", r) for i, r in enumerate(refs)]:
        if not p:
            continue
        try:
            infos[name] = probe_image(p)  # a full decode, size as displayed (EXIF orientation applied)
        except ImageFileError as e:
            log.warning("%s: %s %s %s; sample skipped (%s)", where, name, p, e.detail, e.reason)
            report.skip(e.reason, n, f"{name} {p} {e.detail}")
            return None
    sizes = {name: (info.height, info.width) for name, info in infos.items()}
    fixes = []
    if mask and not edit:
        log.info("%s: edit_mask %s is not used without an edit_image (reference generation masks the whole "
                 "target)", where, mask)
    alpha_mask = False
    if "edit_image" in infos and infos["edit_image"].has_alpha:
        alpha_mask = not mask
        report.note("mask_from_alpha" if alpha_mask else "mask_file_over_alpha")
    base = sizes.get("edit_image", sizes["target_image"])
    if "edit_image" in sizes and sizes["target_image"] != base:
        log.info("%s: target %s differs from edit image %s; the target is resized to the edit image",
                 where, sizes["target_image"], base)
        fixes.append("target_resized")
    if "edit_mask" in sizes and sizes["edit_mask"] != base:
        if cfg.data.mask_mismatch == "skip":
            log.warning("%s: mask %s is %s but its image is %s; sample skipped (data.mask_mismatch = 'skip')",
                        where, mask, sizes["edit_mask"], base)
            report.skip("mask_size_mismatch", n, f"mask {sizes['edit_mask']} != image {base}")
            return None
        log.warning("%s: mask %s is %s but its image is %s; mask resized (nearest) to the image "
                    "(data.mask_mismatch = 'resize')", where, mask, sizes["edit_mask"], base)
        fixes.append("mask_resized")
    for f in fixes:
        report.fixed[f] = report.fixed.get(f, 0) + 1
    return Sample(row=n, target_image=target, prompt=rec.get("prompt", "") or "", edit_image=edit, edit_mask=mask,
                  references=refs, data_type=rec.get("data_type", "") or "", fixes=tuple(fixes),
                  alpha_mask=alpha_mask)


# --- image loading: aceplus_core.image_files (ComfyUI's LoadImage rules) -> BCHW float tensors -----------

MASK_FILE_THRESHOLD = 128.5 / 255  # the release's "> 128 of 255" on Pillow's rounded luma


def load_image(path: str) -> torch.Tensor:
    """-> 1, 3, H, W float32 in [0, 1], as LoadImage's IMAGE (EXIF orientation, 16-bit by range)."""
    return read_image(path).image


def load_mask(path: str, size_hw: tuple[int, int]) -> torch.Tensor:
    """A mask FILE -> 1, 1, H, W in {0, 1} (release: luma > 128 of 255 is masked), resized nearest to ``size_hw``."""
    hard = (luminance(read_image(path).image) > MASK_FILE_THRESHOLD).float()
    if tuple(hard.shape[-2:]) != tuple(size_hw):
        hard = torch.nn.functional.interpolate(hard, size=tuple(size_hw), mode="nearest-exact")
    return hard


class SampleUnreadable(ConfigError):
    """An image of a sample cannot be read any more (removed or changed after validation)."""

    def __init__(self, s: "Sample", err: ImageFileError):
        super().__init__(f"row {s.row}: {err} ({describe_reason(err.reason)}); it was readable when the dataset was "
                         "validated, so it changed or disappeared since")
        self.row, self.reason = s.row, err.reason


def load_sample_tensors(s: Sample) -> dict:
    """The images of one sample as tensors; edit and mask are None without an edit image, mask is None
    without a mask file or alpha (build_canvas then edits everything). SampleUnreadable when a file
    disappeared or changed since validation."""
    try:
        target = load_image(s.target_image)
        loaded = read_image(s.edit_image) if s.edit_image else None
        edit = None if loaded is None else loaded.image
        if edit is not None and target.shape[-2:] != edit.shape[-2:]:
            target = torch.nn.functional.interpolate(target, size=edit.shape[-2:], mode="bilinear", antialias=True,
                                                     align_corners=False).clamp(0, 1)
        base_hw = tuple((edit if edit is not None else target).shape[-2:])
        # No edit image (reference generation): the whole canvas target is generated and there is no mask
        # to pass (``_validate`` already said once if the row had one). A mask file wins over the alpha.
        mask = None
        if edit is not None and s.edit_mask:
            mask = load_mask(s.edit_mask, base_hw)
        elif edit is not None and s.alpha_mask and loaded.mask is not None:
            mask = loaded.mask  # 1 - alpha, binarised at > 0.5 by the canvas, as the node binarises LoadImage's MASK
        refs = [load_image(r) for r in s.references]
    except ImageFileError as e:
        raise SampleUnreadable(s, e) from e
    return {"edit": edit, "mask": mask, "target": target, "refs": refs}
