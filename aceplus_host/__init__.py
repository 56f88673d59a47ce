"""Locate, bootstrap and drive the ComfyUI host (tests, trainer, main job).

Nothing here is imported by ComfyUI when it loads the pack; it is the pack's view
of ComfyUI from outside.
"""

from .inprocess import import_comfy, init_builtin_nodes, load_pack
from .locate import (PACK_NAME, PACK_ROOT, PINNED_COMFYUI, bootstrap_comfyui, cache_dir, comfyui_version,
                     ensure_frontend, find_comfyui, find_frontend, host_frontend_version, link_models, link_pack,
                     unpack_comfyui_archive)
from .server import ComfyError, ComfyServer

__all__ = [
    "PACK_NAME", "PACK_ROOT", "PINNED_COMFYUI", "ComfyError", "ComfyServer", "bootstrap_comfyui", "cache_dir",
    "comfyui_version", "ensure_frontend", "find_comfyui", "find_frontend", "host_frontend_version", "import_comfy",
    "init_builtin_nodes", "link_models", "link_pack", "load_pack", "unpack_comfyui_archive",
]
