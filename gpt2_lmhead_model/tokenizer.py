"""GPT-2's tokenizer for MAX: a chat default, and request checks.

GPT-2 tokenizers ship no chat template, so out of the box MAX refuses every
`/v1/chat/completions` request for them. `DEFAULT_CHAT_TEMPLATE` is used
only when neither the checkpoint nor `--chat-template` provides one.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from max.pipelines.context import TextContext
from max.pipelines.context.exceptions import InputError
from max.pipelines.lib import PipelineConfig, TextTokenizer
from max.pipelines.modeling.types import TextGenerationRequest

# Role-prefixed lines, then an assistant cue for the model to continue:
#   System: You are terse.\nUser: Hi!\nAssistant:
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class GPT2Tokenizer(TextTokenizer):
    """MAX's `TextTokenizer`, plus GPT-2's chat default and input checks."""

    def __init__(
        self,
        model_path: str,
        pipeline_config: PipelineConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_path, pipeline_config, **kwargs)
        hf_config = pipeline_config.model.huggingface_config
        self._model_vocab_size = int(hf_config.vocab_size) if hf_config else 0
        # Counted once: `len()` of a fast HF tokenizer rebuilds its whole
        # vocabulary dict (4.6 ms for GPT-2's, idle), and MAX asks per request.
        self._vocab_size = max(len(self.delegate), self._model_vocab_size)
        # Precedence: --chat-template, then the checkpoint's, then ours. Ours
        # goes where MAX keeps a --chat-template, not on the HF tokenizer:
        # `max generate` reads a template there as "chat model" and would
        # then wrap a plain completion prompt in it.
        if self._chat_template is None and not self.delegate.chat_template:
            self._chat_template = DEFAULT_CHAT_TEMPLATE
            self._custom_template_provided = True

    @property
    def tokenizer_vocab_size(self) -> int:
        """Ids the model can emit: every row of its LM head.

        nanoGPT-style checkpoints pad the vocabulary past the tokenizer's
        (50304 vs 50257); a padded id is a valid output, not an error.
        """
        return self._vocab_size

    async def new_context(self, request: TextGenerationRequest) -> TextContext:
        """Refuses, with a reason, what would otherwise fail in the worker."""
        prompt = request.prompt
        if prompt is not None and len(prompt) == 0:
            raise InputError("prompt must not be empty")
        if prompt is not None and not isinstance(prompt, str):
            bad = [t for t in prompt if not 0 <= int(t) < self._model_vocab_size]
            if bad:
                raise InputError(
                    f"prompt token id {bad[0]} is outside this model's "
                    f"vocabulary [0, {self._model_vocab_size})"
                )
        params = request.sampling_params
        if params.max_new_tokens is not None and params.max_new_tokens < 1:
            raise InputError(
                f"max_tokens must be at least 1, got {params.max_new_tokens}"
            )
        for name in ("top_p", "min_p", "temperature"):
            value = getattr(params, name, None)
            if value is not None and not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value}")
        context = await super().new_context(request)
        if request.echo and request.logprobs:
            # Prompt log-probabilities come from the prompt's own forward
            # pass: a salt no other request shares keeps the prefix cache
            # from skipping any of it.
            context.cache_salt = f"{context.cache_salt or ''}echo:{uuid.uuid4()}"
        return context
