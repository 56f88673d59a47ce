"""Draw the example input images the shipped workflows load (procedural, no external assets).

    python workflows/make_examples.py                 # (re)write workflows/inputs/*.png
    python workflows/make_examples.py --copy-to ComfyUI/input   # ...and copy them where LoadImage looks

ComfyUI's LoadImage reads from ComfyUI's ``input/`` folder; the pack copies any of these
files missing there when ComfyUI loads it (nodes/example_inputs.py), and ``--copy-to`` copies
them by hand. Replace them with your own pictures. Edit images carry their mask in the alpha channel, as ComfyUI's mask
editor saves it: transparent = the area to edit (LoadImage's MASK output is 1 there).

The pictures are deliberately small and simple (they only show what goes where); the
drawing is seeded and deterministic, so re-running gives the same files.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

INPUTS = Path(__file__).resolve().parent / "inputs"
# Edit images are EDIT_W x EDIT_H, references REF x REF: small enough that the test suite can
# sample every workflow (28 steps) on a CPU with the tiny random models.
EDIT_W, EDIT_H = 192, 160
REF = 128


def _sky_and_ground(draw: ImageDraw.ImageDraw, w: int, h: int, horizon: int) -> None:
    for y in range(horizon):
        t = y / max(horizon - 1, 1)
        draw.line([(0, y), (w, y)], fill=(int(90 + 80 * t), int(150 + 60 * t), int(230 - 20 * t)))
    for y in range(horizon, h):
        t = (y - horizon) / max(h - horizon - 1, 1)
        draw.line([(0, y), (w, y)], fill=(int(70 - 30 * t), int(140 - 40 * t), int(60 - 20 * t)))


def landscape(w: int = EDIT_W, h: int = EDIT_H) -> Image.Image:
    """Hills, a sun and a small red house: the subject of the local-editing workflows."""
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    _sky_and_ground(draw, w, h, int(h * 0.55))
    draw.ellipse([w * 0.75, h * 0.08, w * 0.9, h * 0.08 + w * 0.15], fill=(255, 220, 90))
    draw.polygon([(0, h * 0.6), (w * 0.35, h * 0.38), (w * 0.7, h * 0.62), (0, h * 0.75)], fill=(60, 120, 70))
    # The house (inside the edit mask of the local-editing examples).
    x0, y0, x1, y1 = w * 0.42, h * 0.52, w * 0.66, h * 0.78
    draw.rectangle([x0, y0, x1, y1], fill=(190, 60, 50))
    draw.polygon([(x0 - 6, y0), ((x0 + x1) / 2, y0 - h * 0.14), (x1 + 6, y0)], fill=(110, 60, 40))
    draw.rectangle([x0 + (x1 - x0) * 0.4, y0 + (y1 - y0) * 0.45, x0 + (x1 - x0) * 0.62, y1], fill=(70, 40, 30))
    return img


def house_box(w: int = EDIT_W, h: int = EDIT_H) -> tuple[int, int, int, int]:
    return int(w * 0.36), int(h * 0.3), int(w * 0.72), int(h * 0.84)


def with_mask(img: Image.Image, box: tuple[int, int, int, int], ellipse: bool = False) -> Image.Image:
    """RGBA: alpha 0 inside ``box`` (the area to edit), 255 elsewhere; RGB kept everywhere."""
    alpha = Image.new("L", img.size, 255)
    draw = ImageDraw.Draw(alpha)
    (draw.ellipse if ellipse else draw.rectangle)(box, fill=0)
    out = img.convert("RGBA")
    out.putalpha(alpha)
    return out


def contour_map(w: int = EDIT_W, h: int = EDIT_H) -> Image.Image:
    """A user control image: white contours on black (a tower where the house stands)."""
    img = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.line([(0, h * 0.6), (w * 0.35, h * 0.38), (w * 0.7, h * 0.62)], fill=(255, 255, 255), width=2)
    cx = w * 0.54
    draw.rectangle([cx - w * 0.07, h * 0.4, cx + w * 0.07, h * 0.8], outline=(255, 255, 255), width=2)
    draw.polygon([(cx - w * 0.1, h * 0.4), (cx, h * 0.24), (cx + w * 0.1, h * 0.4)], outline=(255, 255, 255))
    for i in range(3):
        y = h * (0.48 + 0.1 * i)
        draw.rectangle([cx - w * 0.025, y, cx + w * 0.025, y + h * 0.05], outline=(255, 255, 255), width=1)
    return img


def person_in_shirt(w: int = EDIT_W, h: int = EDIT_H) -> Image.Image:
    """A plain figure in a white T-shirt: the edit image of reference editing (logo / try-on)."""
    img = Image.new("RGB", (w, h), (225, 225, 232))
    draw = ImageDraw.Draw(img)
    cx = w / 2
    draw.ellipse([cx - h * 0.12, h * 0.05, cx + h * 0.12, h * 0.32], fill=(230, 185, 150))  # head
    draw.rounded_rectangle([cx - w * 0.3, h * 0.34, cx + w * 0.3, h * 1.05], radius=18, fill=(250, 250, 250),
                           outline=(180, 180, 190), width=2)  # shirt
    draw.rectangle([cx - h * 0.05, h * 0.28, cx + h * 0.05, h * 0.36], fill=(230, 185, 150))  # neck
    return img


def chest_box(w: int = EDIT_W, h: int = EDIT_H) -> tuple[int, int, int, int]:
    return int(w * 0.36), int(h * 0.45), int(w * 0.64), int(h * 0.82)


def city_street(w: int = EDIT_W, h: int = EDIT_H) -> Image.Image:
    """A street with buildings and a car, for mask-free instruction editing."""
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    _sky_and_ground(draw, w, h, int(h * 0.5))
    draw.rectangle([0, h * 0.7, w, h], fill=(80, 80, 85))
    colors = [(170, 120, 90), (140, 140, 160), (200, 180, 140), (120, 90, 80)]
    for i, x in enumerate(range(0, w, w // 4)):
        top = h * (0.18 + 0.08 * (i % 3))
        draw.rectangle([x + 4, top, x + w // 4 - 4, h * 0.7], fill=colors[i % 4])
        for wy in range(int(top) + 8, int(h * 0.66), 14):
            for wx in range(x + 10, x + w // 4 - 12, 14):
                draw.rectangle([wx, wy, wx + 6, wy + 7], fill=(250, 240, 170))
    draw.rounded_rectangle([w * 0.2, h * 0.74, w * 0.5, h * 0.88], radius=6, fill=(30, 90, 200))
    for x in (w * 0.26, w * 0.44):
        draw.ellipse([x - 7, h * 0.84, x + 7, h * 0.84 + 14], fill=(20, 20, 20))
    return img


def _reference_canvas(size: int, background=(255, 255, 255)) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    """A square reference picture, its drawer, and the scale of the 128-px design grid the drawings use."""
    img = Image.new("RGB", (size, size), background)
    return img, ImageDraw.Draw(img), size / 128


def toy_robot(size: int = REF) -> Image.Image:
    """Subject reference: a small toy robot on white."""
    img, draw, s = _reference_canvas(size)
    draw.rounded_rectangle([40 * s, 50 * s, 88 * s, 100 * s], radius=8 * s, fill=(230, 90, 40))  # body
    draw.rounded_rectangle([46 * s, 18 * s, 82 * s, 48 * s], radius=6 * s, fill=(240, 200, 60))  # head
    for x in (56, 72):
        draw.ellipse([(x - 5) * s, 28 * s, (x + 5) * s, 38 * s], fill=(30, 30, 60))
    draw.line([64 * s, 18 * s, 64 * s, 8 * s], fill=(60, 60, 60), width=max(1, int(2 * s)))
    draw.ellipse([60 * s, 4 * s, 68 * s, 12 * s], fill=(220, 40, 40))
    for x0 in (28, 88):
        draw.rectangle([x0 * s, 56 * s, (x0 + 12) * s, 86 * s], fill=(90, 140, 220))  # arms
    for x0 in (46, 70):
        draw.rectangle([x0 * s, 100 * s, (x0 + 12) * s, 120 * s], fill=(90, 90, 100))  # legs
    return img


def face_portrait(size: int = REF) -> Image.Image:
    """Portrait reference: a stylised face (hair, eyes, glasses)."""
    img, draw, s = _reference_canvas(size, (200, 215, 235))
    draw.ellipse([30 * s, 12 * s, 98 * s, 96 * s], fill=(90, 55, 35))  # hair
    draw.ellipse([36 * s, 26 * s, 92 * s, 104 * s], fill=(235, 190, 160))  # face
    draw.rectangle([52 * s, 98 * s, 76 * s, 118 * s], fill=(235, 190, 160))  # neck
    draw.rectangle([20 * s, 114 * s, 108 * s, 128 * s], fill=(60, 90, 150))  # collar
    for x in (52, 76):
        draw.ellipse([(x - 9) * s, 52 * s, (x + 9) * s, 66 * s], outline=(20, 20, 20), width=max(1, int(2 * s)))
        draw.ellipse([(x - 3) * s, 56 * s, (x + 3) * s, 62 * s], fill=(40, 80, 60))
    draw.line([61 * s, 59 * s, 67 * s, 59 * s], fill=(20, 20, 20), width=max(1, int(2 * s)))
    draw.arc([52 * s, 74 * s, 76 * s, 90 * s], 20, 160, fill=(150, 60, 60), width=max(1, int(2 * s)))
    return img


def logo(size: int = REF) -> Image.Image:
    """A logo to paste: a teal disc with a white star."""
    img, draw, _ = _reference_canvas(size)
    c, r = size / 2, size * 0.42
    draw.ellipse([c - r, c - r, c + r, c + r], fill=(20, 150, 140))
    points = []
    for i in range(10):
        rad = r * (0.8 if i % 2 == 0 else 0.35)
        a = -math.pi / 2 + i * math.pi / 5
        points.append((c + rad * math.cos(a), c + rad * math.sin(a)))
    draw.polygon(points, fill=(255, 255, 255))
    return img


def hat(size: int = REF) -> Image.Image:
    img, draw, s = _reference_canvas(size)
    draw.ellipse([14 * s, 74 * s, 114 * s, 98 * s], fill=(40, 40, 40))
    draw.rounded_rectangle([38 * s, 28 * s, 90 * s, 86 * s], radius=10 * s, fill=(40, 40, 40))
    draw.rectangle([38 * s, 66 * s, 90 * s, 76 * s], fill=(200, 30, 40))
    return img


def armchair(size: int = REF) -> Image.Image:
    img, draw, s = _reference_canvas(size)
    draw.rounded_rectangle([28 * s, 24 * s, 100 * s, 80 * s], radius=12 * s, fill=(60, 120, 80))  # back
    draw.rounded_rectangle([18 * s, 60 * s, 40 * s, 104 * s], radius=8 * s, fill=(50, 105, 70))
    draw.rounded_rectangle([88 * s, 60 * s, 110 * s, 104 * s], radius=8 * s, fill=(50, 105, 70))
    draw.rounded_rectangle([34 * s, 72 * s, 94 * s, 98 * s], radius=6 * s, fill=(70, 135, 90))  # seat
    for x in (26, 98):
        draw.rectangle([(x - 3) * s, 104 * s, (x + 3) * s, 118 * s], fill=(90, 60, 40))
    return img


def images() -> dict[str, Image.Image]:
    """Every example file name -> picture."""
    scene = landscape()
    return {
        "acepp_subject_robot.png": toy_robot(),
        "acepp_portrait_face.png": face_portrait(),
        "acepp_logo.png": logo(),
        "acepp_shirt_edit.png": with_mask(person_in_shirt(), chest_box()),
        "acepp_landscape_edit.png": with_mask(scene, house_box(), ellipse=True),
        "acepp_control_contours.png": contour_map().filter(ImageFilter.SMOOTH),
        "acepp_street.png": city_street(),
        "acepp_ref_hat.png": hat(),
        "acepp_ref_armchair.png": armchair(),
    }


def write(folder: Path = INPUTS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in images().items():
        path = folder / name
        img.save(path, optimize=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copy-to", type=Path, help="also copy the images into this folder (ComfyUI/input)")
    args = parser.parse_args()
    paths = write()
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy2(path, args.copy_to / path.name)
    for path in paths:
        print(f"{path.name}: {path.stat().st_size} bytes")  # noqa: T201 (a command-line report)


if __name__ == "__main__":
    main()
