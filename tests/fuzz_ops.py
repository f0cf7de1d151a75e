"""The fuzz table of tests/test_fuzz.py: one ``Case`` per public op or module. Imported by the test (which draws
specs with the hypothesis strategies) and by tests/fuzz_worker.py (which builds the tensors and runs the op).

A spec is plain data (sizes, a dtype name, a seed, layout choices, and for an invalid input the mutation), so a
failing input prints as a dict and replays in any process. Per case:

- ``valid``: a strategy of specs; ``build(spec)`` turns one into the op's arguments (float64 tensors drawn from
  ``spec["seed"]``, cast to ``spec["dtype"]``), ``call(backend, **args)`` runs the op and returns its outputs.
  The default backend (the native CPU kernels here) must match the float64 reference (``backend="torch"`` on the
  float64 arguments, or ``reference``) under tests/utils.py's 3x rule, outputs and the gradients of ``grads``.
- ``bad``: ``{argument: mutations}``; a mutation turns one argument of a valid input invalid (a wrong rank,
  size, dtype or device, NaN/inf, a wrong kind, an out-of-range value) and the op must raise the mutation's
  exception type with the argument's name in the message.

Adding an op is one entry in CASES at the end of this file.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from hypothesis import strategies as st

import pyops
from pyops.reference import anchors as ref_anchors
from pyops.reference import vq as ref_vq

FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
ALL_DTYPES = tuple(FLOATS)
FP32_64 = ("float32", "float64")

# ----------------------------------------------------------------------------------------------------------
# Mutations: (kind, the exception it must raise). A mutation is drawn as (argument, kind, parameter).

EXPECT = {
    "rank+": ValueError,  # one more leading dimension
    "rank-": ValueError,  # one dimension fewer
    "rank0": ValueError,  # a 0-dim tensor
    "grow": ValueError,  # dimension `parameter` (of the declared list) one larger (or 2 larger: see _grow)
    "empty": ValueError,  # dimension `parameter` of size 0
    "int": TypeError,  # int32 instead of floating point
    "float": TypeError,  # another floating dtype than its peers'
    "meta": ValueError,  # on the meta device: not the first tensor's device
    "nan": ValueError,
    "inf": ValueError,
    "list": TypeError,  # a Python list instead of a tensor
    "value": ValueError,  # an int / float / string argument set to `parameter`
    "type": TypeError,  # a non-tensor argument of the wrong kind (`parameter`)
    "index": ValueError,  # an index tensor with one entry out of range (`parameter`: the bad value)
    "zero": ValueError,  # all zeros (a zero extent, a zero vector where one is not allowed)
}


@dataclass
class Case:
    valid: st.SearchStrategy
    build: Callable[[dict], dict]  # spec -> the op's arguments (tensors already in spec["dtype"])
    call: Callable[..., Sequence[torch.Tensor]]  # (backend, **arguments) -> outputs
    grads: Tuple[str, ...] = ()  # arguments that get gradients (compared with the reference's)
    bad: Dict[str, Sequence] = field(default_factory=dict)  # argument -> mutations ((kind, parameter) or kind)
    layout: Tuple[str, ...] = ()  # tensor arguments drawn non-contiguous or expanded
    reference: Optional[Callable] = None  # (**float64 arguments) -> outputs; default call("torch", ...)
    compare: Optional[Callable] = None  # (got, exact, same, dtype, args) -> None; default _compare
    name_in_message: Dict[str, str] = field(default_factory=dict)  # argument -> the name its errors use
    # The gradient floor (tests/utils.py's FLOOR) times this: a documented, measured gap (see the entries).
    grad_floor: float = 1.0
    # (args) -> the size of the terms a gradient sums relative to the result, one number or {gradient: number}:
    # the floor is relative to the result's size, so a gradient whose terms cancel to ~0 would otherwise be held
    # to a bound below fp32's resolution (an fp32 sum of n terms of size t is good to about sqrt(n) eps t).
    grad_scale: Optional[Callable[[dict], object]] = None


def _gen(spec) -> torch.Generator:
    return torch.Generator().manual_seed(spec["seed"])


def randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def rand(g, *shape, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)


def seeds():
    return st.integers(0, 2**31 - 1)


def dims(lo=0, hi=9):
    """Sizes with 0, 1 and odd sizes well represented."""
    return st.one_of(st.sampled_from([0, 1, 1, 2, 3, 5, 7]), st.integers(lo, hi)).filter(lambda v: lo <= v <= hi)


# ----------------------------------------------------------------------------------------------------------
# Layouts and casts.


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """t's values in a strided view (every other element of the last dim), still differentiable to t."""
    if t.dim() == 0:
        return t
    buf = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1] + 1)
    buf = buf.index_copy(-1, torch.arange(0, 2 * t.shape[-1], 2), t)
    return buf[..., 0:2 * t.shape[-1]:2]


def _expand(t: torch.Tensor) -> torch.Tensor:
    """Row 0 of t repeated along dim 0 as a stride-0 view (the values change: every row is row 0)."""
    if t.dim() == 0 or t.shape[0] == 0:
        return t
    return t[:1].expand(t.shape)


LAYOUTS = {"plain": lambda t: t, "noncontig": _noncontig, "expand": _expand,
           "transposed": lambda t: t.mT.contiguous().mT if t.dim() >= 2 else t}


def _cast(v, dtype):
    if isinstance(v, torch.Tensor):
        return v.to(dtype) if v.is_floating_point() else v
    if isinstance(v, (list, tuple)):
        return type(v)(_cast(x, dtype) for x in v)
    if isinstance(v, dict):
        return {k: _cast(x, dtype) for k, x in v.items()}
    return v


def _tensors(v):
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)


def _flat_outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    result = []
    for o in out:
        result.extend(_flat_outputs(o) if isinstance(o, (list, tuple)) else [o])
    return result


# ----------------------------------------------------------------------------------------------------------
# Running a case.


def _prepare(case: Case, spec: dict, dtype: torch.dtype, grad: bool):
    """(the op's arguments in dtype with spec's layouts, the leaves that get gradients)."""
    args = _cast(case.build(spec), dtype)
    leaves = {}
    for name in case.grads if grad else ():
        v = args.get(name)
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            leaves[name] = v.detach().clone().requires_grad_()
            args[name] = leaves[name]
        elif isinstance(v, list):  # a list of tensors (hexplane's planes)
            args[name] = [t.detach().clone().requires_grad_() for t in v]
            leaves.update({f"{name}[{i}]": t for i, t in enumerate(args[name])})
    for name, how in spec.get("layout", {}).items():
        if isinstance(args.get(name), torch.Tensor):
            args[name] = LAYOUTS[how](args[name])
    return args, leaves


def _run(case: Case, spec: dict, dtype: torch.dtype, backend, grad: bool, reference: bool = False):
    args, leaves = _prepare(case, spec, dtype, grad)
    fn = case.reference if reference and case.reference is not None else None
    out = fn(**args) if fn is not None else case.call(backend, **args)
    outs = [o for o in _flat_outputs(out) if isinstance(o, torch.Tensor)]
    grads = {}
    if leaves:
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        diff = [o for o in outs if o.requires_grad]
        if diff:
            loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in diff)
            got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            grads = {n: (torch.zeros_like(leaves[n]) if v is None else v) for n, v in zip(leaves, got)}
    return [o.detach() for o in outs], grads, args


