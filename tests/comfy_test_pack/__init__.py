"""Test-only ComfyUI nodes. Linked into the test server's custom_nodes; never shipped.

``ACEPPTest_RandomConditioning`` stands in for DualCLIPLoader + CLIPTextEncode: the
real T5-XXL cannot be shrunk, so the tiny models take a random 64-wide context and a
768-wide pooled vector, seeded from the prompt text so that equal prompts give equal
conditioning.
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


NODE_CLASS_MAPPINGS = {"ACEPPTest_RandomConditioning": RandomConditioning}
