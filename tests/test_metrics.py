"""pyops.metrics: PSNR and SSIM against independent float64 formulations, tOF against TecoGAN's loop."""

import importlib
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from utils import DEVICES

import pyops.metrics as metrics
from pyops.metrics import psnr, ssim, tof


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------------------- PSNR


def test_psnr_matches_formula_float64():
    img, ref = _rand(2, 3, 5, 6, 3, seed=1), _rand(2, 3, 5, 6, 3, seed=2)
    got = psnr(img, ref, data_range=2.0, reduction="none")
    assert got.shape == (2, 3) and got.dtype == torch.float64
    a, b = img.numpy(), ref.numpy()
    for i in range(2):
        for j in range(3):
            mse = np.mean((a[i, j] - b[i, j]) ** 2)
            assert got[i, j].item() == pytest.approx(10 * math.log10(4.0 / mse), rel=1e-12)
    torch.testing.assert_close(psnr(img, ref, data_range=2.0), got.mean())


@pytest.mark.parametrize("offset, db", [(0.1, 20.0), (0.01, 40.0), (0.5, 6.0206)])
def test_psnr_known_values(offset, db):
    img = _rand(4, 5, 3, seed=3) * 0.4
    assert psnr(img + offset, img).item() == pytest.approx(db, abs=1e-4)
    # data_range scales the peak: the same error at range 255 is 20 log10(255) dB higher.
    assert psnr(img + offset, img, data_range=255).item() == pytest.approx(db + 20 * math.log10(255), abs=1e-4)


def test_psnr_identical_is_inf():
    img = _rand(2, 4, 5, 3, seed=4, dtype=torch.float32)
    assert torch.isinf(psnr(img, img)) and psnr(img, img) > 0
    none = psnr(img, img.clone(), reduction="none")
    assert none.shape == (2,) and torch.isinf(none).all()
    one_off = img.clone()
    one_off[1, 0, 0, 0] += 0.5
    values = psnr(one_off, img, reduction="none")
    assert torch.isinf(values[0]) and torch.isfinite(values[1])


def test_psnr_uint8_and_half():
    u = (_rand(2, 6, 7, 3, seed=5) * 255).round().to(torch.uint8)
    v = (_rand(2, 6, 7, 3, seed=6) * 255).round().to(torch.uint8)
    got = psnr(u, v, reduction="none")  # data_range defaults to 255 for uint8
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, psnr(u.double() / 255, v.double() / 255, reduction="none").float())
    x, y = _rand(6, 7, 3, seed=7), _rand(6, 7, 3, seed=8)
    half = psnr(x.half(), y.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, psnr(x.half().float(), y.half().float()))


def test_psnr_gradcheck():
    img = _rand(2, 3, 4, 3, seed=9).requires_grad_()
    ref = _rand(2, 3, 4, 3, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: psnr(a, b, reduction="none"), (img, ref))


# ------------------------------------------------------------------------------------------------------- SSIM