def assert_close_nan(name, got, exact, same, dtype, floor=1.0):
    """tests/utils.py's assert_close where the reference is finite; NaN and inf where it has them. ``floor``
    scales the rule's floor (only for a documented gap)."""
    import utils

    assert got.shape == exact.shape, f"{name}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    bad = ~torch.isfinite(exact)
    if bad.any():
        g, e = got.double()[bad], exact[bad]
        assert torch.equal(torch.isnan(g), torch.isnan(e)) and torch.equal(g[~torch.isnan(g)], e[~torch.isnan(e)]), (
            f"{name}: non-finite values differ from the reference's")
        keep = ~bad
        got, exact, same = got[keep], exact[keep], same[keep]
    assert torch.isfinite(got).all(), f"{name}: non-finite values where the reference is finite"
    saved = utils.FLOOR[dtype]
    utils.FLOOR[dtype] = saved * floor
    try:
        utils.assert_close(name, got, exact, same, dtype)
    finally:
        utils.FLOOR[dtype] = saved


def _compare(got, exact, same, dtype, args):
    assert len(got) == len(exact), f"{len(got)} outputs, the reference has {len(exact)}"
    for i, (g, e, s) in enumerate(zip(got, exact, same)):
        if e.is_floating_point():
            assert_close_nan(f"output {i}", g, e, s.to(g.dtype), dtype)
        else:
            assert torch.equal(g, e), f"output {i}: {g} != {e}"


def run_valid(case: Case, spec: dict) -> dict:
    dtype = FLOATS[spec["dtype"]]
    grad = bool(case.grads)
    got, got_g, args = _run(case, spec, dtype, None, grad)
    exact, exact_g, _ = _run(case, spec, torch.float64, "torch", grad, reference=True)
    if dtype == torch.float64:
        same, same_g = exact, exact_g
    else:
        same, same_g, _ = _run(case, spec, dtype, "torch", grad, reference=True)
    if (case.compare or _compare)(got, exact, same, dtype, args) is False:
        return {"outputs": len(got), "grads": 0}  # a boundary case whose gradients are not comparable
    scales = case.grad_scale(args) if case.grad_scale else {}
    for name in exact_g:
        hint = scales.get(name, 1.0) if isinstance(scales, dict) else scales
        floor = max(case.grad_floor, hint)
        assert name in got_g, f"no gradient for {name}"
        assert_close_nan(f"grad {name}", got_g[name], exact_g[name], same_g[name].to(got_g[name].dtype),
                         got_g[name].dtype, floor)
    return {"outputs": len(got), "grads": len(got_g)}


def _grow(t: torch.Tensor, dim: int, by: int = 1) -> torch.Tensor:
    dim %= t.dim()
    shape = list(t.shape)
    shape[dim] += by
    return torch.cat([t, torch.ones(shape[:dim] + [by] + shape[dim + 1:], dtype=t.dtype)], dim)


def _mutate(v, kind: str, param, declared):
    if kind == "rank+":
        return v.unsqueeze(0)
    if kind == "rank-":
        return v.reshape(-1)[0] if v.dim() == 1 else v.reshape(-1, *v.shape[2:])
    if kind == "rank0":
        return torch.ones((), dtype=v.dtype)
    if kind == "grow":
        dim, by = param if isinstance(param, tuple) else (param, 1)
        return _grow(v, dim, by)
    if kind == "empty":
        return v.narrow(param, 0, 0)
    if kind == "int":
        return v.to(torch.int32)
    if kind == "zero":
        return torch.zeros_like(v)
    if kind == "float":
        return v.to(torch.float64 if v.dtype != torch.float64 else torch.float32)
    if kind == "meta":
        return v.to("meta")
    if kind in ("nan", "inf"):
        v = v.clone(memory_format=torch.contiguous_format)
        if v.numel():
            v.view(-1)[(param or 0) % v.numel()] = math.nan if kind == "nan" else -math.inf
        return v
    if kind == "list":
        return v.tolist()
    if kind in ("value", "type"):
        return param
    if kind == "index":
        v = v.clone(memory_format=torch.contiguous_format)
        if v.numel():
            v.view(-1)[0] = param
        return v
    raise ValueError(f"unknown mutation {kind!r}")


def run_invalid(case: Case, spec: dict) -> dict:
    arg, kind, param = spec["bad"]
    args = _cast(case.build(spec), FLOATS[spec["dtype"]])
    for name, how in spec.get("layout", {}).items():
        if isinstance(args.get(name), torch.Tensor):
            args[name] = LAYOUTS[how](args[name])
    v = args[arg]
    if kind not in ("value", "type") and (not isinstance(v, torch.Tensor) or (
            kind in ("nan", "inf", "index") and v.numel() == 0)):
        return {"skipped": True}  # an optional argument left out, or no element to corrupt: still valid
    args[arg] = _mutate(v, kind, param, case.bad[arg])
    want = EXPECT[kind]
    label = case.name_in_message.get(arg, arg)
    try:
        case.call(None, **args)
    except (TypeError, ValueError, RuntimeError, IndexError, NotImplementedError) as e:
        assert type(e) is want or isinstance(e, want), (
            f"{arg} {kind}: raised {type(e).__name__} ({e}), expected {want.__name__}")
        assert label in str(e), f"{arg} {kind}: the message does not name {label!r}: {e}"
        return {"raised": type(e).__name__}
    raise AssertionError(f"{arg} {kind} ({param!r}): no exception")


def run(name: str, kind: str, spec) -> dict:
    """The worker's entry point."""
    if name.startswith("_selftest"):
        return _selftest(name, spec)
    case = CASES[name]
    torch.manual_seed(spec.get("seed", 0))
    return run_valid(case, spec) if kind == "valid" else run_invalid(case, spec)


def _selftest(name: str, spec):
    """Deliberate failures for tests/test_fuzz.py's worker tests."""
    import ctypes
    import os
    import time

    if name == "_selftest_abort":
        os.abort()
    if name == "_selftest_segfault":
        ctypes.string_at(0)
    if name == "_selftest_hang":
        time.sleep(3600)
    if name == "_selftest_fail":
        raise AssertionError("deliberate failure")
    return {"pid": os.getpid()}


def invalid(case_valid: st.SearchStrategy, bad: Dict[str, Sequence]) -> st.SearchStrategy:
    """Specs of valid inputs with one mutation from `bad` applied."""
    muts = [(arg, *(m if isinstance(m, tuple) else (m, None))) for arg, ms in bad.items() for m in ms]
    return st.tuples(case_valid, st.sampled_from(muts), st.integers(0, 1000)).map(
        lambda t: {**t[0], "bad": (t[1][0], t[1][1], t[1][2] if t[1][1] not in ("nan", "inf") else t[2])})


def layouts(names: Sequence[str]) -> st.SearchStrategy:
    return st.fixed_dictionaries({n: st.sampled_from(sorted(LAYOUTS)) for n in names})


def specs(dtypes=ALL_DTYPES, layout=(), **fields) -> st.SearchStrategy:
    return st.fixed_dictionaries({"seed": seeds(), "dtype": st.sampled_from(dtypes), "layout": layouts(layout),
                                  **fields})


