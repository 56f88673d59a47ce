"""ComfyUI glue (V3 schema). Each module holds the nodes of one concern."""

from comfy_api.v0_0_2 import ComfyExtension, io


class ACEPlusPlusExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []


async def comfy_entrypoint() -> ACEPlusPlusExtension:
    return ACEPlusPlusExtension()
