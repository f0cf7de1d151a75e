"""Smoke test of the benchmark suite (`make bench`): a --quick run completes and writes its files."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = ("derf", "derf_linear", "vq", "gaussians", "anchors", "morel", "models", "overhead", "contrastive",
           "attribute_pair")
    assert all(f"| {op}" in proc.stdout for op in ("derf", "vq", "gaussians", "anchor_decode", "hexplane", "morel",
                                                   "derf_linear", "models"))
    assert "pyops-cpu" in proc.stdout
    (out,) = tmp_path.glob("*-quick")  # results/<device>-quick/<op>.{md,json,csv,png}
    rows = [r for op in ops for r in json.loads((out / f"{op}.json").read_text())["rows"]]
    assert all(r["y_value_50"] > 0 for r in rows)
    derf = [r for r in rows if r["kernel_name"] == "derf"]
    assert {"pyops-cpu", "eager", "torch.compile"} <= {r["kernel_provider"] for r in derf}
    assert {r["kernel_operation_mode"] for r in derf} == {"forward", "backward", "full"}
    vq = [r for r in rows if r["kernel_name"] == "vq"]
    assert {"pyops-cpu", "pyops-cpu exact", "pyops VQIndex", "torch chunked", "faiss IndexFlatL2", "faiss IndexFlatIP",
            "vector-quantize-pytorch"} <= {r["kernel_provider"] for r in vq}
    builds = [r for r in vq if r["kernel_operation_mode"].startswith("build")]
    assert {(r["kernel_provider"], r["kernel_operation_mode"]) for r in builds} == {
        ("pyops VQIndex", "build"), ("pyops VQIndex", "build ip"), ("faiss IndexFlatL2", "build"),
        ("faiss IndexFlatIP", "build ip")}
    assert all(r["tflops"] > 0 and r["agreement"] == 1.0 for r in vq if r not in builds)
    vq_md = (out / "vq.md").read_text()
    assert [vq_md.count(f"faiss IndexFlat{m} / pyops VQIndex paired over") for m in ("L2", "IP")] == [1, 1]
    gs = [r for r in rows if r["kernel_name"] == "gaussians"]
    assert {(r["kernel_provider"], r["kernel_operation_mode"]) for r in gs} >= {
        (p, m) for p in ("pyops-cpu", "dense reference") for m in ("forward", "backward", "full")}
    for kernel, peers in (("anchor_decode", ("eager Scaffold-GS", "torch.compile Scaffold-GS")),
                          ("hexplane", ("eager 4DGS grid_sample", "torch.compile 4DGS"))):
        got = {(r["kernel_provider"], r["kernel_operation_mode"]) for r in rows if r["kernel_name"] == kernel}
        assert got >= {(p, m) for p in ("pyops-cpu",) + peers for m in ("forward", "full")}, got
    fused = {(r["kernel_provider"], r["kernel_operation_mode"]) for r in rows if r["kernel_name"] == "derf_linear"}
    assert fused == {(p, m) for p in ("pyops-cpu", "Derf kernel + F.linear", "eager", "torch.compile")
                     for m in ("forward", "full")}
    overhead = {r["x_value"] for r in rows if r["kernel_name"] == "overhead"}
    assert len(overhead) == 16 and all(r["y_value_50"] < 1000 for r in rows if r["kernel_name"] == "overhead")
    models = {(r["x_value"], r["kernel_provider"]) for r in rows if r["kernel_name"] == "models"}
    assert len(models) == 14 and {p for _, p in models} >= {"LayerNorm eager", "pyops Derf + DerfLinear"}
    morel = [r for r in rows if r["kernel_name"] == "morel"]
    assert {(r["kernel_provider"], r["kernel_operation_mode"]) for r in morel} == {
        (p, m) for p in ("pyops-cpu", "eager composition", "all keyframes resident")
        for m in ("playback", "random", "deform+decode")}
    resident = {r["kernel_provider"]: r["resident_mb"] for r in morel}
    assert (out / "morel.md").read_text().count("eager composition / pyops-cpu paired over") == 3  # one per mode
    assert 0 < resident["pyops-cpu"] < resident["all keyframes resident"]  # 2 of the 3 quick keyframes
    contrastive = {r["kernel_provider"] for r in rows if r["kernel_name"] == "contrastive"}
    assert contrastive == {"pyops-cpu", "torch eager", "torch.compile", "open_clip ClipLoss"}, contrastive
    retrieve = [r for r in rows if r["kernel_name"] == "retrieve"]
    assert {"pyops-cpu", "torch normalise+matmul+topk", "faiss IndexFlatIP"} <= {r["kernel_provider"] for r in retrieve}
    assert all(r["agreement"] == 1.0 for r in retrieve)
    pair = {(r["kernel_provider"], r["kernel_operation_mode"]) for r in rows if r["kernel_name"] == "attribute_pair"}
    assert pair == {(p, m) for p in ("pyops-cpu", "eager", "torch.compile") for m in ("forward", "full")}, pair
    for op in ops:
        assert all((out / f"{op}.{ext}").stat().st_size > 0 for ext in ("md", "csv", "png"))
        kernels = {r["kernel_name"] for r in json.loads((out / f"{op}.json").read_text())["rows"]}
        assert kernels == {"anchors": {"anchor_decode", "hexplane"}, "contrastive": {"contrastive", "retrieve"}}.get(
            op, {op})