# ----------------------------------------------------------------------------------------------------------
# Derf, Derf module, derf_linear, DerfLinear.


def _reduction_scales(x, channel_dim, scalar_names, channel_names, alpha) -> dict:
    """sqrt(terms summed) per parameter gradient: all of x for a 1-element parameter, x.numel() / C per channel."""
    n = max(x.numel(), 1)
    c = max(x.shape[channel_dim % x.dim()], 1) if x.dim() else 1
    out = {name: math.sqrt(n / c) for name in channel_names}
    out.update({name: math.sqrt(n if alpha.numel() == 1 else n / c) for name in scalar_names})
    return out

SCALAR_PARAM_BAD = ("rank+", ("grow", (0, 1000)), "int", "meta", "nan", "inf", "list")  # never 1 or C elements


def build_derf(s):
    g = _gen(s)
    shape = s["shape"]
    cd = s["channel_dim"] % len(shape)
    c = shape[cd]
    x = randn(g, *shape, scale=2.0)
    if s.get("nonfinite") and x.numel():
        x.view(-1)[s["seed"] % x.numel()] = (math.nan, math.inf, -math.inf)[s["seed"] % 3]
    n = c if s["per_channel"] else 1
    args = dict(x=x, alpha=rand(g, n, lo=0.2, hi=1.5), shift=randn(g, n, scale=0.3), channel_dim=s["channel_dim"])
    args["weight"] = randn(g, c) if s["affine"] else None
    args["bias"] = randn(g, c) if s["affine"] else None
    return args


def call_derf(backend, x, alpha, shift, weight, bias, channel_dim):
    return pyops.derf(x, alpha, shift, weight, bias, channel_dim=channel_dim, backend=backend)


_derf_shape = st.lists(dims(0, 9), min_size=1, max_size=4)
DERF_VALID = _derf_shape.flatmap(lambda shape: specs(
    layout=("x",), shape=st.just(shape), channel_dim=st.integers(-len(shape), len(shape) - 1),
    per_channel=st.booleans(), affine=st.booleans(), nonfinite=st.booleans()))
DERF_BAD = {"x": ("int", "list", "rank0"), "alpha": SCALAR_PARAM_BAD,
            "shift": SCALAR_PARAM_BAD, "channel_dim": (("value", 7), ("value", -9), ("type", 1.0))}


def build_derf_module(s):
    args = build_derf({**s, "channel_dim": -1 if s["channels_last"] else min(1, len(s["shape"]) - 1)})
    return {"x": args["x"], "spec": (args["x"].shape[-1 if s["channels_last"] else min(1, len(s["shape"]) - 1)],
                                     s["per_channel"], s["affine"], s["channels_last"], s["seed"])}


def call_derf_module(backend, x, spec):
    c, per_channel, affine, channels_last, seed = spec
    if not isinstance(x, torch.Tensor) or c == 0:
        m = pyops.Derf(max(c, 1), per_channel=per_channel, elementwise_affine=affine, channels_last=channels_last)
    else:
        m = pyops.Derf(c, per_channel=per_channel, elementwise_affine=affine, channels_last=channels_last,
                       dtype=x.dtype if x.is_floating_point() else None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.2)
    m.backend = backend
    return m(x)


def build_derf_linear(s):
    g = _gen(s)
    c = s["c"]
    x = randn(g, *s["lead"], c, scale=1.5)
    n = c if s["per_channel"] else 1
    return dict(x=x, alpha=rand(g, n, lo=0.2, hi=1.5), shift=randn(g, n, scale=0.3),
                weight=randn(g, c) if s["affine"] else None, bias=randn(g, c) if s["affine"] else None,
                linear_weight=randn(g, s["o"], c, scale=1 / math.sqrt(max(c, 1))),
                linear_bias=randn(g, s["o"]) if s["linear_bias"] else None)


def call_derf_linear(backend, x, alpha, shift, weight, bias, linear_weight, linear_bias):
    return pyops.derf_linear(x, alpha, shift, weight, bias, linear_weight, linear_bias, backend=backend)


DERF_LINEAR_VALID = specs(layout=("x", "linear_weight"), lead=st.lists(dims(0, 7), min_size=0, max_size=2),
                          c=dims(0, 11), o=dims(0, 11), per_channel=st.booleans(), affine=st.booleans(),
                          linear_bias=st.booleans())
DERF_LINEAR_BAD = {"x": ("int", "list"), "alpha": SCALAR_PARAM_BAD, "shift": SCALAR_PARAM_BAD,
                   "linear_weight": ("rank+", "rank-", ("grow", 1), "float", "int", "meta", "list")}


def build_derf_linear_module(s):
    args = build_derf_linear(s)
    return {"x": args["x"], "spec": (s["c"], s["o"], s["per_channel"], s["affine"], s["linear_bias"], s["seed"])}


def call_derf_linear_module(backend, x, spec):
    c, o, per_channel, affine, has_bias, seed = spec
    dtype = x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else None
    m = pyops.DerfLinear(c, o, has_bias, per_channel=per_channel, elementwise_affine=affine, backend=backend,
                         dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) - 0.3)
    return m(x)


MODULE_X_BAD = {"x": ("int", "list", "rank0")}
DERF_LINEAR_MODULE_BAD = {"x": ("int", "list", ("grow", -1))}

# ----------------------------------------------------------------------------------------------------------
# Vector quantization.


def build_vq(s):
    g = _gen(s)
    d = s["d"]
    x = randn(g, *s["lead"], d)
    codebook = randn(g, s["codes"], d)
    if s["duplicates"] and s["codes"] > 1:  # exact ties: equal distances must come back in index order
        codebook[1::2] = codebook[0]
    return dict(x=x, codebook=codebook, k=min(s["k"], s["codes"], pyops.vq.MAX_K) if s["codes"] else 1,
                metric=s["metric"], exact=s["exact"])


def call_vq(backend, x, codebook, k, metric, exact):
    return pyops.vq_search(x, codebook, k=k, metric=metric, exact=exact, backend=backend)


def ref_vq_search(x, codebook, k, metric, exact):
    d, i = ref_vq.vq_search(x.reshape(-1, x.shape[-1]), codebook, k, metric)
    return d.reshape(*x.shape[:-1], k), i.reshape(*x.shape[:-1], k)


def _search_error_bound(x, codebook, dtype, metric, exact):
    """vq_search's documented score error: about 2^-8 |x| |c| (bf16), 2^-11 (fp16, tf32), fp32 rounding else."""
    eps = {torch.bfloat16: 2**-8, torch.float16: 2**-11}.get(dtype, 2**-20)
    if dtype == torch.float64:
        eps = 1e-12
    if not exact:  # the CPU search stage may use int8 dot products (README: u = sqrt(D)/127 + D/64516, worst case)
        d = x.shape[-1]
        eps = max(eps, math.sqrt(d) / 127 + d / 64516)
    xn = x.double().norm(dim=-1, keepdim=True)
    cn = codebook.double().norm(dim=-1).max() if codebook.numel() else torch.tensor(0.0, dtype=torch.float64)
    if metric == "cosine":
        return 4 * eps * torch.ones_like(xn)
    scale = xn * cn + (cn * cn if metric == "l2" else 0) + (xn * xn if metric == "l2" else 0)
    return 4 * eps * scale + 1e-30


