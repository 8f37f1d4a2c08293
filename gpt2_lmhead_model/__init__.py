"""GPT2LMHeadModel as a MAX custom architecture.

max serve --custom-architectures gpt2_lmhead_model --model-path distilbert/distilgpt2
"""

from .arch import gpt2_arch

ARCHITECTURES = [gpt2_arch]

__all__ = ["ARCHITECTURES", "gpt2_arch"]
