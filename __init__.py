"""ACE++ for ComfyUI: LCU++ context filling on FLUX.1-Fill-dev.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. Outside
ComfyUI (the trainer, ``aceplus_core`` on its own, the test runner) importing it
does nothing, so the pure-torch parts stay usable alone.
"""

import importlib.util
import logging

log = logging.getLogger(__name__)

__all__ = []

if importlib.util.find_spec("comfy_api") is not None:  # inside ComfyUI
    if importlib.util.find_spec("comfy_api.v0_0_2") is None:
        raise ImportError(
            "ComfyUI-ACEPlusPlus requires a newer version of ComfyUI (one with comfy_api.v0_0_2, "
            "ComfyUI 0.3.75 or later). Please update ComfyUI."
        )
    from .nodes import comfy_entrypoint  # noqa: F401
    from .nodes.routes import register_routes

    # The front-end extension (web/js): "Convert to ACE++ (this pack)" for released ACE++ graphs,
    # served by ComfyUI as /extensions/<pack>/js/...; it calls the route registered here.
    WEB_DIRECTORY = "./web"
    register_routes()

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
