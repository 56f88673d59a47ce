"""ACE++ for ComfyUI: LCU++ context filling on FLUX.1-Fill-dev.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. Outside
ComfyUI (the trainer, ``aceplus_core`` on its own, the test runner) importing it
does nothing, so the pure-torch parts stay usable alone.
"""

import importlib.util
import logging

log = logging.getLogger(__name__)

__all__ = []

MIN_COMFYUI = "0.3.75"  # the oldest host CI runs; the nodes use its pinned V3 API, comfy_api.v0_0_2


def _host_too_old() -> str | None:
    """The running ComfyUI's version (or "unknown") when it is older than MIN_COMFYUI, else None."""
    try:
        from comfyui_version import __version__ as version
    except ImportError:  # releases before the version file; the V3 API decides
        version = "unknown"
    try:
        older = tuple(int(p) for p in version.split(".")[:3]) < tuple(int(p) for p in MIN_COMFYUI.split("."))
    except ValueError:  # a checkout with a non-numeric version: the V3 API decides
        older = False
    return version if older or importlib.util.find_spec("comfy_api.v0_0_2") is None else None


if importlib.util.find_spec("comfy_api") is not None:  # inside ComfyUI
    _old = _host_too_old()
    if _old is not None:
        raise ImportError(
            f"ComfyUI-ACEPlusPlus requires a newer version of ComfyUI: this one is {_old}, the pack needs "
            f"{MIN_COMFYUI} or later (with the V3 node API comfy_api.v0_0_2). Please update ComfyUI."
        )
    from .nodes import comfy_entrypoint  # noqa: F401
    from .nodes.routes import register_routes

    # The front-end extension (web/js): "Convert to ACE++ (this pack)" for released ACE++ graphs,
    # served by ComfyUI as /extensions/<pack>/js/...; it calls the route registered here.
    WEB_DIRECTORY = "./web"
    register_routes()

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