def _ssim_loops(img: np.ndarray, ref: np.ndarray, window_size: int, sigma: float, data_range: float) -> float:
    """Wang et al.'s SSIM with 3DGS's zero-padded Gaussian window, written as explicit window sums in float64."""
    h, w, c = img.shape
    r = window_size // 2
    g = [math.exp(-((k - r) ** 2) / (2 * sigma**2)) for k in range(window_size)]
    g = [v / sum(g) for v in g]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    total = 0.0
    for ch in range(c):
        x, y = img[..., ch].tolist(), ref[..., ch].tolist()
        for i in range(h):
            for j in range(w):
                mx = my = sxx = syy = sxy = 0.0
                for a in range(window_size):
                    for b in range(window_size):
                        p, q = i + a - r, j + b - r
                        if 0 <= p < h and 0 <= q < w:  # outside: zero padding contributes nothing
                            wt, u, v = g[a] * g[b], x[p][q], y[p][q]
                            mx, my = mx + wt * u, my + wt * v
                            sxx, syy, sxy = sxx + wt * u * u, syy + wt * v * v, sxy + wt * u * v
                vx, vy, cov = sxx - mx * mx, syy - my * my, sxy - mx * my
                total += (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return total / (h * w * c)


def _ssim_3dgs(img, ref, window_size=11, sigma=1.5):
    """3DGS's utils/loss_utils.py formulation (2D window, one grouped conv2d per moment), channels-first."""
    c = img.shape[1]
    k = torch.arange(window_size, dtype=torch.float64) - window_size // 2
    g = torch.exp(-k**2 / (2 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] @ g[None, :]).expand(c, 1, window_size, window_size).contiguous()
    conv = lambda t: F.conv2d(t, window, padding=window_size // 2, groups=c)
    mu1, mu2 = conv(img), conv(ref)
    s1, s2, s12 = conv(img * img) - mu1**2, conv(ref * ref) - mu2**2, conv(img * ref) - mu1 * mu2
    m = ((2 * mu1 * mu2 + 0.01**2) * (2 * s12 + 0.03**2)) / ((mu1**2 + mu2**2 + 0.01**2) * (s1 + s2 + 0.03**2))
    return m.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("h, w, window_size, sigma, data_range", [(6, 7, 11, 1.5, 1.0), (5, 9, 3, 0.8, 2.0)])
def test_ssim_matches_direct_window_sums(h, w, window_size, sigma, data_range):
    img = _rand(2, h, w, 3, seed=11) * data_range
    ref = (img + 0.3 * data_range * (_rand(2, h, w, 3, seed=12) - 0.5)).clamp(0, data_range)
    got = ssim(img, ref, window_size=window_size, sigma=sigma, data_range=data_range, reduction="none")
    assert got.shape == (2,) and got.dtype == torch.float64
    for n in range(2):
        want = _ssim_loops(img[n].numpy(), ref[n].numpy(), window_size, sigma, data_range)
        assert abs(got[n].item() - want) < 1e-6


def test_ssim_matches_3dgs_formulation():
    img, ref = _rand(3, 24, 20, 3, seed=13), _rand(3, 24, 20, 3, seed=14)
    ref = 0.6 * img + 0.4 * ref
    want = _ssim_3dgs(img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2))
    torch.testing.assert_close(ssim(img, ref, reduction="none"), want, rtol=0, atol=1e-12)
    # float32 on the same data: the separable window sums agree with the 2D ones to float32 rounding.
    torch.testing.assert_close(ssim(img.float(), ref.float()), want.mean().float(), rtol=0, atol=1e-5)


def test_ssim_properties():
    img, other = _rand(2, 16, 16, 3, seed=15), _rand(2, 16, 16, 3, seed=16)
    torch.testing.assert_close(ssim(img, img, reduction="none"), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ssim(img, other, reduction="none"), ssim(other, img, reduction="none"))
    for a, b in [(img, other), (img, 1 - img), (torch.zeros_like(img), torch.ones_like(img))]:
        values = ssim(a, b, reduction="none")
        assert ((values >= -1) & (values <= 1)).all()
    assert (ssim(img, 1 - img, reduction="none") < 0).all()  # anti-correlated structure
    # More noise, lower similarity.
    noise = _rand(2, 16, 16, 3, seed=17) - 0.5
    scores = [ssim(img, (img + s * noise).clamp(0, 1)).item() for s in (0.0, 0.05, 0.2, 0.6)]
    assert scores[0] == pytest.approx(1.0) and all(a > b for a, b in zip(scores, scores[1:]))


def test_ssim_shapes_dtypes_and_range():
    img, ref = _rand(2, 3, 8, 9, 3, seed=18), _rand(2, 3, 8, 9, 3, seed=19)
    per_image = ssim(img, ref, reduction="none")
    assert per_image.shape == (2, 3)
    torch.testing.assert_close(ssim(img, ref), per_image.mean())
    assert ssim(img[0, 0], ref[0, 0], reduction="none").shape == ()
    grey = ssim(img[..., :1], ref[..., :1], reduction="none")
    torch.testing.assert_close(grey, _ssim_3dgs(img[..., :1].flatten(0, 1).permute(0, 3, 1, 2),
                                                ref[..., :1].flatten(0, 1).permute(0, 3, 1, 2)).view(2, 3))
    # data_range makes SSIM scale-invariant; uint8 defaults to 255.
    torch.testing.assert_close(ssim(255 * img, 255 * ref, data_range=255.0), ssim(img, ref))
    u, v = (img * 255).round().to(torch.uint8), (ref * 255).round().to(torch.uint8)
    torch.testing.assert_close(ssim(u, v), ssim(u.double() / 255, v.double() / 255).float())
    for low in (torch.float16, torch.bfloat16):
        got = ssim(img.to(low), ref.to(low))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ssim(img.to(low).float(), ref.to(low).float()))


