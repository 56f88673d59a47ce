"""Put the shipped workflows' example pictures where ComfyUI's Load Image reads them.

Each workflow in ``workflows/`` loads small example images (``workflows/inputs/acepp_*.png``) so that
it opens ready to run. Load Image only lists ComfyUI's input folder, so at pack load every example
that is MISSING there is copied in. A file of the same name already there is never replaced (it may be
the user's own picture), and a folder that cannot be written only costs a warning: the nodes work
without the examples.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

EXAMPLE_INPUTS = Path(__file__).resolve().parent.parent / "workflows" / "inputs"
PATTERN = "acepp_*.png"


def comfy_input_directory() -> Path:
    import folder_paths

    return Path(folder_paths.get_input_directory())


def _copy_new(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` unless ``target`` exists (checked and created in one step)."""
    try:
        out = open(target, "xb")
    except FileExistsError:
        return False
    try:
        with out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
    except BaseException:
        target.unlink(missing_ok=True)  # no half-written example that a later start would keep
        raise
    return True


def install_example_inputs(input_dir: Optional[Path] = None, source: Path = EXAMPLE_INPUTS) -> list[Path]:
    """Copy the missing example inputs into ``input_dir`` (default: ComfyUI's input folder).

    Returns the files written. Never raises for file-system problems: they are logged as a warning
    that names the folder and the manual fix.
    """
    examples = sorted(source.glob(PATTERN))
    if not examples:
        log.warning("ACE++: no example inputs (%s) in %s; the shipped workflows' Load Image nodes will show "
                    "missing files until you pick your own images. Reinstall the pack to get them back.",
                    PATTERN, source)
        return []
    target_dir = Path(input_dir) if input_dir is not None else comfy_input_directory()
    copied: list[Path] = []
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        for path in examples:
            if _copy_new(path, target_dir / path.name):
                copied.append(target_dir / path.name)
    except OSError as err:
        log.warning("ACE++: could not copy the workflows' example inputs into %s (%s: %s); %d of %d copied. "
                    "The shipped workflows need them there to run as they are: copy %s/%s into ComfyUI's input "
                    "folder by hand, or pick your own images in their Load Image nodes.",
                    target_dir, type(err).__name__, err,
                    len(copied), len(examples), source, PATTERN)
        return copied
    if copied:
        log.info("ACE++: copied %d example input(s) for the shipped workflows into %s: %s", len(copied),
                 target_dir, ", ".join(p.name for p in copied))
    else:
        log.debug("ACE++: the workflows' example inputs are already in %s", target_dir)
    return copied
