"""pyops.VQIndex (a prepared codebook) against the float64 brute force, its updates, state and errors; the
CPU int8 kernels (AMX, AVX512-VNNI) against each other. The GPU index ops have their own file
(test_vq_index_gpu.py); here CUDA cases run only where a GPU is present."""

import io

import pytest
import torch
from conftest import supported_cpu_isa_levels
from test_vq import METRICS, check_search, randn
from utils import DEVICES

import pyops
from pyops.reference import vq as reference
from pyops.vq_index import int8_supported

# (device, backend) pairs a VQIndex runs on here: the native op and the torch fallback per device, and the
# Triton op on GPU.
INDEX_BACKENDS = [("cpu", "cpu"), ("cpu", "torch")] + [("cuda", b) for b in ("cuda", "triton", "torch")
                                                       if "cuda" in DEVICES]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, K, D): one code, odd sizes, N past one 32-row AMX block with a partial tail, K past one 1024-code tile
# with a partial 16-code group, D not a multiple of 64 (padded tiles).
SHAPES = [(1, 1, 1), (37, 7, 19), (53, 1100, 67), (5, 40, 3)]


def precisions(device):
    return ("auto", "fp32") + (("fp16",) if device == "cuda" else ())


def search_fn(index, backend):
    return lambda x, k: index.search(x, k, backend=backend)