def compare_vq(got, exact, same, dtype, args):
    """The distances are exact for the returned codes, sorted, and within the search's error of the true k best;
    indices in index order among equal distances."""
    (d, i), (de, _) = got, exact
    x, codebook, metric = args["x"].reshape(-1, args["x"].shape[-1]), args["codebook"], args["metric"]
    assert d.shape == de.shape and i.shape == de.shape and i.dtype == torch.long
    d, i, de = d.reshape(-1, d.shape[-1]), i.reshape(-1, i.shape[-1]), de.reshape(-1, de.shape[-1])
    if not d.numel():
        return
    assert ((i >= 0) & (i < codebook.shape[0])).all(), "indices out of range"
    full = ref_vq.distances(x, codebook, metric)  # [N, K] float64 on the cast inputs
    mine = full.gather(1, i)
    tol = 1e-5 * (1 + full.abs().amax(1, keepdim=True)) if dtype != torch.float64 else 1e-10 * (
        1 + full.abs().amax(1, keepdim=True))
    assert ((d.double() - mine).abs() <= tol).all(), "returned distances are not the distances of the returned codes"
    assert (d[:, 1:] >= d[:, :-1]).all(), "distances not sorted"
    assert (i.unsqueeze(2) != i.unsqueeze(1)).sum() == i.shape[0] * i.shape[1] * (i.shape[1] - 1), "repeated codes"
    bound = _search_error_bound(x, codebook, dtype, metric, args["exact"]) + tol
    best = full.sort(dim=1).values[:, :d.shape[1]]
    assert (mine <= best + bound).all(), "a returned code is farther than the search's error from the true k-th"


VQ_VALID = specs(layout=("x", "codebook"), lead=st.lists(dims(0, 9), min_size=1, max_size=2), d=dims(1, 33),
                 codes=st.one_of(dims(1, 40), st.integers(100, 300)),
                 k=st.one_of(st.integers(1, 12), st.integers(100, pyops.vq.MAX_K)),
                 metric=st.sampled_from(ref_vq.METRICS), exact=st.booleans(), duplicates=st.booleans())
VQ_BAD = {"x": ("int", "rank0", ("grow", -1), "list", "nan", "inf"),
          "codebook": ("rank+", ("grow", 1), ("empty", 0), "float", "int", "meta", "nan", "inf", "list"),
          "k": (("value", 0), ("value", -3), ("value", 10**12), ("type", 1.5), ("type", True)),
          "metric": (("value", "L2"),), "exact": (("type", "yes"),)}


def build_vq_index(s):
    args = build_vq(s)
    args["precision"] = "fp32" if args.pop("exact") else "auto"
    return args


def call_vq_index(backend, x, codebook, k, metric, precision):
    return pyops.VQIndex(codebook, metric=metric, precision=precision).search(x, k, backend=backend)


def ref_vq_index(x, codebook, k, metric, precision):
    return ref_vq_search(x, codebook, k, metric, precision == "fp32")


def compare_vq_index(got, exact, same, dtype, args):
    """As vq_search (the index's results contract is vq_search's)."""
    compare_vq(got, exact, same, dtype, {**args, "exact": args["precision"] == "fp32"})


VQ_INDEX_BAD = {**{k: v for k, v in VQ_BAD.items() if k in ("x", "codebook", "k", "metric")},
                "precision": (("value", "int4"),)}


def build_segment_sum(s):
    g = _gen(s)
    n, segs = s["n"], s["segments"]
    idx = torch.randint(0, max(segs, 1), (n,), generator=g) if segs else torch.zeros(0, dtype=torch.long)
    if not segs:
        n = 0
    return dict(values=randn(g, n, s["d"]), indices=idx[:n], num_segments=segs)


def call_segment_sum(backend, values, indices, num_segments):
    return pyops.vq_segment_sum(values, indices, num_segments, backend=backend)


def ref_segment_sum(values, indices, num_segments):
    return ref_vq.segment_sum(values, indices, num_segments)


SEGMENT_VALID = specs(layout=("values", "indices"), n=dims(0, 40), d=dims(0, 17), segments=dims(0, 12))
SEGMENT_BAD = {"values": ("int", "rank+", "rank-", "meta", "list"),
               "indices": (("index", -1), ("index", 10**6), "float", "rank+", ("grow", 0), "meta"),
               "num_segments": (("value", -1), ("type", 2.0))}


def build_quantizer(s):
    g = _gen(s)
    return dict(x=randn(g, *s["lead"], s["dim"]), spec=(s["dim"], s["codes"], s["metric"], s["codebook"], s["seed"]))


def _quantizer(spec, backend, dtype):
    dim, codes, metric, kind, seed = spec
    torch.manual_seed(seed)
    vq = pyops.VectorQuantizer(dim, codes, metric=metric, codebook=kind, backend=backend)
    return vq.to(dtype).eval() if dtype is not None else vq.eval()


def call_quantizer(backend, x, spec):
    dtype = x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else None
    q, idx, loss = _quantizer(spec, backend, dtype)(x)
    return q, idx, loss


def compare_quantizer(got, exact, same, dtype, args):
    """The indices are a nearest code within the search's error; quantized is that code (the forward value)."""
    q, idx, loss = got
    x = args["x"]
    vq = _quantizer(args["spec"], None, x.dtype)
    codebook = vq.codebook.detach() if hasattr(vq, "codebook") else None
    assert idx.shape == x.shape[:-1] and q.shape == x.shape and torch.isfinite(loss)
    if codebook is None or not idx.numel():
        return
    metric = args["spec"][2]
    xs = x.reshape(-1, x.shape[-1]).double()
    cb = codebook.double()
    if metric == "cosine":
        xs, cb = torch.nn.functional.normalize(xs, dim=-1), torch.nn.functional.normalize(cb, dim=-1)
    full = ref_vq.distances(xs, cb, metric)
    mine = full.gather(1, idx.reshape(-1, 1))
    assert (mine <= full.min(1, keepdim=True).values + _search_error_bound(xs, cb, dtype, metric, False) + 1e-5).all()


QUANTIZER_VALID = specs(lead=st.lists(dims(0, 6), min_size=1, max_size=2), dim=dims(1, 16), codes=dims(1, 24),
                        metric=st.sampled_from(ref_vq.METRICS), codebook=st.sampled_from(("learned", "ema", "simvq")),
                        dtype=st.sampled_from(("float32", "float64")))

# ----------------------------------------------------------------------------------------------------------
# Contrastive, attribute pair, retrieve.


def build_contrastive(s):
    g = _gen(s)
    n, d = s["n"], s["d"]
    m = n if s["positives"] == "diagonal" else s["m"]
    q = torch.nn.functional.normalize(randn(g, n, d), dim=1)
    k = torch.nn.functional.normalize(randn(g, m, d), dim=1)
    args = dict(q=q, k=k, logit_scale=torch.tensor(s["scale"], dtype=torch.float64), labels=None, q_groups=None,
                k_groups=None, symmetric=s["symmetric"], reduction=s["reduction"])
    if s["positives"] == "labels" and m:
        args["labels"] = torch.randint(0, m, (n,), generator=g)
    elif s["positives"] in ("groups", "labels"):
        args["q_groups"] = torch.randint(0, 3, (n,), generator=g)
        args["k_groups"] = torch.randint(0, 3, (m,), generator=g)
    return args


