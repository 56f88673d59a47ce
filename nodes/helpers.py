"""Small helper nodes: crop-back for graphs that sample with stock KSampler, and the reference chain."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..aceplus_core import to_bchw
from . import validation
from .sampler import crop_back_inputs, finish
from .types import Layout, References


def append_reference(image, references):
    """A new tuple: the earlier references, then ``image`` (BCHW); the input tuple is not changed."""
    return tuple(references or ()) + (to_bchw(image),)


class CropBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ACEPP_CropBack",
            display_name="ACE++ Crop Back",
            category="ACE++",
            description="Cuts the target out of a decoded ACE++ canvas, resizes it to the edit image's size and "
                        "keeps every pixel outside the mask from the input. For graphs that sample with stock "
                        "KSampler + VAE Decode instead of ACE++ Sampler.",
            inputs=[
                io.Image.Input("canvas", tooltip="The decoded canvas (VAE Decode of the sampled ACE++ latent)."),
                Layout.Input("layout", tooltip="layout from ACE++ Conditioning."),
                *crop_back_inputs(),
            ],
            outputs=[io.Image.Output("image_out", display_name="image", tooltip="The result at the edit image's size.")],
        )

    @classmethod
    def execute(cls, canvas, layout, composite, feather) -> io.NodeOutput:
        validation.check_canvas(canvas, layout, "ACE++ Crop Back")
        return io.NodeOutput(finish(canvas, layout, composite, feather))


class AddReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ACEPP_AddReference",
            display_name="ACE++ Add Reference",
            category="ACE++",
            description="Appends a reference image to a list of references (any sizes), for ACE++ Conditioning's "
                        "more_references input. Chain one per reference; they are placed left to right.",
            inputs=[
                io.Image.Input("image", tooltip="The reference image to add."),
                References.Input("references", optional=True, tooltip="References so far (from another Add Reference)."),
            ],
            outputs=[References.Output("references_out", display_name="references", tooltip="The references with this image appended.")],
        )

    @classmethod
    def execute(cls, image, references=None) -> io.NodeOutput:
        validation.check_image(image, "image", "ACE++ Add Reference")
        return io.NodeOutput(append_reference(image, references))
