"""A CPU emulation of how PyTorch's CUDA kernels evaluate a true division, for tests.

PyTorch's CUDA ``div_true`` kernel (``aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu``)
checks whether the divisor is a CPU scalar (a Python number, or a 0-dim CPU tensor); if so it
computes ``inv_b = opmath_t(1) / b`` once (float32 for float32 tensors) and multiplies every
element by ``inv_b``; otherwise it divides element by element (IEEE ``a / b``). The CPU kernel
always divides. :class:`CudaDivRule` applies the CUDA rule to every division evaluated inside it
on CPU tensors, treating Python-number divisors as CPU scalars and tensor divisors as tensors
on the same device as the dividend (which is what code that creates its constants with
``device=x.device`` gets on a GPU). Code whose results do not change under it computes the same
bits on CPU and CUDA."""
from __future__ import annotations

import numbers

import torch
from torch.overrides import TorchFunctionMode

_DIVS = {torch.div, torch.true_divide, torch.divide, torch.Tensor.div, torch.Tensor.__truediv__,
         torch.Tensor.true_divide, torch.Tensor.divide}


def cuda_reciprocal(b: float) -> torch.Tensor:
    """``opmath_t(1) / b`` in float32, as the CUDA kernel forms it."""
    return torch.tensor(1.0, dtype=torch.float32) / torch.tensor(b, dtype=torch.float32)


class CudaDivRule(TorchFunctionMode):
    """Inside ``with CudaDivRule():``, ``float32_tensor / python_number`` is evaluated as CUDA
    does: ``tensor * float32(1 / number)``. ``self.hits`` counts the divisions rewritten."""

    def __init__(self):
        super().__init__()
        self.hits = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DIVS and len(args) == 2 and not kwargs.get("rounding_mode"):
            a, b = args
            if (isinstance(a, torch.Tensor) and a.dtype == torch.float32 and isinstance(b, numbers.Real)
                    and not isinstance(b, bool)):
                self.hits += 1
                return torch.mul(a, cuda_reciprocal(float(b)))
        return func(*args, **kwargs)