def call_contrastive(backend, **kw):
    return pyops.contrastive_loss(**kw, backend=backend)


CONTRASTIVE_VALID = specs(layout=("q", "k"), n=dims(0, 17), m=dims(0, 17), d=dims(1, 19), scale=st.floats(0.0, 50.0),
                          positives=st.sampled_from(("diagonal", "labels", "groups")), symmetric=st.booleans(),
                          reduction=st.sampled_from(("mean", "sum", "none")))
CONTRASTIVE_BAD = {"q": ("int", "rank+", "rank-", "list", "nan", "inf"),
                   "k": ("float", "meta", ("grow", 1), "nan", "inf", "rank+"),
                   "logit_scale": ("meta", "int", "nan", "inf", "list"),
                   "reduction": (("value", "avg"),), "symmetric": (("type", 1),),
                   "labels": (("index", -1), ("index", 10**6), "float", ("grow", 0)),
                   "q_groups": ("float", ("grow", 0), "meta"), "k_groups": (("grow", 0),)}


def build_attribute_pair(s):
    g = _gen(s)
    shape = (s["b"], s["a"], s["l"], s["d"]) if s["tokens"] else (s["b"], s["a"], s["d"])
    args = dict(ex=randn(g, *shape), ey=randn(g, *shape), logit_scale=torch.tensor(s["scale"], dtype=torch.float64),
                mask=None)
    if s["tokens"] and s["mask"]:
        args["mask"] = torch.rand(shape[:3], generator=g) > 0.4
    return args


def call_attribute_pair(backend, ex, ey, logit_scale, mask):
    return pyops.attribute_pair_loss(ex, ey, logit_scale, mask=mask, backend=backend)


# D >= 2: at D = 1 every cosine is +-1 and the exact ex/ey gradients are 0, while the fp32 kernels' (u - cos v) / |x|
# leaves rounding noise of eps * scale / |x| (3.5x tests/utils.py's floor for seed 183, b=1, a=6, d=1, scale 3.5):
# the floor is relative to the gradient's size, which is 0 there. Not a bug; D = 1 has no use as an embedding.
ATTRIBUTE_VALID = specs(layout=("ex", "ey"), b=dims(0, 6), a=st.integers(2, 6), l=dims(1, 5), d=dims(2, 17),
                        tokens=st.booleans(), mask=st.booleans(), scale=st.floats(0.0, 30.0))
ATTRIBUTE_BAD = {"ex": ("int", "rank-", "list", "nan", "inf", ("value", torch.zeros(2, 1, 3))),
                 "ey": ("float", "meta", ("grow", 0), "nan", "inf"),
                 "logit_scale": ("rank+", "meta", "int", "nan", "inf", "list"),
                 "mask": (("grow", 2), "meta", "int")}


def build_retrieve(s):
    g = _gen(s)
    shape = (s["q"], s["a"], s["d"]) if s["a"] else (s["q"], s["d"])
    bank = randn(g, s["bank"], s["d"])
    return dict(queries=randn(g, *shape), bank=bank, k=min(s["k"], s["bank"]),
                weights=randn(g, s["a"]) if s["a"] and s["weights"] else None, metric=s["metric"], exact=s["exact"])


def call_retrieve(backend, queries, bank, k, weights, metric, exact):
    return pyops.retrieve(queries, bank, k, weights=weights, metric=metric, exact=exact, backend=backend)


def ref_retrieve(queries, bank, k, weights, metric, exact):
    from pyops.reference import contrastive as ref

    return ref.retrieve(queries, bank, k, weights, metric)


def compare_retrieve(got, exact, same, dtype, args):
    """Scores of the returned entries within the search's error of the reference's k best (ties may reorder)."""
    (d, i), (de, ie) = got, exact
    assert d.shape == de.shape and i.shape == ie.shape
    if not d.numel():
        return
    scale = 1 + de.abs().max().item()
    eps = {torch.bfloat16: 2**-6, torch.float16: 2**-9, torch.float32: 2**-16}.get(dtype, 1e-10)
    qn = args["queries"].double().norm(dim=-1).max().item() * args["bank"].double().norm(dim=-1).max().item()
    if args.get("weights") is not None:
        qn *= 1 + args["weights"].double().abs().sum().item()
    assert ((d.double() - de).abs() <= eps * (scale + qn)).all(), f"distances {d} vs reference {de}"


RETRIEVE_VALID = specs(layout=("queries", "bank"), q=dims(0, 9), a=st.sampled_from([0, 1, 2, 3]), d=dims(1, 17),
                       bank=dims(1, 30), k=st.integers(1, 10), weights=st.booleans(),
                       metric=st.sampled_from(("cosine", "ip")), exact=st.booleans())
RETRIEVE_BAD = {"queries": ("int", "rank0", ("grow", -1), "list", "nan", "inf"),
                "bank": ("rank+", ("empty", 0), "float", "meta", "nan", "inf"),
                "k": (("value", 0), ("value", -1), ("value", 10**9), ("type", 2.0)),
                "weights": (("grow", 0), "nan", "meta", "int", "rank0")}

# ----------------------------------------------------------------------------------------------------------
# HexPlane.


def build_hexplane(s):
    g = _gen(s)
    planes = []
    for level in range(s["levels"]):
        f, (rx, ry, rz, rt) = s["f"][level], s["res"][level]
        for b, a in ((ry, rx), (rz, rx), (rt, rx), (rz, ry), (rt, ry), (rt, rz)):
            planes.append(rand(g, f, b, a, lo=0.3, hi=1.3))
    n = s["n"]
    times = rand(g, n, lo=-1.2, hi=1.2) if s["times"] == "tensor" else 0.37
    aabb = torch.tensor([[1.0, 1.2, 0.8], [-1.0, -1.1, -0.9]], dtype=torch.float64)
    return dict(points=rand(g, n, 3, lo=-1.3, hi=1.3), times=times, planes=planes, aabb=aabb)


def call_hexplane(backend, points, times, planes, aabb):
    return pyops.hexplane_features(points, times, planes, aabb, backend=backend)


HEXPLANE_VALID = st.integers(1, 2).flatmap(lambda levels: specs(
    layout=("points",), levels=st.just(levels), n=dims(0, 20), times=st.sampled_from(("tensor", "float")),
    f=st.lists(dims(1, 5), min_size=levels, max_size=levels),
    res=st.lists(st.lists(dims(1, 6), min_size=4, max_size=4), min_size=levels, max_size=levels)))
HEXPLANE_BAD = {"points": ("int", "rank+", ("grow", 1), "list", "nan", "inf"),
                "times": ("float", "meta", "nan", "inf", ("grow", 0)),
                "aabb": ("rank+", "meta", "nan", "inf", ("grow", 0), "zero"),
                "planes": (("value", []), ("type", torch.zeros(3, 3, 3)))}

# ----------------------------------------------------------------------------------------------------------
# Anchors.


