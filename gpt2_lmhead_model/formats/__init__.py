"""One format per way of holding a weight matrix: each decides, in its own
file, how the matrix is repacked at load, which graph weights it declares
and which op multiplies by it. `routing` picks one per matrix."""

from .base import StoredTensor, WeightFormat, raw_array
from .dense import Dense
from .float_panels import FloatPanels
from .ggml import MaxGGML
from .q4_k import Q4KPanels
from .q6_k import Q6KPanels
from .q8_0 import Q8Panels

__all__ = [
    "Dense",
    "FloatPanels",
    "MaxGGML",
    "Q4KPanels",
    "Q6KPanels",
    "Q8Panels",
    "StoredTensor",
    "WeightFormat",
    "raw_array",
]
