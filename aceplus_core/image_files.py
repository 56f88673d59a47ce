"""Image files read the way ComfyUI's LoadImage reads them: the one image reader of the project.

The trainer reads its datasets with it, so a model is trained on the pixels (and the mask) it is
sampled on in ComfyUI. What ``read_image`` gives for one file:

- the first frame (an animated GIF/WebP or a multi-page TIFF gives its first picture);
- the EXIF orientation applied (``ImageOps.exif_transpose``: the phone photo stands upright, as
  the browser shows it in ComfyUI's mask editor);
- RGB float32 in [0, 1]: 8-bit files ``v / 255``; 16-bit greyscale (``I;16``, and ``I`` read from a
  16-bit PGM/PPM) ``v / 65535``; 32-bit integer TIFFs by their 32-bit range; 32-bit float TIFFs as
  they are, clipped to [0, 1]; CMYK, greyscale, palette, bilevel, WebP, TIFF, BMP and whatever
  else Pillow reads through Pillow's ``convert("RGB")``;
- a mask ``1 - alpha`` for RGBA, LA and PA images and for palette images with transparency
  (``None`` when the file has no alpha).

Where ComfyUI's hosts differ from this (``tests/test_image_files.py`` checks it pixel for pixel on
each host): 0.3.75 clips 16-bit greyscale and loads float TIFFs black; 0.33 decodes through FFmpeg,
whose JPEG and float pixel-format conversions differ by a few levels and which ignores the mirrored
EXIF orientations (2, 4, 5, 7). Pillow reads 16-bit RGB(A) PNGs as 8 bits (high byte).

Pillow and numpy are imported when a file is read; nothing here imports ComfyUI.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

MIN_SIDE = 16               # one 16 x 16 px token; a smaller side holds nothing ACE++ can use
MAX_PIXELS = 8192 * 8192    # 64 Mpx: larger files are refused from their header, before any pixel is decoded
ORIENTATION_TAG = 0x0112    # EXIF Orientation; 5-8 swap width and height
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)

# Why a file cannot be used, as the trainer's data report counts it.
REASONS = {
    "missing": "the file does not exist",
    "zero_byte": "the file is empty (0 bytes)",
    "not_an_image": "Pillow does not recognise it as an image",
    "truncated": "the file ends before the picture does (an interrupted download or copy)",
    "corrupt": "the picture data cannot be decoded",
    "too_small": f"a side is under {MIN_SIDE} px",
    "too_large": f"more than {MAX_PIXELS // 2**20} Mpx (the limit; downscale it first)",
}


class ImageFileError(ValueError):
    """A file that cannot be used as an image; ``reason`` is one of ``REASONS``."""

    def __init__(self, path: str, reason: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path, self.reason, self.detail = str(path), reason, detail


@dataclass(frozen=True)
class ImageInfo:
    height: int      # as displayed: after the EXIF orientation
    width: int
    has_alpha: bool  # the file carries a mask (1 - alpha), as LoadImage's MASK output
    mode: str        # Pillow's mode of the first frame (e.g. "RGBA", "I;16", "P")
    format: str      # Pillow's format name (e.g. "PNG", "JPEG")


@dataclass(frozen=True)
class LoadedImage:
    image: torch.Tensor           # 1, 3, H, W float32 in [0, 1]
    mask: Optional[torch.Tensor]  # 1, 1, H, W float32: 1 - alpha, or None without alpha
    info: ImageInfo


def _open(path: str):
    """The file opened by Pillow (header only) after the checks that need no pixel; ImageFileError otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ImageFileError(path, "missing", "does not exist") from None
    if os.path.isdir(path):
        raise ImageFileError(path, "not_an_image", "is a folder, not an image file")
    if size == 0:
        raise ImageFileError(path, "zero_byte", "is empty (0 bytes)")
    too_large = (f"{{}}; the limit is {MAX_PIXELS // 2**20} Mpx. Downscale it (e.g. to 4096 px on the long side): "
                 "nothing in ACE++ uses more")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with our message
            im = Image.open(path)
    except UnidentifiedImageError:
        kind = _signature(path)
        if kind:  # the start of a real image file that ends inside its header
            raise ImageFileError(path, "truncated", f"starts like a {kind} file but ends after {size} bytes, inside "
                                                    "its header: copy or download it again") from None
        raise ImageFileError(path, "not_an_image", f"is not an image Pillow can read ({size} bytes; an HTML "
                                                   "page, a text file or a video?)") from None
    except Image.DecompressionBombError as err:  # only the header was read: no pixel memory was taken
        raise ImageFileError(path, "too_large", too_large.format(f"has a header claiming a huge size ({err})")) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageFileError(path, "corrupt", f"has a broken header ({type(err).__name__}: {err})") from None
    w, h = im.size
    problem = None
    if w * h > MAX_PIXELS:  # from the header, before any pixel is decoded: a decompression bomb costs nothing
        problem = ImageFileError(path, "too_large", too_large.format(f"is {w}x{h} px ({w * h / 2**20:.0f} Mpx)"))
    elif min(w, h) < MIN_SIDE:
        problem = ImageFileError(path, "too_small", f"is {w}x{h} px; ACE++ needs at least {MIN_SIDE} px on each "
                                                    "side (one 16x16 token)")
    if problem is not None:
        im.close()
        raise problem
    return im


SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"II*\x00", "TIFF"),
              (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _signature(path: str) -> str:
    """The image format whose magic bytes ``path`` starts with, or ''."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in SIGNATURES if head.startswith(magic)), "")


def _decode(im, path: str) -> None:
    """Decode the first frame (``load``); truncated and corrupt data become ImageFileError."""
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        text = str(err)
        reason = "truncated" if ("truncated" in text or isinstance(err, EOFError)) else "corrupt"
        raise ImageFileError(path, reason, f"cannot be decoded ({type(err).__name__}: {text}); "
                             + ("the file is cut short: copy or download it again" if reason == "truncated"
                                else "the file is damaged: export it again")) from None


def _has_alpha(im) -> bool:
    # LoadImage's rule: an alpha band, or a palette image with a transparency entry
    return "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)


def _info(im) -> ImageInfo:
    """After ``_decode`` (a PNG reads its EXIF chunk only when decoded)."""
    w, h = im.size
    if im.getexif().get(ORIENTATION_TAG, 1) in SWAPPED_ORIENTATIONS:
        w, h = h, w
    return ImageInfo(height=h, width=w, has_alpha=_has_alpha(im), mode=im.mode, format=im.format or "")


def probe_image(path: str) -> ImageInfo:
    """Size (as displayed), alpha and mode of ``path`` after a full decode (catches truncated files, not only
    bad headers); ImageFileError with a ``reason`` when it cannot be used."""
    path = os.fspath(path)
    with _open(path) as im:
        _decode(im, path)
        return _info(im)


def _int_scale(im) -> float:
    """The full-scale value of a Pillow "I" (32-bit integer) image: 2^32 - 1 (unsigned) or 2^31 - 1 (signed) for
    a 32-bit TIFF, else 65535 (Pillow reads 16-bit PGM/PPM files as "I")."""
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258, (16,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        if int(bits) == 32:
            fmt = tags.get(339, (1,))
            fmt = fmt[0] if isinstance(fmt, tuple) else fmt
            return float(2**31 - 1) if int(fmt) == 2 else float(2**32 - 1)
    return 65535.0


def _rgb(im, int_scale: float):
    """H, W, 3 float32 in [0, 1] (numpy) from a decoded Pillow image, scaled by its range (``int_scale``: the
    full-scale value of an "I" image, read from the file before the orientation made a plain copy)."""
    import numpy as np

    mode = im.mode
    scale = 65535.0 if mode.startswith("I;16") else int_scale if mode == "I" else None
    if scale == 65535.0:
        # v x float32(1 / 65535): bit for bit what FFmpeg (ComfyUI 0.33's LoadImage) gives for 16-bit greyscale
        gray = np.clip(np.asarray(im).astype(np.float32) * np.float32(1.0 / 65535.0), 0.0, 1.0)
    elif scale is not None:
        raw = np.asarray(im)
        if scale == float(2**32 - 1):
            raw = raw.view(np.uint32)  # Pillow keeps unsigned 32-bit values in int32 storage
        gray = np.clip(raw.astype(np.float64) / scale, 0.0, 1.0).astype(np.float32)
    elif mode == "F":
        gray = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0), 0.0, 1.0)
    else:
        try:
            rgb = im.convert("RGB")
        except ValueError as err:  # e.g. LAB: Pillow has no conversion to RGB
            raise ImageFileError(getattr(im, "filename", "") or "image", "not_an_image",
                                 f"has mode {mode}, which Pillow cannot convert to RGB ({err})") from None
        return np.asarray(rgb).astype(np.float32) / 255.0  # LoadImage's exact arithmetic
    return np.repeat(gray[..., None], 3, axis=-1)


def read_image(path: str) -> LoadedImage:
    """The first frame of ``path`` as LoadImage gives it: RGB 1, 3, H, W and ``1 - alpha`` (or None).

    ImageFileError (a ValueError with ``reason``) when the file cannot be used: see ``REASONS``.
    """
    import numpy as np
    from PIL import ImageOps

    path = os.fspath(path)
    with _open(path) as im:
        _decode(im, path)
        info = _info(im)
        int_scale = _int_scale(im)
        frame = ImageOps.exif_transpose(im)  # a transposed copy (or a plain copy without orientation)
    with warnings.catch_warnings():  # Pillow's advice for palette transparency given as bytes: that is what we do
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        rgb = _rgb(frame, int_scale)
        mask = None
        if info.has_alpha:
            alpha = frame if "A" in frame.getbands() else frame.convert("RGBA")
            mask = 1.0 - np.asarray(alpha.getchannel("A")).astype(np.float32) / 255.0
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).contiguous()
    return LoadedImage(image, None if mask is None else torch.from_numpy(mask)[None, None], info)


def luminance(image_b3hw: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (Pillow's ``convert("L")`` weights) of B, 3, H, W -> B, 1, H, W."""
    r, g, b = image_b3hw[:, 0:1], image_b3hw[:, 1:2], image_b3hw[:, 2:3]
    return r * 0.299 + g * 0.587 + b * 0.114


def describe_reason(reason: str) -> str:
    return REASONS.get(reason, reason)


__all__ = ["MAX_PIXELS", "MIN_SIDE", "REASONS", "ImageFileError", "ImageInfo", "LoadedImage", "describe_reason",
           "luminance", "probe_image", "read_image"]
