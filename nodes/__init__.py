"""ComfyUI glue (V3 schema). Each module holds the nodes of one concern.

Node ids carry the permanent prefix ``ACEPP_`` so they never collide with the released ACE++ pack
(``ACEPlusLoader``, ``ACEPlusConditioning``, ...): when two packs share an id, the one loaded last
silently wins. Never rename an id: saved workflows refer to it.
"""

from comfy_api.v0_0_2 import ComfyExtension, io

from .conditioning import Conditioning
from .example_inputs import install_example_inputs
from .helpers import AddReference, CropBack
from .loader import Loader
from .sampler import Sampler

NODE_ID_PREFIX = "ACEPP_"
NODES: list[type[io.ComfyNode]] = [Loader, Conditioning, Sampler, CropBack, AddReference]


class ACEPlusPlusExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ACEPlusPlusExtension:
    """Called by ComfyUI when it loads the pack."""
    install_example_inputs()  # the shipped workflows open ready to run; never fails the load
    return ACEPlusPlusExtension()