def build_blend(s):
    g = _gen(s)
    m = s["m"]
    tau = torch.tensor(s["tau"], dtype=torch.float64) if s["tau_tensor"] else s["tau"]
    return dict(offset=rand(g, m, lo=-1, hi=1), decay=rand(g, m, lo=-0.5, hi=3), tau=tau, lambda_decay=s["lam"],
                mode=s["mode"])


def call_blend(backend, offset, decay, tau, lambda_decay, mode):
    return pyops.anchor_blend_weight(offset, decay, tau, lambda_decay, mode, backend=backend)


BLEND_VALID = specs(layout=("offset", "decay"), m=dims(0, 40), tau=st.floats(-1.5, 1.5), tau_tensor=st.booleans(),
                    lam=st.floats(0.0, 4.0), mode=st.sampled_from(ref_anchors.BLEND_MODES))
BLEND_BAD = {"offset": ("int", "rank+", "list", "nan", "inf"), "decay": ("float", "meta", ("grow", 0), "nan", "inf"),
             "tau": (("value", math.nan), ("type", "0.5"), ("value", torch.zeros(2))),
             "lambda_decay": (("value", math.inf), ("type", None)), "mode": (("value", "both"),)}


def build_decode(s):
    g = _gen(s)
    m, k, c, h, app = s["m"], s["k"], s["c"], s["hidden"], s["appearance"]
    flags = s["flags"]
    mlp = []
    for head, (out, dist) in enumerate(zip((k, 7 * k, 3 * k), flags)):
        n_in = c + 3 + int(dist) + (app if head == 2 else 0)
        mlp += [randn(g, h, n_in, scale=0.5), randn(g, h, scale=0.1), randn(g, out, h, scale=0.5),
                randn(g, out, scale=0.1)]
    args = dict(anchors=randn(g, m, 3), feats=randn(g, m, c), offsets=randn(g, m, k, 3, scale=0.2),
                anchor_scales=rand(g, m, 6, lo=0.01, hi=0.2), cam_center=randn(g, 3, scale=3.0), mlp=mlp,
                opacity_dist=flags[0], cov_dist=flags[1], color_dist=flags[2],
                appearance=randn(g, app) if app else None,
                opacity_scale=rand(g, m) if s["opacity_scale"] else None,
                visible=(torch.rand(m, generator=g) > 0.3) if s["visible"] else None,
                blend_offset=None, blend_decay=None, tau=0.2, lambda_decay=1.5, blend_mode=s["mode"])
    if s["blend"]:
        args["blend_offset"], args["blend_decay"] = rand(g, m, lo=-1, hi=1), rand(g, m, lo=0, hi=2)
    return args


def call_decode(backend, **kw):
    return tuple(pyops.anchor_decode(**kw, backend=backend))


DECODE_VALID = specs(layout=("feats", "offsets"), m=dims(0, 9), k=dims(1, 5), c=dims(1, 9), hidden=dims(1, 9),
                     appearance=st.sampled_from([0, 0, 2]), flags=st.tuples(st.booleans(), st.booleans(),
                                                                            st.booleans()),
                     opacity_scale=st.booleans(), visible=st.booleans(), blend=st.booleans(),
                     mode=st.sampled_from(ref_anchors.BLEND_MODES))
DECODE_BAD = {"anchors": ("int", ("grow", 1), "list", "nan", "meta"), "feats": ("float", "rank+", "nan", "inf"),
              "offsets": (("grow", 2), "rank-", "meta", "nan"), "anchor_scales": (("grow", 1), "inf", "float"),
              "cam_center": ("rank+", "nan", "meta"), "mlp": (("type", []), ("type", 3)),
              "appearance": (("grow", 0), "float"), "opacity_scale": (("grow", 0), "nan"),
              "blend_mode": (("value", "sideways"),)}

# ----------------------------------------------------------------------------------------------------------
# Gaussians.


def build_gaussians(s):
    from gaussian_scenes import scene

    w, h = s["width"], s["height"]
    sc = scene(s["n"], n_cams=s["cams"], width=w, height=h, seed=s["seed"] % 10**6,
               sh_degree=s["sh_degree"])
    g = _gen(s)
    n = s["n"]
    if n:
        eye = torch.linalg.inv(sc["viewmats"][0])[:3, 3]
        fwd = sc["viewmats"][0, 2, :3]
        for i, what in enumerate(s["degenerate"]):
            j = i % n
            if what == "zero_scale":
                sc["scales"][j] = 0.0
            elif what == "negative_scale":
                sc["scales"][j] = -sc["scales"][j]
            elif what == "zero_quat":
                sc["quats"][j] = 0.0
            elif what == "on_camera":
                sc["means"][j] = eye
            elif what == "behind":
                sc["means"][j] = eye - rand(g, 1).item() * fwd
            elif what == "near_plane" and s["dtype"] == "float64":
                # 1e-6 in front of or behind it. Not exactly on it: the camera z of a point 0.01 from a camera 5 away
                # cancels from world coordinates (relative error ~5e-14 in float64, ~3e-5 in float32), so the side
                # is a rounding decision that differs between correct implementations; in float32 also means2d
                # (amplified by 1/z) is, so float32 inputs get no Gaussian this close.
                sc["means"][j] = eye + 0.01 * (1 + (1e-6 if s["seed"] % 2 else -1e-6)) * fwd
            elif what == "huge_scale":
                sc["scales"][j] = 1e3
    return dict(means=sc["means"], quats=sc["quats"], scales=sc["scales"], opacities=sc["opacities"],
                colors=sc["colors"], viewmats=sc["viewmats"], Ks=sc["Ks"], width=w, height=h,
                sh_degree=s["sh_degree"], tile_size=s["tile"], render_mode=s["render_mode"],
                rasterize_mode=s["rasterize_mode"])


def call_rasterize(backend, **kw):
    render, alphas, meta = pyops.rasterize_gaussians(**kw, backend=backend)
    return render, alphas, meta["radii"]


def ref_rasterize(**kw):
    from pyops.reference import gaussians as ref

    render, alphas, meta = ref.rasterize_gaussians(**kw)
    return render, alphas, meta["radii"]


def compare_gaussians(got, exact, same, dtype, args):
    """float64: everything matches the reference (radii exactly). float32: the radii (and so which Gaussians are
    culled and the tiles they touch) are a rounding decision at the boundaries (a radius that is an integer, a
    Gaussian on the near plane); where they equal the float64 or float32 reference's, the rest is compared."""
    radii = 2 if len(got) == 3 else 0
    if dtype == torch.float64 or torch.equal(got[radii], exact[radii]):
        _compare(got, exact, same, dtype, args)
    else:
        # Each radius agrees with the float64 or the float32 reference's up to rounding before its ceil (1 pixel,
        # more for a huge scale's 10^6-pixel radius); on the near plane (culled or not) only the fp32 one decides.
        def near(a, b):
            return (a - b).abs() <= 1 + 1e-5 * b.abs()

        assert (near(got[radii], exact[radii]) | near(got[radii], same[radii])).all(), "radii differ"
        return False


