"""Shared pytest setup.

Without a CUDA GPU the Triton kernels run through Triton's interpreter, which
must be switched on before triton is first imported (kernels decide at import
time). With a GPU the compiled kernels are tested instead.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The project's machines reach no Hugging Face hub: fail fast instead of retrying (QA data of the RULER tasks).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
