"""Use ComfyUI's modules inside this process (tests, the trainer, benchmarks)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

from .locate import PACK_NAME, PACK_ROOT, find_comfyui

log = logging.getLogger(__name__)


def import_comfy(comfy_dir: Path | None = None, cpu: bool | None = None) -> Path:
    """Put ComfyUI on ``sys.path`` and prepare it for import; returns its root.

    ComfyUI's folder must come FIRST on ``sys.path``: its top-level ``nodes``
    module would otherwise be shadowed by this pack's ``nodes/`` package when the
    pack root is also importable. On a machine without CUDA, ``args.cpu`` has to
    be set before anything imports ``comfy.model_management`` (it probes the GPU
    at import time).
    """
    root = Path(comfy_dir) if comfy_dir else find_comfyui()
    root_s = str(root)
    if root_s in sys.path:
        sys.path.remove(root_s)
    sys.path.insert(0, root_s)
    shadow = sys.modules.get("nodes")
    if shadow is not None and not hasattr(shadow, "NODE_CLASS_MAPPINGS"):
        del sys.modules["nodes"]  # our package got imported as `nodes`; ComfyUI's must win
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    if cpu and "comfy.model_management" not in sys.modules:
        args.cpu = True
    return root


def load_pack(name: str = PACK_NAME) -> types.ModuleType:
    """Import this pack the way ComfyUI does: as a package named after its folder."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def init_builtin_nodes() -> None:
    """Register ComfyUI's built-in and extra nodes (needed before calling node classes)."""
    import asyncio

    import nodes

    if "VAEDecode" in nodes.NODE_CLASS_MAPPINGS and len(nodes.NODE_CLASS_MAPPINGS) > 100:
        return
    result = nodes.init_extra_nodes(init_custom_nodes=False)
    if asyncio.iscoroutine(result):
        asyncio.run(result)
