"""Real-world datasets: manifests as editors save them, broken rows, pictures as LoadImage reads them.

BOM, CRLF, unicode and spaces in paths; every broken row skipped once with its row number and reason
(the README's trainer rows, tests/bad_input_cases.py); a decompression bomb refused from its header;
EXIF orientation, the alpha mask and 16-bit pictures as ComfyUI's LoadImage gives them; a file that
disappears after validation and a torn cache entry in the caching pass.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_input_cases import TRAINER_CASES

SIZE = 32
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def tr(comfy_root):
    from trainer import cache, config, data, testing

    return config, data, cache, testing


def _rgb(h=SIZE, w=SIZE) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _config(tr, fixture_paths, manifest: Path, out: Path, **data):
    config, _, _, testing = tr
    cfg = testing.base_config(fixture_paths["tiny_fill"], fixture_paths["tiny_vae"], manifest, out)
    cfg["data"].update(data)
    return config.load_config(data=cfg)


def _jsonl(path: Path, rows: list[dict], bom: bool = False, crlf: bool = False) -> Path:
    text = ("\r\n" if crlf else "\n").join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def _png_header(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h RGB with one compressed row of data: a decompression bomb."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (w * 3 + 1))) + chunk(b"IEND", b""))


def test_bom_crlf_unicode_and_spaces_in_paths(tr, fixture_paths, tmp_path):
    _, data, _, _ = tr
    folder = tmp_path / "Fotos 2024 — été"
    folder.mkdir()
    for name in ("édit 1.png", "ziel 1.png", "参考 1.png"):
        Image.fromarray(_rgb()).save(folder / name)
    csv = tmp_path / "train.csv"
    lines = ["edit_image#;#edit_mask#;#ref_image#;#target_image#;#prompt#;#data_type",
             "Fotos 2024 — été/édit 1.png#;##;#Fotos 2024 — été/参考 1.png#;#Fotos 2024 — été/ziel 1.png#;#"
             "Mets le chapeau \u2028 sur la tête.#;#subject"]
    csv.write_bytes("\ufeff".encode() + "\r\n".join(lines).encode() + b"\r\n")
    samples, report = data.load_samples(_config(tr, fixture_paths, csv, tmp_path / "out"))
    assert len(samples) == 1 and report.skipped == {}, report.summary()  # the BOM'd header is a header, not a row
    s = samples[0]
    assert s.row == 2 and s.edit_image.endswith("édit 1.png") and s.references[0].endswith("参考 1.png")
    assert s.prompt == "Mets le chapeau \u2028 sur la tête." and s.data_type == "subject"  # no "\r", no split
    jsonl = _jsonl(tmp_path / "train.jsonl", [{"target_image": "Fotos 2024 — été/ziel 1.png",
                                               "references": ["Fotos 2024 — été/参考 1.png"]}], bom=True, crlf=True)
    samples, _ = data.load_samples(_config(tr, fixture_paths, jsonl, tmp_path / "out"))
    assert len(samples) == 1 and samples[0].references[0].endswith("参考 1.png")


BAD_FILES = {  # how each trainer case's bad file is made
    "row_missing": lambda p: None,
    "row_zero": lambda p: p.write_bytes(b""),
    "row_truncated": lambda p: (Image.fromarray(_rgb(64, 64)).save(p, "PNG"),
                                p.write_bytes(p.read_bytes()[:300])),
    "row_html": lambda p: p.write_text("<html><body>404 Not Found</body></html>"),
    "row_tiny": lambda p: Image.fromarray(_rgb(8, 200)).save(p, "PNG"),
    "row_bomb": lambda p: _png_header(p, 100_000, 100_000),
}


def test_each_broken_row_is_skipped_once_with_its_row_and_reason(tr, fixture_paths, tmp_path, caplog):
    _, data, _, _ = tr
    cases = [c for c in TRAINER_CASES if c.id in BAD_FILES]
    assert len(cases) == len(BAD_FILES)
    Image.fromarray(_rgb()).save(tmp_path / "good.png")
    rows = [{"target_image": "good.png"}]
    for case in cases:
        BAD_FILES[case.id](tmp_path / f"{case.id}.png")
        rows.append({"target_image": "good.png", "edit_image": "good.png", "references": [f"{case.id}.png",
                                                                                        "also_missing.png"]})
    rows.insert(3, {"target_image": "good.png", "edit_image": "good.png"})
    manifest = _jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        samples, report = data.load_samples(_config(tr, fixture_paths, manifest, tmp_path / "out"))
    assert [s.row for s in samples] == [1, 4]
    expected_rows = [2, 3] + list(range(5, 5 + len(cases) - 2))
    assert [(row, reason) for row, reason, _ in report.skipped_rows] == \
        [(row, case.reason) for row, case in zip(expected_rows, cases)], report.skipped_rows  # once each
    for (row, reason, message), case in zip(report.skipped_rows, cases):
        assert all(e in message for e in case.expect), (case.id, message)
        assert f"train.jsonl:{row}: reference 0" in caplog.text
    assert report.skipped == {case.reason: 1 for case in cases}
    assert f"{case.reason} rows {row}" in report.summary()


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(tr, tmp_path, monkeypatch):
    from PIL import ImageFile

    from aceplus_core.image_files import MAX_PIXELS, ImageFileError, probe_image

    def no_decode(self):
        raise AssertionError("pixels of an oversized image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    for w, h in ((9000, 8000), (100_000, 100_000)):  # above our 64 Mpx; above Pillow's own bomb limit
        _png_header(tmp_path / "bomb.png", w, h)
        assert w * h > MAX_PIXELS
        with pytest.raises(ImageFileError, match="the limit is 64 Mpx") as err:
            probe_image(tmp_path / "bomb.png")
        assert err.value.reason == "too_large"


def test_alpha_is_the_mask_and_a_mask_file_wins_said_once(tr, fixture_paths, tmp_path, caplog):
    _, data, _, _ = tr
    rgba = np.dstack([_rgb(), np.full((SIZE, SIZE), 255, np.uint8)])
    rgba[8:24, 4:20, 3] = 0        # painted in ComfyUI's mask editor: alpha 0 = edit
    rgba[0:4, 0:4, 3] = 100        # a soft edge: 1 - 100/255 > 0.5 is masked, as the node binarises it
    Image.fromarray(rgba, "RGBA").save(tmp_path / "edit.png")
    Image.fromarray(_rgb()).save(tmp_path / "target.png")
    box = np.zeros((SIZE, SIZE), np.uint8)
    box[0:8, 0:8] = 255
    Image.fromarray(box).save(tmp_path / "mask.png")
    rows = [{"edit_image": "edit.png", "target_image": "target.png"},
            {"edit_image": "edit.png", "edit_mask": "mask.png", "target_image": "target.png"},
            {"edit_image": "edit.png", "edit_mask": "mask.png", "target_image": "target.png"}]
    with caplog.at_level(logging.INFO):
        samples, report = data.load_samples(_config(tr, fixture_paths, _jsonl(tmp_path / "t.jsonl", rows),
                                                    tmp_path / "out"))
    assert [s.alpha_mask for s in samples] == [True, False, False]
    assert report.notes == {"mask_from_alpha": 1, "mask_file_over_alpha": 2}
    assert caplog.text.count("the mask file is used") == 1
    alpha_mask = data.load_sample_tensors(samples[0])["mask"]
    torch.testing.assert_close(alpha_mask[0, 0], torch.from_numpy(1 - rgba[..., 3] / 255.0).float())
    file_mask = data.load_sample_tensors(samples[1])["mask"]
    assert torch.equal(file_mask[0, 0], torch.from_numpy(box > 128).float())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied_so_the_upright_mask_fits(tr, fixture_paths, tmp_path, caplog, fmt):
    """A phone photo stored landscape with orientation 6 is portrait in ComfyUI; its mask, painted on the portrait
    picture, fits it without a resize, and the pixels are the rotated ones."""
    _, data, _, _ = tr
    stored = _rgb(32, 48)  # H 32, W 48 as stored: portrait 48 x 32 once rotated
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / f"photo.{fmt.lower()}", fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    mask = np.zeros((48, 32), np.uint8)
    mask[10:30, 5:25] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rows = [{"edit_image": f"photo.{fmt.lower()}", "edit_mask": "mask.png", "target_image": f"photo.{fmt.lower()}"}]
    with caplog.at_level(logging.INFO):
        samples, report = data.load_samples(_config(tr, fixture_paths, _jsonl(tmp_path / "t.jsonl", rows),
                                                    tmp_path / "out"))
    assert report.fixed == {} and "resized" not in caplog.text
    t = data.load_sample_tensors(samples[0])
    assert t["edit"].shape == (1, 3, 48, 32) and t["mask"].shape == (1, 1, 48, 32)
    if fmt == "PNG":  # lossless: exactly the stored pixels turned 90 degrees clockwise
        want = torch.from_numpy(np.rot90(stored, k=-1).copy()).permute(2, 0, 1).float() / 255
        assert torch.equal(t["edit"][0], want)


def test_sixteen_bit_is_scaled_by_its_range(tr, tmp_path):
    """The issue's case: a full-range 16-bit greyscale ramp loaded with a max error of 0.996 (clipped)."""
    _, data, _, _ = tr
    ramp = (np.arange(32 * 64).reshape(32, 64) * 65535 // (32 * 64 - 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    loaded = data.load_image(str(tmp_path / "ramp16.png"))
    assert loaded.shape == (1, 3, 32, 64)
    err = (loaded[0, 0] - torch.from_numpy(ramp.astype(np.float64) / 65535).float()).abs().max()
    assert err < 1e-6, err


def test_caching_pass_skips_a_vanished_or_damaged_file_and_recomputes_a_torn_entry(tr, fixture_paths, tmp_path,
                                                                                      caplog):
    from trainer.model import check_dit_file

    _, data, cache, testing = tr
    manifest = testing.write_copy_dataset(tmp_path / "data", n=3, size=32)
    cfg = _config(tr, fixture_paths, manifest, tmp_path / "out")
    samples, _ = data.load_samples(cfg)
    shapes = check_dit_file(cfg)
    (manifest.parent / "ref_1.png").unlink()  # removed after validation
    (manifest.parent / "target_2.png").write_bytes(b"not a png any more")  # replaced by something unreadable
    with caplog.at_level(logging.WARNING):
        keys = cache.run_cache_pass(cfg, samples, shapes)
        index = cache.read_index(cfg, keys)
    assert {e["sample"] for e in index} == {0}
    vanished = next(c for c in TRAINER_CASES if c.id == "row_vanished")
    assert all(e in caplog.text for e in vanished.expect) and "row 2:" in caplog.text and "(missing)" in caplog.text
    assert "row 3:" in caplog.text and "(not_an_image)" in caplog.text
    entry = Path(index[0]["path"])
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # torn: a full disk, a killed copy
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        index = cache.read_index(cfg, cache.run_cache_pass(cfg, samples, shapes))
    torn = next(c for c in TRAINER_CASES if c.id == "torn_entry")
    assert all(e in caplog.text for e in torn.expect)
    assert cache.entry_readable(entry) and [e["sample"] for e in index] == [0]
    cache.load_entry(str(entry))  # readable again