@pytest.mark.parametrize("device,backend", INDEX_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,num_codes,dim", SHAPES, ids=str)
def test_index_matches_reference(device, backend, metric, n, num_codes, dim):
    x, codebook = randn(n, dim, device=device), randn(num_codes, dim, seed=1, device=device)
    for precision in precisions(device):
        index = pyops.VQIndex(codebook, metric=metric, precision=precision)
        exact = index.precision == "fp32"
        for k in sorted({1, min(4, num_codes), min(num_codes, 40)}):
            _, i, ref_i = check_search(x, codebook, k, metric, backend, exact, search=search_fn(index, backend))
            assert (i == ref_i).float().mean() >= 0.99  # random data: near-ties are rare


@pytest.mark.parametrize("device,backend", INDEX_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_index_dtypes_and_leading_dims(device, backend, dtype):
    if dtype == torch.float64 and device == "cuda":
        pytest.skip("float64 runs on the CPU")
    x = randn(2, 23, 33, dtype=dtype, device=device)
    codebook = randn(300, 66, seed=1, dtype=dtype, device=device)[:, ::2]  # non-contiguous: the index copies
    for metric in METRICS:
        index = pyops.VQIndex(codebook, metric=metric)
        assert index.precision == ("fp32" if dtype == torch.float64 else index.precision)
        check_search(x, codebook, 5, metric, backend, index.precision == "fp32", search=search_fn(index, backend))


@pytest.mark.parametrize("device,backend", INDEX_BACKENDS)
def test_index_k_up_to_128_and_ties(device, backend):
    codebook = randn(300, 24, seed=1, device=device)
    codebook[[9, 31, 44]] = codebook[3].clone()  # four identical codes
    x = codebook[3] + 0.01 * randn(20, 24, seed=2, device=device)
    for metric in ("l2", "cosine"):
        index = pyops.VQIndex(codebook, metric=metric)
        _, i = index.search(x, 4, backend=backend)
        assert (i.cpu() == torch.tensor([3, 9, 31, 44])).all(), (metric, i)
        check_search(x, codebook, 128, metric, backend, index.precision == "fp32", search=search_fn(index, backend))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_index_at_every_isa_level(cpu_isa_level, dtype):
    # Built and searched at each level: int8 tiles (AMX or VNNI) where the level has them, else fp32; an int8
    # index searched at a level without int8 kernels falls back to fp32 scores.
    x, codebook = randn(53, 67, dtype=dtype), randn(1100, 67, seed=1, dtype=dtype)
    index = pyops.VQIndex(codebook)
    assert index.precision == ("int8" if int8_supported() else "fp32")
    for metric in METRICS:
        index = pyops.VQIndex(codebook, metric=metric)
        check_search(x, codebook, 5, metric, "cpu", not int8_supported(), search=search_fn(index, "cpu"))
    if cpu_isa_level in ("avx512", "amx") and int8_supported():
        torch.ops.pyops.cpu_isa("avx2")
        check_search(x, codebook, 5, "ip", "cpu", True, search=search_fn(index, "cpu"))


@pytest.mark.skipif("amx" not in supported_cpu_isa_levels(), reason="needs AMX-INT8")
@pytest.mark.parametrize("n,num_codes,dim", [(16, 16, 64), (17, 33, 65), (53, 1100, 67), (300, 2049, 1536)],
                         ids=str)
def test_amx_and_vnni_scores_agree_exactly(n, num_codes, dim):
    # Both kernels sum the same int8 products in int32 and scale them the same way: identical results.
    x, codebook = randn(n, dim), randn(num_codes, dim, seed=1)
    index = pyops.VQIndex(codebook, precision="int8")
    active = torch.ops.pyops.cpu_isa()
    try:
        out = {}
        for level in ("amx", "avx512"):
            torch.ops.pyops.cpu_isa(level)
            out[level] = index.search(x, min(9, num_codes))
            assert torch.equal(out[level][1], pyops.vq_search(x, codebook, k=min(9, num_codes))[1])
    finally:
        torch.ops.pyops.cpu_isa(active)
    assert torch.equal(out["amx"][0], out["avx512"][0]) and torch.equal(out["amx"][1], out["avx512"][1])


# ----------------------------------------------------------------------------------------------------------
# Updates, state, moves.


@pytest.mark.parametrize("device", DEVICES)
def test_updates_then_search(device):
    codebook, x = randn(500, 40, seed=1, device=device), randn(64, 40, device=device)
    index = pyops.VQIndex(codebook)

    def same_as_fresh():
        d, i = index.search(x, 5)
        fresh_d, fresh_i = pyops.VQIndex(index.codebook.clone()).search(x, 5)
        torch.testing.assert_close(d, fresh_d, rtol=0, atol=0)
        assert torch.equal(i, fresh_i)
        check_search(x, index.codebook, 5, "l2", "cpu", index.precision == "fp32", search=lambda x, k: (d, i))

    # New values for some rows (repeats included), written through the index into the shared codebook.
    rows = torch.tensor([0, 17, 17, 499, 250], device=device)
    new = x[:5] + 0.001  # each row's nearest code is now the new one
    new[2] = new[1]
    index.update_(new, rows)
    assert torch.equal(codebook[rows], new)
    same_as_fresh()
    assert (index.search(x[[0, 3, 4]], 1)[1][:, 0].cpu() == torch.tensor([0, 499, 250])).all()
    # The owner changes rows in place, then tells the index which.
    codebook[[3, 7]] = x[[10, 11]]
    with pytest.raises(ValueError, match="stale index"):
        index.search(x)
    index.update_(rows=torch.tensor([3, 7], device=device))
    same_as_fresh()
    # A new codebook of another size, then everything re-prepared after an in-place change.
    index.update_(randn(77, 40, seed=5, device=device))
    assert index.codebook.shape == (77, 40)
    same_as_fresh()
    index.codebook.mul_(2)
    index.update_()
    same_as_fresh()


@pytest.mark.parametrize("device", DEVICES)
def test_stale_index_after_resize_is_named(device):
    codebook = randn(100, 16, seed=1, device=device)
    index = pyops.VQIndex(codebook)
    index.codebook.resize_(50, 16)
    with pytest.raises(ValueError, match="VQIndex.search: .*stale index"):
        index.search(randn(3, 16, device=device))
    # The native op, handed a codebook the prepared data does not fit, names the argument and the cause.
    with pytest.raises(ValueError, match="vq_index_search: (stat|packed) must have shape .*stale index"):
        torch.ops.pyops.vq_index_search(randn(3, 16, device=device), randn(50, 16, device=device), index.packed,
                                        index.code_scale, index.stat, 1, "l2")


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip_and_moves(device):
    codebook, x = randn(200, 24, seed=1, device=device), randn(30, 24, device=device)
    index = pyops.VQIndex(codebook, metric="cosine")
    buf = io.BytesIO()
    torch.save(index.state_dict(), buf)
    assert set(index.state_dict()) == {"codebook", "_extra_state"}  # prepared data is rebuilt, not saved
    other = pyops.VQIndex(randn(200, 24, seed=9, device=device))  # other codes, metric l2
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert other.metric == "cosine"
    for a, b in zip(index.search(x, 3), other.search(x, 3)):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="codebook"):
        pyops.VQIndex(randn(10, 24, device=device)).load_state_dict(index.state_dict())
    # Moves and casts re-prepare for the new device / dtype.
    moved = pyops.VQIndex(codebook).to("cpu")
    assert moved.packed.device.type == "cpu"
    check_search(x.cpu(), codebook.cpu(), 3, "l2", "cpu", moved.precision == "fp32", search=search_fn(moved, None))
    as64 = pyops.VQIndex(codebook.cpu()).double()
    assert as64.precision == "fp32" and as64.stat.dtype == torch.float64
    check_search(x.cpu().double(), codebook.cpu().double(), 3, "l2", "cpu", True, search=search_fn(as64, None))


def test_vector_quantizer_reuses_the_index_in_eval():
    vq = pyops.VectorQuantizer(dim=24, codebook_size=300, codebook="learned")
    x = randn(4, 10, 24)
    vq.eval()
    out, idx, _ = vq(x)
    index = vq._index_cache[1]
    vq(x)
    assert vq._index_cache[1] is index  # the codebook is unchanged: reused
    assert torch.equal(idx, pyops.vq_search(x, vq.codebook.detach())[1][..., 0])
    with torch.no_grad():
        vq.embed[idx[0, 0]] += 5  # an optimizer step would do the same: an in-place change
    _, idx2, _ = vq(x)
    assert vq._index_cache[1] is not index
    assert torch.equal(idx2, pyops.vq_search(x, vq.codebook.detach())[1][..., 0])
    vq.train()
    vq(x)
    assert "_index_cache" not in vq.__dict__ and "_index_cache" not in vq.state_dict()


# ----------------------------------------------------------------------------------------------------------
# Bad input, opcheck, compile.


def test_bad_arguments_are_named():
    codebook = randn(40, 8, seed=1)
    index = pyops.VQIndex(codebook)
    cases = [
        (ValueError, "VQIndex.search: x must have shape", lambda: index.search(randn(3, 9))),
        (TypeError, "VQIndex.search: x has dtype", lambda: index.search(randn(3, 8).double())),
        (ValueError, "VQIndex.search: k=41 is out of range", lambda: index.search(randn(3, 8), 41)),
        (ValueError, "VQIndex.search: x has non-finite", lambda: index.search(torch.full((2, 8), float("nan")))),
        (ValueError, "VQIndex: codebook is empty", lambda: pyops.VQIndex(codebook[:0])),
        (ValueError, "VQIndex: codebook has non-finite", lambda: pyops.VQIndex(codebook.masked_fill(
            codebook > 1, float("inf")))),
        (ValueError, "VQIndex: codebook must have shape", lambda: pyops.VQIndex(codebook[0])),
        (TypeError, "VQIndex: codebook must be a floating", lambda: pyops.VQIndex(codebook.long())),
        (ValueError, "VQIndex: unknown metric", lambda: pyops.VQIndex(codebook, metric="l1")),
        (ValueError, "VQIndex: unknown precision", lambda: pyops.VQIndex(codebook, precision="int4")),
        (ValueError, "VQIndex: precision='bf16' is a GPU precision", lambda: pyops.VQIndex(codebook,
                                                                                           precision="bf16")),
        (TypeError, "VQIndex: a float64 codebook", lambda: pyops.VQIndex(codebook.double(), precision="int8")),
        (ValueError, "VQIndex.update_: rows has values outside", lambda: index.update_(rows=torch.tensor([40]))),
        (TypeError, "VQIndex.update_: rows must be", lambda: index.update_(rows=torch.tensor([1.0]))),
        (ValueError, "VQIndex.update_: codes must have shape", lambda: index.update_(randn(2, 7),
                                                                                    torch.tensor([0, 1]))),
        (ValueError, "VQIndex.update_: codes has non-finite", lambda: index.update_(torch.full((1, 8), float("nan")),
                                                                                   torch.tensor([0]))),
    ]
    if not int8_supported():
        cases.append((RuntimeError, "precision='int8' needs", lambda: pyops.VQIndex(codebook, precision="int8")))
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


@pytest.mark.skipif(not int8_supported(), reason="needs the CPU int8 kernels")
def test_native_pack_checks():
    codebook = randn(40, 70, seed=1)
    index = pyops.VQIndex(codebook, precision="int8")
    assert index.packed.shape == (3, 32, 16, 4) and index.code_scale.shape == (48,)  # D padded to 128
    pack = torch.ops.pyops.vq_index_pack
    with pytest.raises(ValueError, match="vq_index_pack: rows has value 40"):
        pack(codebook, torch.tensor([40]), index.packed, index.code_scale)
    with pytest.raises(ValueError, match=r"vq_index_pack: packed must be a contiguous \[3, 32, 16, 4\]"):
        pack(codebook, torch.tensor([0]), index.packed[:2], index.code_scale)
    with pytest.raises(ValueError, match=r"vq_index_pack: code_scale must be a contiguous \[48\]"):
        pack(codebook, torch.tensor([0]), index.packed, index.code_scale[:40])
    with pytest.raises(TypeError, match="vq_index_pack: codebook must be float32, float16 or bfloat16"):
        pack(codebook.double(), torch.tensor([0]), index.packed, index.code_scale)
    search = torch.ops.pyops.vq_index_search
    x = randn(3, 70)
    with pytest.raises(TypeError, match="vq_index_search: packed must be uint8"):
        search(x, codebook, index.packed.float(), index.code_scale, index.stat, 1, "l2")
    with pytest.raises(TypeError, match="vq_index_search: stat must be float32"):
        search(x, codebook, index.packed, index.code_scale, index.stat.double(), 1, "l2")
    with pytest.raises(ValueError, match=r"vq_index_search: code_scale must be a contiguous \[48\] tensor"):
        search(x, codebook, index.packed, index.code_scale[:16], index.stat, 1, "l2")
    with pytest.raises(ValueError, match="vq_index_search: k=0 is out of range"):
        search(x, codebook, index.packed, index.code_scale, index.stat, 0, "l2")


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_opcheck(precision):
    codebook, x = randn(70, 33, seed=1), randn(9, 33)
    index = pyops.VQIndex(codebook, precision=precision)
    torch.library.opcheck(torch.ops.pyops.vq_index_search,
                          (x, codebook, index.packed, index.code_scale, index.stat, 3, "cosine"))
    if index.precision == "int8":
        torch.library.opcheck(torch.ops.pyops.vq_index_pack,
                              (codebook, torch.tensor([1, 5]), index.packed.clone(), index.code_scale.clone()))


def test_compile_fullgraph():
    codebook, x = randn(70, 33, seed=1), randn(9, 33)
    index = pyops.VQIndex(codebook)
    compiled = torch.compile(lambda t: index.search(t, 3), fullgraph=True)
    for a, b in zip(compiled(x), index.search(x, 3)):
        assert torch.equal(a, b)


def test_reference_agreement_on_gaussian_data():
    # The bar: 100% top-1 agreement with an fp32 brute force on Gaussian data (D = 1536 as VQRAE).
    codebook, x = randn(4096, 1536, seed=1), randn(256, 1536)
    ref = reference.vq_search(x, codebook, 1, "l2")[1]
    assert torch.equal(pyops.VQIndex(codebook).search(x)[1], ref)
