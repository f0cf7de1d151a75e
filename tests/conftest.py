import os

import torch

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter; it must be switched on before
# triton_kernels is imported (by pyops), which happens after this file is loaded.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "subprocess: spawns a Python process (slow); deselect with -m 'not subprocess'")
