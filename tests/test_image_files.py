"""The project's image reader against ComfyUI's own LoadImage, pixel for pixel, on this host.

``aceplus_core.image_files.read_image`` (what the trainer reads datasets with) and the host's real
``nodes.LoadImage`` class read the same generated files: EXIF orientations 1-8, RGBA, LA, palette
with and without transparency, 16-bit, 32-bit integer and float, CMYK, greyscale, bilevel, WebP,
TIFF, BMP, GIF, JPEG. ``EXPECT`` says, for each file and each kind of host, whether the two agree
exactly or where they deliberately differ, and why:

* ComfyUI 0.3.75 (and every host whose LoadImage decodes with Pillow): exact on every 8-bit file. It
  clips 16-bit greyscale (``I;16``: all white above 255/65535), scales 16-bit PGM by 1/255 and
  clips, and loads 32-bit integer and float TIFFs nearly black; we scale them by their range (the
  issue's rule, and 0.33's result for 16-bit).
* ComfyUI 0.33 (LoadImage decodes with FFmpeg through PyAV): exact on 8-bit RGB(A), palette and
  TIFF files, on 16-bit greyscale, and on the non-mirrored EXIF orientations of PNGs. Elsewhere:
  FFmpeg converts greyscale, LA, BMP, WebP, GIF and bilevel pictures through a float pixel format
  that scales 8 bits by 256/65535 (white = 0.9961, an opaque alpha = mask 0.0039); its JPEG and
  lossy-WebP decoding (chroma upsampling, YUV to RGB) differs by a few levels; it keeps 16-bit
  RGB(A) at 16 bits where Pillow reads 8; it gives transparent GIF pixels another colour; and it
  ignores the mirror of orientations 2, 4, 5 and 7 (those photos come out turned). We follow Pillow
  and the EXIF standard there, as 0.3.75 does.

Independently of the host, the reader is checked against the expected pixels: each EXIF orientation
against numpy's transform of orientation 1, the mask against ``1 - alpha``, 16-bit and 32-bit by range.
"""

from __future__ import annotations

import inspect
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aceplus_core.image_files import read_image

H, W = 24, 40
LEVEL = 1 / 255

# numpy's view of each EXIF orientation, applied to the stored picture (H, W, C): what a viewer shows.
ORIENT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
          8: lambda a: np.rot90(a, 1)}


