"""Argument checks shared by every public pyops entry point: one helper, one exception policy.

The policy (C++ host code follows it too, with TORCH_CHECK_TYPE / TORCH_CHECK_VALUE):
- ``TypeError``: an argument of the wrong kind (not a Tensor, not an int) or of the wrong dtype.
- ``ValueError``: a wrong shape or value (out of range, NaN/inf, unknown choice) and a tensor on another device
  than the op's first tensor argument (the one named in the message).
- ``RuntimeError`` only for a backend that cannot run (``pyops._backend.resolve``).

Every message starts with the op's name and names the argument: ``"vq_search: codebook has dtype ..."``.

Per-call host cost: a wrapper on a hot path (``pyops.derf``, one call per layer per step) may test the
conditions inline and call these helpers only when one fails, so the message and exception still come from
here and nothing is formatted unless it raises.
"""

from typing import Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _backend

DTypes = Union[torch.dtype, Tuple[torch.dtype, ...]]


def _dtype_names(dtypes: Tuple[torch.dtype, ...]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    op: str,
    name: str,
    t,
    shape: Optional[Sequence[Optional[int]]] = None,
    *,
    dtype: Optional[DTypes] = None,
    floating: bool = False,
    like: Optional[Tuple[str, Tensor]] = None,
    same_dtype: bool = True,
    finite: bool = False,
) -> Tensor:
    """Checks one tensor argument and returns it.

    Args:
        shape: expected sizes, ``None`` entries match any size (``None``: any shape).
        dtype: the allowed dtype(s); ``floating``: any floating-point dtype.
        like: ``(its_name, tensor)``: t must be on that tensor's device and, with ``same_dtype``, of its dtype.
        finite: no NaN/inf (a host sync, so by default only for CPU tensors: ``_backend.check_finite``).
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed:
            raise TypeError(f"{op}: {name} must be {_dtype_names(allowed)}, got {t.dtype}")
    if shape is not None and (t.dim() != len(shape) or
                              any(want is not None and have != want for have, want in zip(t.shape, shape))):
        want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{op}: {name} must have shape {want}, got {tuple(t.shape)}")
    if like is not None:
        other_name, other = like
        if t.device != other.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {other_name} is on {other.device}")
        if same_dtype and t.dtype != other.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {other_name} has {other.dtype}")
    if finite:
        _backend.check_finite(op, name, t)
    return t


def check_int(op: str, name: str, v, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """v must be a Python int (not a bool) in [minimum, maximum]; returns it."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ValueError(f"{op}: {name}={v} is out of range [{lo}, {hi}]")
    return v


def check_choice(op: str, name: str, v, choices: Iterable) -> None:
    """v must be one of `choices`."""
    choices = tuple(choices)
    if v not in choices:
        raise ValueError(f"{op}: unknown {name} {v!r}; expected one of {choices}")


def same_device(op: str, **tensors) -> None:
    """The C++ checks' device-mismatch ValueError, for the fake (meta) kernels: a tensor on the meta device sends
    the native op's dispatch to them instead of to the kernel that would reject it, and the eager fast paths rely
    on the op raising for every bad argument. The first tensor is the reference; None is skipped."""
    names = iter(tensors.items())
    first_name, first = next(names)
    for name, t in names:
        if t is not None and t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")
