"""Locate, bootstrap and drive the ComfyUI host (tests, trainer, main job).

Nothing here is imported by ComfyUI when it loads the pack; it is the pack's view
of ComfyUI from outside.
"""

from .inprocess import import_comfy, init_builtin_nodes, load_pack
from .locate import (PACK_NAME, PACK_ROOT, PINNED_COMFYUI, bootstrap_comfyui, cache_dir, find_comfyui, link_models,
                     link_pack)
from .server import ComfyError, ComfyServer

__all__ = [
    "PACK_NAME", "PACK_ROOT", "PINNED_COMFYUI", "ComfyError", "ComfyServer", "bootstrap_comfyui", "cache_dir",
    "find_comfyui", "import_comfy", "init_builtin_nodes", "link_models", "link_pack", "load_pack",
]
