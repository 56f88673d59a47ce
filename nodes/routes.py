"""The pack's server route: ``POST /acepp/convert_release`` (the front-end action of web/js).

Body ``{"workflow": <UI-format graph>}``; answers ``{"workflow", "changes"}``, or HTTP 400 with
``{"error"}`` when the graph has no released ACE++ node or cannot be mapped. The conversion is
``aceplus_host.convert_release``, the same code as ``python -m aceplus_host convert-release``.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

ROUTE = "/acepp/convert_release"


async def convert_release(request):
    from aiohttp import web

    from ..aceplus_host.convert_release import ConversionError, NotAReleasedGraph, convert

    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "the request body is not JSON; send {\"workflow\": <graph>}"}, status=400)
    workflow = body.get("workflow") if isinstance(body, dict) else None
    try:
        result = convert(workflow)
    except (NotAReleasedGraph, ConversionError) as err:
        return web.json_response({"error": str(err)}, status=400)
    log.info("ACE++: converted a released workflow (%d changes)", len(result.changes))
    return web.json_response({"workflow": result.workflow, "changes": result.changes})


def register_routes() -> bool:
    """Add the route to ComfyUI's running server; False when there is none (the pack imported in-process).

    main.py imports ``server`` and creates the PromptServer before it loads custom nodes, and adds the
    route table to the app after, so a route added here is served (also under ``/api``).
    """
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return False
    instance.routes.post(ROUTE)(convert_release)
    return True