def test_ssim_gradcheck():
    img = _rand(1, 5, 6, 3, seed=20).requires_grad_()
    ref = _rand(1, 5, 6, 3, seed=21).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b, window_size=5, sigma=1.2), (img, ref))
    img2 = _rand(4, 4, 1, seed=22).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ssim(a, ref[0, :4, :4, :1].detach()), (img2,))


def test_ssim_training_loss_backward_float32():
    # The 3DGS loss L1 + 0.2 (1 - SSIM) on float32 renders: finite gradients that lower the loss.
    ref = _rand(1, 16, 16, 3, seed=23, dtype=torch.float32)
    img = (ref + 0.2 * (_rand(1, 16, 16, 3, seed=24, dtype=torch.float32) - 0.5)).requires_grad_()
    loss = lambda x: (x - ref).abs().mean() + 0.2 * (1 - ssim(x, ref))
    before = loss(img)
    before.backward()
    assert torch.isfinite(img.grad).all()
    assert loss(img.detach() - 0.5 * img.grad) < before


@pytest.mark.parametrize("device", DEVICES)
def test_image_metrics_on_device(device):
    img, ref = _rand(2, 20, 24, 3, seed=26), _rand(2, 20, 24, 3, seed=27)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        a = img.to(device, dtype).requires_grad_()
        b = ref.to(device, dtype)
        for fn in (psnr, ssim):
            got = fn(a, b, reduction="none")
            want = fn(a.detach().cpu().double(), b.cpu().double(), reduction="none")
            assert got.device == a.device and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=1e-5 if dtype.itemsize >= 4 else 1e-4)
            (grad,) = torch.autograd.grad(got.sum(), a)
            assert grad.dtype == dtype and torch.isfinite(grad).all()


# ------------------------------------------------------------------------------------------ PSNR/SSIM errors


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_image_metric_errors(fn):
    name = fn.__name__
    x = _rand(5, 6, 3, seed=25, dtype=torch.float32)
    cases = [
        (TypeError, "img must be a Tensor", (x.numpy(), x), {}),
        (TypeError, "ref must be a floating-point or uint8", (x, x.int()), {}),
        (TypeError, "img must be a floating-point or uint8", (x.bool(), x), {}),
        (TypeError, r"img \(torch.float32\) and ref \(torch.uint8\) must both be uint8 or both floating",
         (x, (x * 255).to(torch.uint8)), {}),
        (ValueError, "ref must have img's shape", (x, x[:4]), {}),
        (ValueError, r"img must have shape \(\.\.\., H, W, C\)", (x[0], x[0]), {}),
        (ValueError, r"img must have shape \(\.\.\., H, W, C\)", (x.permute(2, 0, 1), x.permute(2, 0, 1)), {}),
        (ValueError, "img must have at least one pixel", (x[:0], x[:0]), {}),
        (ValueError, "ref is on meta but img is on cpu", (x, x.to("meta")), {}),
        (ValueError, "data_range must be positive", (x, x), {"data_range": 0}),
        (ValueError, "data_range must be positive", (x, x), {"data_range": float("nan")}),
        (TypeError, "data_range must be a real number", (x, x), {"data_range": "1"}),
        (ValueError, "unknown reduction", (x, x), {"reduction": "sum"}),
    ]
    if name == "ssim":
        cases += [
            (ValueError, "window_size must be a positive odd int", (x, x), {"window_size": 10}),
            (ValueError, "window_size must be a positive odd int", (x, x), {"window_size": 0}),
            (TypeError, "window_size must be an int", (x, x), {"window_size": 11.0}),
            (ValueError, "sigma must be positive", (x, x), {"sigma": 0.0}),
        ]
    for exc, match, args, kwargs in cases:
        with pytest.raises(exc, match=f"^{name}: {match}"):
            fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------------- tOF


