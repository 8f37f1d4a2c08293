"""Registers GPT2LMHeadModel with MAX's pipeline registry."""

from max.graph.weights import WeightsFormat
from max.pipelines.context import TextContext
from max.pipelines.lib import SupportedArchitecture
from max.pipelines.modeling.types import PipelineTask

from . import gguf_weights, weight_adapters
from .memory_planner import GPT2MemoryPlanner
from .model import GPT2BatchProcessor, GPT2Model
from .model_config import GPT2Config
from .tokenizer import GPT2Tokenizer

gpt2_arch = SupportedArchitecture(
    name="GPT2LMHeadModel",
    task=PipelineTask.TEXT_GENERATION,
    example_repo_ids=[
        "distilbert/distilgpt2",
        "openai-community/gpt2",
        "openai-community/gpt2-medium",
        "openai-community/gpt2-large",
        "openai-community/gpt2-xl",
        "microsoft/DialoGPT-medium",
    ],
    default_encoding=GPT2Config.DEFAULT_ENCODING,
    supported_encodings=GPT2Config.SUPPORTED_ENCODINGS,
    pipeline_model=GPT2Model,
    tokenizer=GPT2Tokenizer,
    context_type=TextContext,
    default_weights_format=WeightsFormat.safetensors,
    weight_adapters={
        WeightsFormat.safetensors: weight_adapters.convert_safetensor_state_dict,
        WeightsFormat.gguf: gguf_weights.convert_gguf_state_dict,
    },
    multi_gpu_supported=False,
    # Log-probabilities on every server (docs/SERVING.md): MAX's overlap
    # scheduler, which it would turn on by itself on a GPU, refuses them.
    # `--enable-overlap-scheduler` still turns it on for throughput.
    supports_overlap_scheduler=False,
    supports_device_graph_capture=False,
    config=GPT2Config,
    batching=GPT2BatchProcessor,
    memory_planner=GPT2MemoryPlanner,
)