DEGENERATE = ("zero_scale", "negative_scale", "zero_quat", "on_camera", "behind", "near_plane", "huge_scale")
GAUSSIANS_VALID = specs(dtypes=FP32_64, layout=("means", "quats"), n=dims(0, 30), cams=st.integers(1, 2),
                        width=dims(1, 24), height=dims(1, 24), sh_degree=st.sampled_from([None, None, 0, 1, 3]),
                        tile=st.sampled_from([1, 4, 8, 16]), render_mode=st.sampled_from(("RGB", "D", "RGB+ED")),
                        rasterize_mode=st.sampled_from(("classic", "antialiased")),
                        degenerate=st.lists(st.sampled_from(DEGENERATE), max_size=4))
GAUSSIANS_BAD = {"means": ("int", "rank+", ("grow", 1), "list", "nan", "inf"),
                 "quats": (("grow", 1), "float", "meta", "nan"), "scales": (("grow", 0), "inf", "meta"),
                 "opacities": ("rank+", "nan"), "colors": ("rank-", "nan", ("grow", 0)),
                 "viewmats": (("grow", 1), "nan", "meta", "rank-"), "Ks": (("grow", 0), "inf", ("grow", 2)),
                 "width": (("value", 0), ("value", -5), ("type", 8.0), ("value", 2**40)),
                 "height": (("value", -1), ("value", 2**40)),
                 "tile_size": (("value", 0),), "sh_degree": (("value", 4), ("value", -1)),
                 "render_mode": (("value", "rgb"),)}


def call_project(backend, means, quats, scales, opacities, viewmats, Ks, width, height, rasterize_mode, **_):
    out = pyops.project_gaussians(means, quats, scales, viewmats, Ks, width, height, opacities=opacities,
                                  antialiased=rasterize_mode == "antialiased", backend=backend)
    return tuple(o for o in out if o is not None)


def build_sh(s):
    g = _gen(s)
    return dict(degree=s["degree"], dirs=randn(g, *s["lead"], 3),
                coeffs=randn(g, *s["lead"], (s["degree"] + 1) ** 2 + s["extra"], 3, scale=0.4))


def call_sh(backend, degree, dirs, coeffs):
    return pyops.spherical_harmonics(degree, dirs, coeffs, backend=backend)


SH_VALID = specs(dtypes=FP32_64, layout=("dirs", "coeffs"), degree=st.integers(0, 3),
                 lead=st.lists(dims(0, 12), min_size=1, max_size=2), extra=st.integers(0, 3))
SH_BAD = {"degree": (("value", 4), ("value", -1), ("type", 1.0)), "dirs": (("grow", -1), "int", "meta", "nan"),
          "coeffs": (("grow", -1), ("empty", -2), "float", "inf")}


def build_raster_pixels(s):
    """rasterize_to_pixels' inputs: a random scene through the reference's projection and tile stages."""
    from pyops.reference import gaussians as ref

    a = build_gaussians({**s, "sh_degree": None})
    w, h, tile = a["width"], a["height"], a["tile_size"]
    radii, means2d, depths, conics, _ = ref.project_ewa(a["means"], ref.quat_scale_to_covar(a["quats"], a["scales"]),
                                                        a["viewmats"], a["Ks"], w, h)
    tw, th = math.ceil(w / tile), math.ceil(h / tile)
    _, isect_ids, flatten_ids = ref.intersect_tiles(means2d, radii, depths, tile, tw, th)
    c = means2d.shape[0]
    return dict(means2d=means2d, conics=conics, colors=a["colors"][None].expand(c, -1, -1).contiguous(),
                opacities=a["opacities"][None].expand(c, -1).contiguous(), width=w, height=h, tile_size=tile,
                isect_offsets=ref.isect_offsets(isect_ids, c, tw, th), flatten_ids=flatten_ids)


def call_raster_pixels(backend, **kw):
    return pyops.rasterize_to_pixels(**kw, backend=backend)


RASTER_PIXELS_VALID = GAUSSIANS_VALID
RASTER_PIXELS_BAD = {"flatten_ids": (("index", -1), ("index", 10**6), "float", "rank+"),
                     "isect_offsets": (("index", -1), ("index", 10**6), ("grow", 1), "float"),
                     "means2d": ("rank-", "nan", "int"), "conics": (("grow", 2), "inf"),
                     "tile_size": (("value", 0),), "width": (("value", -1),)}


def build_isect(s):
    g = _gen(s)
    c, n, tw, th = s["cams"], s["n"], s["tw"], s["th"]
    bits = (tw * th).bit_length()
    cam, tile = torch.randint(0, c, (n,), generator=g), torch.randint(0, tw * th, (n,), generator=g)
    depth = torch.randint(0, 2**32, (n,), generator=g)
    keys = (((cam << bits) | tile) << 32 | depth).sort().values
    return dict(isect_ids=keys, n_cameras=c, tile_width=tw, tile_height=th)


def call_isect(backend, **kw):
    return pyops.isect_offsets(**kw, backend=backend)


ISECT_VALID = specs(dtypes=("float32",), cams=dims(1, 3), n=dims(0, 30), tw=dims(1, 6), th=dims(1, 6))
ISECT_BAD = {"isect_ids": ("float", "rank+", ("index", -1 << 40), ("index", 1 << 62)),
             "n_cameras": (("value", -1), ("value", 10**12)), "tile_width": (("value", 0), ("value", 2**40)),
             "tile_height": (("value", -3),)}


def build_intersect(s):
    """intersect_tiles' inputs: a random scene through the reference's projection."""
    from pyops.reference import gaussians as ref

    a = build_gaussians({**s, "sh_degree": None})
    radii, means2d, depths, _, _ = ref.project_ewa(a["means"], ref.quat_scale_to_covar(a["quats"], a["scales"]),
                                                   a["viewmats"], a["Ks"], a["width"], a["height"])
    tile = a["tile_size"]
    return dict(means2d=means2d, radii=radii, depths=depths, tile_size=tile,
                tile_width=math.ceil(a["width"] / tile), tile_height=math.ceil(a["height"] / tile))


def call_intersect(backend, **kw):
    return pyops.intersect_tiles(**kw, backend=backend)


INTERSECT_BAD = {"means2d": ("rank-", "int", "nan", "list"), "radii": ("float", ("grow", 1), "meta"),
                 "depths": (("grow", 1), "inf", "meta", "float"), "tile_size": (("value", 0), ("type", 1.5)),
                 "tile_width": (("value", -1), ("value", 2**40)), "tile_height": (("value", 0),)}


def build_covar(s):
    g = _gen(s)
    quats, scales = randn(g, s["n"], 4), randn(g, s["n"], 3, scale=0.5)
    if s["n"] and s["zero_quat"]:
        quats[0] = 0.0
    return dict(quats=quats, scales=scales)


def call_covar(backend, quats, scales):
    return pyops.quat_scale_to_covar(quats, scales)


def ref_covar(quats, scales):
    """The reference with fp32 math for 16-bit inputs, as the op documents."""
    from pyops.reference import gaussians as ref

    if quats.dtype in (torch.float16, torch.bfloat16):
        return ref.quat_scale_to_covar(quats.float(), scales.float()).to(quats.dtype)
    return ref.quat_scale_to_covar(quats, scales)


# ----------------------------------------------------------------------------------------------------------
# The table: one entry per public op and module.