def _pictures():
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([np.clip(128 + 100 * np.sin(x / 7.0), 0, 255), np.clip(128 + 120 * np.cos(y / 5.0), 0, 255),
                    x * 255 // (W - 1)], -1).astype(np.uint8)
    alpha = ((x * 7 + y * 3) % 256).astype(np.uint8)
    ramp16 = ((y * W + x) * 65535 // (H * W - 1)).astype(np.uint16)
    return rgb, alpha, ramp16


def _png16(path: Path, arr: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow writes 16-bit greyscale only)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_files(out: Path) -> None:
    rgb, alpha, ramp16 = _pictures()
    rgba = np.dstack([rgb, alpha])
    im = Image.fromarray(rgb, "RGB")
    im.save(out / "rgb.png")
    Image.fromarray(rgba, "RGBA").save(out / "rgba.png")
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(out / "la.png")
    Image.fromarray(rgb[..., 1], "L").save(out / "gray.png")
    Image.fromarray(rgb[..., 0] > 128).save(out / "bilevel.png")
    palette = im.quantize(16)
    palette.save(out / "palette.png")
    palette.save(out / "palette_trns.png", transparency=3)
    palette.save(out / "palette_alpha.png", transparency=bytes(range(0, 256, 16)))
    palette.save(out / "palette.gif")
    palette.save(out / "palette_trns.gif", transparency=3)
    _png16(out / "gray16.png", ramp16[..., None], 0)
    rgb16 = np.stack([ramp16, ramp16[::-1], ramp16 // 3], -1)
    _png16(out / "rgb16.png", rgb16, 2)
    _png16(out / "rgba16.png", np.dstack([rgb16, ramp16[:, ::-1]]), 6)
    _png16(out / "la16.png", np.dstack([ramp16, ramp16[:, ::-1]]), 4)
    (out / "gray16.pgm").write_bytes(f"P5\n{W} {H}\n65535\n".encode() + ramp16.astype(">u2").tobytes())
    Image.fromarray(ramp16).save(out / "gray16.tif")
    Image.fromarray(ramp16.astype(np.int32) * 32768, "I").save(out / "int32.tif")
    Image.fromarray(ramp16.astype(np.float32) / 65535, "F").save(out / "float32.tif")
    im.save(out / "rgb.tif")
    Image.fromarray(rgba, "RGBA").save(out / "rgba.tif")
    im.convert("CMYK").save(out / "cmyk.jpg", quality=95)
    im.convert("CMYK").save(out / "cmyk.tif")
    im.save(out / "rgb.jpg", quality=95)
    Image.fromarray(rgb[..., 1], "L").save(out / "gray.jpg", quality=95)
    im.save(out / "lossless.webp", lossless=True)
    Image.fromarray(rgba, "RGBA").save(out / "rgba_lossless.webp", lossless=True)
    im.save(out / "lossy.webp", quality=90)
    im.save(out / "rgb.bmp")
    for o in ORIENT:
        exif = im.getexif()
        exif[0x0112] = o
        im.save(out / f"exif{o}.jpg", exif=exif, quality=95)
        im.save(out / f"exif{o}.png", exif=exif)
    rgba_im = Image.fromarray(rgba, "RGBA")
    exif = rgba_im.getexif()
    exif[0x0112] = 6
    rgba_im.save(out / "exif6_rgba.png", exif=exif)
    rgba_im.save(out / "exif6_rgba.webp", exif=exif, lossless=True)


# ---- what each host gives: EXACT, or a deliberate difference with its bound (levels of 1/255) and why -------
EXACT = ("exact", 0.0, "")
FLOAT_PATH = ("near", 1.05, "FFmpeg's float pixel format scales 8 bits by 256/65535 (white 0.9961, opaque mask "
                            "0.0039)")
DECODER = ("near", 16.0, "another JPEG/WebP decoder: chroma upsampling and YUV to RGB differ by a few levels")
MIRROR = ("own", None, "FFmpeg ignores the mirror of EXIF orientations 2, 4, 5, 7: the photo comes out turned")
HIGH_BYTE = ("near", 1.1, "Pillow reads 16-bit RGB(A)/LA as 8 bits (high byte); FFmpeg keeps 16")
CLIPS_16 = ("own", None, "0.3.75 clips 16-bit greyscale: everything above 255/65535 is white")
PGM_255 = ("own", None, "0.3.75 divides 16-bit 'I' pictures by 255 and clips the top 0.8%")
INT_FLOAT = ("own", None, "the host loads 32-bit integer and float TIFFs clipped to 0..1 of 255: nearly black")
CMYK = ("near", 3.0, "FFmpeg's CMYK to RGB conversion differs from Pillow's")
GIF_KEY = ("near", 255.0, "FFmpeg's GIF decoder gives transparent pixels another colour (they are masked)")

EXPECT = {  # file -> (on a Pillow LoadImage: 0.3.75, on a PyAV LoadImage: 0.33)
    "rgb.png": (EXACT, EXACT), "rgba.png": (EXACT, EXACT), "palette.png": (EXACT, EXACT),
    "palette_trns.png": (EXACT, EXACT), "palette_alpha.png": (EXACT, EXACT), "rgb.tif": (EXACT, EXACT),
    "rgba.tif": (EXACT, EXACT), "exif6_rgba.png": (EXACT, EXACT),
    "gray.png": (EXACT, FLOAT_PATH), "la.png": (EXACT, FLOAT_PATH), "bilevel.png": (EXACT, FLOAT_PATH),
    "rgb.bmp": (EXACT, FLOAT_PATH), "lossless.webp": (EXACT, FLOAT_PATH), "rgba_lossless.webp": (EXACT, FLOAT_PATH),
    "palette.gif": (EXACT, FLOAT_PATH), "exif6_rgba.webp": (EXACT, FLOAT_PATH), "gray.jpg": (EXACT, FLOAT_PATH),
    "rgb.jpg": (EXACT, DECODER), "lossy.webp": (EXACT, DECODER), "cmyk.jpg": (EXACT, CMYK), "cmyk.tif": (EXACT, CMYK),
    "rgb16.png": (EXACT, HIGH_BYTE), "rgba16.png": (EXACT, HIGH_BYTE), "la16.png": (EXACT, HIGH_BYTE),
    "gray16.png": (CLIPS_16, EXACT), "gray16.tif": (CLIPS_16, EXACT), "gray16.pgm": (PGM_255, EXACT),
    "int32.tif": (INT_FLOAT, INT_FLOAT), "float32.tif": (INT_FLOAT, INT_FLOAT), "palette_trns.gif": (EXACT, GIF_KEY),
    **{f"exif{o}.png": (EXACT, MIRROR if o in (2, 4, 5, 7) else EXACT) for o in ORIENT},
    **{f"exif{o}.jpg": (EXACT, MIRROR if o in (2, 4, 5, 7) else DECODER) for o in ORIENT},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image_files")
    write_files(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPECT)
    return out


@pytest.fixture(scope="module")
def host(comfy_root, files):
    """(family, {file: (IMAGE H, W, 3, MASK h, w)}) from the host's own LoadImage class."""
    import folder_paths
    import nodes

    family = "pyav" if "VideoFromFile" in inspect.getsource(nodes.LoadImage.load_image) else "pillow"
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(folder_paths, "input_directory", str(files))
        for path in sorted(files.iterdir()):
            image, mask = nodes.LoadImage().load_image(path.name)
            out[path.name] = (image[0].float().numpy(), mask[0].float().numpy())
    return family, out


def _ours(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    loaded = read_image(path)
    return loaded.image[0].permute(1, 2, 0).numpy(), None if loaded.mask is None else loaded.mask[0, 0].numpy()


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_reader_matches_loadimage_or_differs_where_documented(name, files, host):
    family, got = host
    kind, bound, why = EXPECT[name][0 if family == "pillow" else 1]
    image, mask = _ours(files / name)
    h_image, h_mask = got[name]
    assert image.shape == h_image.shape, f"{name}: {image.shape} vs LoadImage {h_image.shape}"
    if mask is None:  # LoadImage gives a zero mask (64x64 or the image size) to a picture without alpha
        mask = np.zeros_like(h_mask)
    assert mask.shape == h_mask.shape, f"{name}: mask {mask.shape} vs LoadImage {h_mask.shape}"
    diff = np.abs(image - h_image).max() / LEVEL
    mask_diff = np.abs(mask - h_mask).max() / LEVEL
    if kind == "exact":
        assert np.array_equal(image, h_image) and np.array_equal(mask, h_mask), \
            f"{name}: differs from LoadImage by {diff:.3f} / {mask_diff:.3f} levels"
    elif kind == "near":
        assert diff <= bound and mask_diff <= max(bound, 1.0), f"{name}: {diff:.2f} levels > {bound} ({why})"
    else:  # ours follows the rule and the host does not: the truth checks below hold ours to the rule
        assert not np.array_equal(image, h_image), f"{name}: the host now agrees; make it 'exact' ({why})"


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_every_exif_orientation_shows_the_picture_upright(files, ext):
    upright, _ = _ours(files / f"exif1.{ext}")
    for o, view in ORIENT.items():
        image, _ = _ours(files / f"exif{o}.{ext}")
        assert np.array_equal(image, view(upright)), f"orientation {o}"


def test_alpha_gives_the_mask_and_ranges_are_scaled(files):
    rgb, alpha, ramp16 = _pictures()
    image, mask = _ours(files / "rgba.png")
    assert np.array_equal(image, rgb.astype(np.float32) / 255.0)
    assert np.array_equal(mask, 1.0 - alpha.astype(np.float32) / 255.0)
    _, mask = _ours(files / "palette_trns.png")
    assert set(np.unique(mask)) == {0.0, 1.0} and mask.max() == 1.0  # the transparent index is masked
    assert _ours(files / "palette.png")[1] is None and _ours(files / "rgb.jpg")[1] is None
    want = ramp16.astype(np.float32) * np.float32(1 / 65535)
    for name in ("gray16.png", "gray16.tif", "gray16.pgm"):
        image, _ = _ours(files / name)
        assert np.array_equal(image[..., 0], want) and np.array_equal(image[..., 2], want), name
    image, _ = _ours(files / "int32.tif")  # signed 32-bit: by 2^31 - 1
    np.testing.assert_allclose(image[..., 0], ramp16.astype(np.float64) * 32768 / (2**31 - 1), atol=1e-7)
    image, _ = _ours(files / "float32.tif")  # float: as it is, in [0, 1]
    np.testing.assert_allclose(image[..., 0], ramp16 / 65535, atol=1e-7)
    image, mask = _ours(files / "la16.png")
    assert image.shape == (H, W, 3) and mask is not None
