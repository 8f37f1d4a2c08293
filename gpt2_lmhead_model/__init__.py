"""GPT2LMHeadModel as a MAX custom architecture.

max serve --custom-architectures gpt2_lmhead_model --model-path distilbert/distilgpt2
"""

from .arch import gpt2_arch
from .serving import install_into_max_serve

ARCHITECTURES = [gpt2_arch]

install_into_max_serve()

__all__ = ["ARCHITECTURES", "gpt2_arch"]