CASES: Dict[str, Case] = {
    "derf": Case(DERF_VALID, build_derf, call_derf, grads=("x", "alpha", "shift", "weight", "bias"), bad=DERF_BAD,
                 # Parameter gradients sum x.numel() / C terms (all of x for a scalar alpha / shift) of random sign:
                 # v_shift 2.6e-6 against a 2.4e-6 bound from 900 terms (seed 1003, (9, 5, 5, 4)).
                 grad_scale=lambda a: _reduction_scales(a["x"], a["channel_dim"], ("alpha", "shift"),
                                                        ("weight", "bias"), a["alpha"])),
    "Derf": Case(specs(shape=st.lists(dims(1, 7), min_size=2, max_size=3), per_channel=st.booleans(),
                       affine=st.booleans(), channels_last=st.booleans(), layout=("x",)), build_derf_module,
                 call_derf_module, grads=("x",), bad=MODULE_X_BAD),
    "derf_linear": Case(DERF_LINEAR_VALID, build_derf_linear, call_derf_linear,
                        grads=("x", "alpha", "shift", "weight", "bias", "linear_weight", "linear_bias"),
                        bad=DERF_LINEAR_BAD),
    "DerfLinear": Case(DERF_LINEAR_VALID.filter(lambda s: s["c"] > 0), build_derf_linear_module,
                       call_derf_linear_module, grads=("x",), bad=DERF_LINEAR_MODULE_BAD),
    "vq_search": Case(VQ_VALID, build_vq, call_vq, bad=VQ_BAD, reference=ref_vq_search, compare=compare_vq),
    "vq_segment_sum": Case(SEGMENT_VALID, build_segment_sum, call_segment_sum, bad=SEGMENT_BAD,
                           reference=ref_segment_sum),
    "VQIndex": Case(VQ_VALID, build_vq_index, call_vq_index, bad=VQ_INDEX_BAD, reference=ref_vq_index,
                    compare=compare_vq_index),
    "VectorQuantizer": Case(QUANTIZER_VALID, build_quantizer, call_quantizer, bad={"x": ("int", ("grow", -1), "list")},
                            compare=compare_quantizer, reference=lambda x, spec: (x, x, x)),
    "contrastive_loss": Case(CONTRASTIVE_VALID, build_contrastive, call_contrastive, grads=("q", "k", "logit_scale"),
                             bad=CONTRASTIVE_BAD,
                             # v_q_i = s (sum_j p_ij k_j - mean of the positives' k_j): terms of size s |k| that
                             # cancel to 0 for identical rows (expanded layouts): measured 3.2e-5 at s = 50, i.e.
                             # 6e-7 of s |k| (seed 148, n=5, d=2).
                             grad_scale=lambda a: max(1.0, float(a["logit_scale"].detach()) * 2)),
    "attribute_pair_loss": Case(ATTRIBUTE_VALID, build_attribute_pair, call_attribute_pair,
                                grads=("ex", "ey", "logit_scale"), bad=ATTRIBUTE_BAD),
    "retrieve": Case(RETRIEVE_VALID, build_retrieve, call_retrieve, bad=RETRIEVE_BAD, reference=ref_retrieve,
                     compare=compare_retrieve),
    "hexplane_features": Case(HEXPLANE_VALID, build_hexplane, call_hexplane, grads=("points", "times", "planes"),
                              bad=HEXPLANE_BAD),
    "anchor_blend_weight": Case(BLEND_VALID, build_blend, call_blend, grads=("offset", "decay", "tau"), bad=BLEND_BAD),
    "anchor_decode": Case(DECODE_VALID, build_decode, call_decode,
                          grads=("anchors", "feats", "offsets", "anchor_scales", "mlp"), bad=DECODE_BAD,
                          # The hidden layer's gradient w2^T v_cov sums 7K terms of size |w2| |v_cov| (~3 here)
                          # that cancel to ~0.1: v_w1_cov 2.8e-6 against a 2.6e-6 bound (seed 105, k=4, hidden=3).
                          grad_floor=2.0),
    "project_gaussians": Case(GAUSSIANS_VALID, build_gaussians, call_project, grads=("means", "quats", "scales"),
                              compare=compare_gaussians,
                              bad={**{k: v for k, v in GAUSSIANS_BAD.items() if k in (
                                  "means", "quats", "scales", "opacities", "viewmats", "Ks")},
                                  # a huge image is valid for the projection (it allocates no image)
                                  "width": (("value", 0), ("value", -5), ("type", 8.0)),
                                  "height": (("value", -1),)}),
    "spherical_harmonics": Case(SH_VALID, build_sh, call_sh, grads=("dirs", "coeffs"), bad=SH_BAD),
    "rasterize_gaussians": Case(GAUSSIANS_VALID, build_gaussians, call_rasterize,
                                grads=("means", "quats", "scales", "opacities", "colors"), bad=GAUSSIANS_BAD,
                                # Five fp32 stages in a row: each alone meets the 3x rule (project_gaussians,
                                # rasterize_to_pixels above), but a stage's forward error (conics: 1.8x torch's)
                                # moves the next one's backward, so the composite can pass 3x torch's error when
                                # that is small. Measured: v_quats 9.5e-6 of 0.99 (80 fp32 ulps) against torch's
                                # 9.2e-7 (seed 1420, n=24, 7x14, antialiased, "D"). The floor here is 2e-5
                                # relative. Expanded means (Gaussians stacked on one point) are in since the
                                # render alpha is a sum of weights (gaussians_math.h): in the "ED" modes they
                                # had reached 15x torch's error (seed 5813976).
                                grad_floor=10.0,
                                reference=ref_rasterize, compare=compare_gaussians),
    "rasterize_to_pixels": Case(RASTER_PIXELS_VALID, build_raster_pixels, call_raster_pixels,
                                grads=("means2d", "conics", "colors", "opacities"), bad=RASTER_PIXELS_BAD),
    "isect_offsets": Case(ISECT_VALID, build_isect, call_isect, bad=ISECT_BAD),
    # float64: the tiles a Gaussian touches are a rounding decision of means2d +- radius in float32.
    "intersect_tiles": Case(specs(dtypes=("float64",), layout=("means2d", "depths"), n=dims(0, 30),
                                  cams=st.integers(1, 2), width=dims(1, 24), height=dims(1, 24), sh_degree=st.none(),
                                  tile=st.sampled_from([1, 4, 8, 16]), render_mode=st.just("RGB"),
                                  rasterize_mode=st.just("classic"), degenerate=st.lists(st.sampled_from(
                                      ("zero_scale", "zero_quat", "on_camera", "behind", "huge_scale")), max_size=3)),
                            build_intersect, call_intersect, bad=INTERSECT_BAD),
    # Plain PyTorch (the reference's own function): its checks, zero quaternions and size 0.
    "quat_scale_to_covar": Case(specs(layout=("quats", "scales"), n=dims(0, 20), zero_quat=st.booleans()),
                                build_covar, call_covar, grads=("quats", "scales"), reference=ref_covar,
                                bad={"quats": ("rank-", ("grow", 1), "int", "nan", "list"),
                                     "scales": (("grow", 0), "meta", "inf", "float")}),
}
