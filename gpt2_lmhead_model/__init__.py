"""GPT2LMHeadModel as a MAX custom architecture.

max serve --custom-architectures gpt2_lmhead_model --model-path distilbert/distilgpt2
"""

from .arch import gpt2_arch
from .serving import install_request_checks

ARCHITECTURES = [gpt2_arch]

install_request_checks()

__all__ = ["ARCHITECTURES", "gpt2_arch"]
