"""Test-only ComfyUI nodes. Linked into the test server's custom_nodes; never shipped.

``ACEPPTest_RandomConditioning`` stands in for DualCLIPLoader + CLIPTextEncode: the
real T5-XXL cannot be shrunk, so the tiny models take a random 64-wide context and a
768-wide pooled vector, seeded from the prompt text so that equal prompts give equal
conditioning. ``ACEPPTest_Image`` makes an IMAGE of any shape (a 1-channel one, which no stock
node makes), for the bad-input tests.
"""

import zlib

import torch

CONTEXT_DIM = 64
POOLED_DIM = 768


class RandomConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "", "multiline": True}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})},
                # 4096 (T5-XXL's width) where Redux appends its tokens; the model must match (tiny_fill_t5)
                "optional": {"dim": ("INT", {"default": CONTEXT_DIM, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text, tokens, dim=CONTEXT_DIM):
        gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        cond = torch.randn(1, tokens, dim, generator=gen)
        pooled = torch.randn(1, POOLED_DIM, generator=gen)
        return ([[cond, {"pooled_output": pooled}]],)


class AnyImage:
    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 64, "min": 1, "max": 4096}
        return {"required": {"batch": ("INT", {"default": 1, "min": 1, "max": 64}), "height": ("INT", size),
                             "width": ("INT", size), "channels": ("INT", {"default": 3, "min": 1, "max": 8}),
                             "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, batch, height, width, channels, value):
        return (torch.full((batch, height, width, channels), float(value)),)


NODE_CLASS_MAPPINGS = {"ACEPPTest_RandomConditioning": RandomConditioning, "ACEPPTest_Image": AnyImage}
