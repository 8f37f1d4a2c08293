"""Custom Mojo kernels for the CPU decode path: float32 weights, and ggml
Q8_0, Q4_K and Q6_K matrices, each repacked at load into panels.

This directory is both a Python package (the graph-side wrappers) and the
Mojo package (`__init__.mojo`) that graphs load through `custom_extensions`.
"""

from pathlib import Path

KERNELS_DIR = Path(__file__).parent
"""Pass to `Graph(custom_extensions=[KERNELS_DIR])`."""