def _texture(h, w, seed):
    """A smooth random RGB texture in [0, 1], (H, W, 3) float64: structure Farneback can track."""
    coarse = _rand(1, 3, h // 4, w // 4, seed=seed)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0)


def _moving(tex, frames, shift=lambda t: t):
    return torch.stack([tex.roll(shift(t), dims=1) for t in range(frames)])


def _noisy(video, sigma, seed):
    return (video + sigma * torch.randn(video.shape, generator=torch.Generator().manual_seed(seed),
                                        dtype=video.dtype)).clamp(0, 1)


def _tof_tecogan_loop(result: np.ndarray, target: np.ndarray) -> float:
    """TecoGAN metrics.py's tOF loop transcribed: RGB uint8 frames, cutfr = 2, crop_8x8 on the flows."""
    import cv2

    def crop_8x8(img):
        ori_h, ori_w = img.shape[0], img.shape[1]
        h, w = (ori_h // 32) * 32, (ori_w // 32) * 32
        while h > ori_h - 16:
            h = h - 32
        while w > ori_w - 16:
            w = w - 32
        y, x = (ori_h - h) // 2, (ori_w - w) // 2
        return img[y:y + h, x:x + w]

    cutfr, values = 2, []
    farneback = (None, 0.5, 3, 15, 3, 5, 1.2, 0)  # flow, pyr_scale, levels, winsize, iterations, poly_n/sigma, flags
    pre_out_grey = pre_tar_grey = None
    for i in range(cutfr, len(target) - cutfr):
        output_grey = cv2.cvtColor(result[i], cv2.COLOR_RGB2GRAY)
        target_grey = cv2.cvtColor(target[i], cv2.COLOR_RGB2GRAY)
        if i > cutfr:
            target_of = crop_8x8(cv2.calcOpticalFlowFarneback(pre_tar_grey, target_grey, *farneback))
            output_of = crop_8x8(cv2.calcOpticalFlowFarneback(pre_out_grey, output_grey, *farneback))
            of_diff = np.absolute(target_of - output_of)
            values.append(np.sqrt(np.sum(of_diff * of_diff, axis=-1)).mean())
        pre_out_grey, pre_tar_grey = output_grey, target_grey
    return float(np.mean(np.float32(values)))


@pytest.fixture(scope="module")
def videos():
    tex = _texture(64, 72, seed=30)
    ref = _moving(tex, 8)  # content moving right by one pixel a frame
    return {
        "tex": tex,
        "ref": ref,
        "noisy": _noisy(ref, 0.01, seed=31),
        "jitter": _moving(tex, 8, lambda t: t + t % 2),  # every other frame one pixel ahead: positional flicker
        "flicker": ref * torch.tensor([1.0, 0.85] * 4, dtype=torch.float64).view(8, 1, 1, 1),
        "fade": ref * torch.linspace(1.0, 0.85, 8, dtype=torch.float64).view(8, 1, 1, 1),
    }


def test_tof_identical_is_zero(videos):
    ref = videos["ref"]
    assert tof(ref, ref) == 0.0
    per_pair = tof(ref, ref.clone(), reduction="none")
    assert per_pair.dtype == np.float64 and per_pair.shape == (8 - 5,) and (per_pair == 0).all()


def test_tof_motion_and_flicker_rank(videos):
    ref, tex = videos["ref"], videos["tex"]
    static = tex.expand(8, -1, -1, -1)
    # Content that moves against a static reference: about the one pixel per frame it moves.
    moving_vs_static = tof(ref, static)
    noisy_vs_static = tof(_noisy(static, 0.01, seed=32), static)
    assert moving_vs_static > 0.5 and moving_vs_static > 10 * noisy_vs_static
    # Flicker (position or brightness alternating frame to frame) scores far worse than a smooth copy.
    smooth = tof(videos["noisy"], ref)
    assert tof(videos["jitter"], ref) > 10 * smooth
    assert tof(videos["flicker"], ref) > 3 * tof(videos["fade"], ref)
    assert tof(videos["flicker"], ref) > smooth


def test_tof_matches_tecogan_loop(videos):
    for name in ("noisy", "jitter", "flicker"):
        out = (videos[name].numpy() * 255).round().astype(np.uint8)
        tar = (videos["ref"].numpy() * 255).round().astype(np.uint8)
        assert tof(out, tar) == pytest.approx(_tof_tecogan_loop(out, tar), rel=1e-5)


def test_tof_input_kinds_agree(videos):
    out, ref = videos["jitter"], videos["ref"]
    want = tof(out, ref, reduction="none")
    np.testing.assert_array_equal(tof(out.numpy(), ref.numpy(), reduction="none"), want)  # numpy == torch
    np.testing.assert_array_equal(tof(out.float(), ref.numpy().astype(np.float32), reduction="none"), want)
    u8 = lambda v: (v * 255).round().to(torch.uint8)
    np.testing.assert_array_equal(tof(u8(out), u8(ref), reduction="none"), want)  # uint8 == float
    np.testing.assert_array_equal(tof(u8(out).numpy(), u8(ref).float() / 255, reduction="none"), want)
    assert tof(out, ref) == pytest.approx(want.mean(), rel=1e-15)
    # Values outside [0, 1] are clipped, like writing an 8-bit image.
    assert tof(out * 1.5 - 0.25, ref) == tof((out * 1.5 - 0.25).clamp(0, 1), ref)


def test_tof_crop_and_skip(videos):
    out, ref = videos["jitter"], videos["ref"]
    assert metrics._tecogan_crop(1080) == (12, 1056) and metrics._tecogan_crop(1920) == (16, 1888)
    assert metrics._tecogan_crop(64) == (16, 32) and metrics._tecogan_crop(48) == (8, 32)
    # The crop selects pixels of the full-frame flow (TecoGAN's loop test covers "tecogan"); 0 and None agree.
    full = tof(out, ref, crop=None, reduction="none")
    assert not np.array_equal(full, tof(out, ref, reduction="none"))
    per_pair = tof(out, ref, crop=0, reduction="none")
    np.testing.assert_array_equal(per_pair, full)
    # skip: pairs start at frame `skip`; skip=0 uses all T - 1 pairs and contains the skip=2 pairs.
    all_pairs = tof(out, ref, skip=0, crop=None, reduction="none")
    assert all_pairs.shape == (7,)
    np.testing.assert_allclose(all_pairs[2:5], full, rtol=1e-12)
    assert tof(out[:2], ref[:2], skip=0, crop=4) >= 0


def test_tof_errors(videos):
    ref = videos["ref"]
    cases = [
        (TypeError, "rendered must be a Tensor or numpy array", (ref.tolist(), ref), {}),
        (TypeError, "reference must be floating-point or uint8", (ref, ref.int()), {}),
        (TypeError, "rendered must be floating-point or uint8", (ref.numpy().astype(bool), ref), {}),
        (ValueError, r"rendered must have shape \(T, H, W, 3\)", (ref[0], ref[0]), {}),
        (ValueError, r"rendered must have shape \(T, H, W, 3\)", (ref[..., :1], ref[..., :1]), {}),
        (ValueError, "reference must have rendered's shape", (ref, ref[:, :32]), {}),
        (ValueError, "reference has NaN or inf", (ref, ref * float("nan")), {}),
        (ValueError, "rendered has 5 frames; skipping 2 at each end needs at least 6", (ref[:5], ref[:5]), {}),
        (ValueError, "crop='tecogan' leaves no pixels of 40 x 72", (ref[:, :40], ref[:, :40]), {}),
        (ValueError, "crop=36 leaves no pixels", (ref, ref), {"crop": 36}),
        (ValueError, "unknown crop 'centre'", (ref, ref), {"crop": "centre"}),
        (ValueError, "crop must be >= 0", (ref, ref), {"crop": -1}),
        (TypeError, "crop must be 'tecogan', an int or None", (ref, ref), {"crop": 1.5}),
        (ValueError, "skip must be >= 0", (ref, ref), {"skip": -1}),
        (TypeError, "skip must be an int", (ref, ref), {"skip": 2.0}),
        (ValueError, "unknown reduction", (ref, ref), {"reduction": "sum"}),
    ]
    for exc, match, args, kwargs in cases:
        with pytest.raises(exc, match=f"^tof: {match}"):
            tof(*args, **kwargs)


def test_tof_without_opencv(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError, as when not installed
    importlib.reload(metrics)  # the module itself imports without OpenCV
    try:
        with pytest.raises(ImportError, match="opencv-python-headless"):
            metrics.tof(videos["ref"], videos["ref"])
        assert metrics.psnr(videos["ref"], videos["ref"]).isinf()  # the torch metrics do not need it
    finally:
        monkeypatch.undo()
        importlib.reload(metrics)
