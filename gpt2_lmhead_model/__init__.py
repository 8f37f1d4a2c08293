"""GPT2LMHeadModel as a MAX custom architecture.

max serve --custom-architectures gpt2_lmhead_model --model-path distilbert/distilgpt2
"""

from .arch import gpt2_arch
from .serving import install_into_max_serve
from .worker_interpreter import spawn_workers_on_this_interpreter

ARCHITECTURES = [gpt2_arch]

install_into_max_serve()
# After the imports above, which load MAX's runtime (it sets the variable).
spawn_workers_on_this_interpreter()

__all__ = ["ARCHITECTURES", "gpt2_arch"]
