"""Image and video quality metrics for rendered sequences: PSNR, SSIM and TecoGAN's temporal metric tOF.

Conventions (those of `pyops.rasterize_gaussians`' output, not torchvision's): images are channels-last
``(..., H, W, C)`` with ``C`` 3 (RGB) or 1 (grey), every leading dimension a separate image; floating-point
values in ``[0, data_range]`` (default 1), or ``uint8`` in ``[0, 255]`` (then ``data_range`` defaults to 255).

- `psnr`: peak signal-to-noise ratio per image, ``10 log10(data_range^2 / MSE)`` with the MSE over the image's
  pixels and channels (torchmetrics / skimage ``peak_signal_noise_ratio``); identical images give ``inf``.
- `ssim`: structural similarity (Wang et al. 2004, "Image quality assessment: from error visibility to
  structural similarity") exactly as 3D Gaussian Splatting computes it in training and evaluation
  (graphdeco-inria/gaussian-splatting ``utils/loss_utils.py``, after Po-Hsun-Su/pytorch-ssim): an 11x11
  Gaussian window with sigma 1.5, applied per channel with zero padding of ``window_size // 2`` (so the map
  has the image's size and the border windows see zeros), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, the mean of
  the SSIM map over pixels and channels. It differs from skimage's ``structural_similarity`` (which crops the
  border and uses unbiased variances), so numbers are comparable with 3DGS-family papers, not with skimage.
  Differentiable: 3DGS's training loss is ``(1 - 0.2) L1 + 0.2 (1 - SSIM)``.
- `tof`: TecoGAN's tOF (Chu et al. 2020, "Learning Temporal Coherence via Self-Supervision for GAN-based Video
  Generation", thunil/TecoGAN ``metrics.py``): the mean per-pixel L2 distance between the Farneback optical
  flow of consecutive rendered frames and that of the reference frames. Lower is better; 0 means the rendered
  sequence moves (and flickers) exactly like the reference. Needs OpenCV (pip ``opencv-python-headless``),
  imported only when `tof` is called. Not differentiable (numpy / OpenCV on the host).

PSNR and SSIM are torch functions (CPU or CUDA tensors, autograd); float16 / bfloat16 and uint8 inputs are
computed, and returned, in float32.
"""

import math
from numbers import Real
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "tof"]

_REDUCTIONS = ("mean", "none")
_CHANNELS = (1, 3)


def _check_reduction(op: str, reduction) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")


def _check_positive(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{op}: {name} must be positive and finite, got {value}")
    return float(value)


def _image_pair(op: str, img, ref, data_range) -> Tuple[Tensor, Tensor, float]:
    """Checks an (img, ref) pair and returns both in the dtype the metric is computed in, plus data_range."""
    for name, t in (("img", img), ("ref", ref)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
        if not (t.is_floating_point() or t.dtype == torch.uint8):
            raise TypeError(f"{op}: {name} must be a floating-point or uint8 tensor, got {t.dtype}")
    if img.dim() < 3 or img.shape[-1] not in _CHANNELS:
        raise ValueError(f"{op}: img must have shape (..., H, W, C) with C 1 or 3 (channels last), "
                         f"got {tuple(img.shape)}")
    if ref.shape != img.shape:
        raise ValueError(f"{op}: ref must have img's shape {tuple(img.shape)}, got {tuple(ref.shape)}")
    if img.shape[-3] == 0 or img.shape[-2] == 0:
        raise ValueError(f"{op}: img must have at least one pixel, got shape {tuple(img.shape)}")
    if ref.device != img.device:
        raise ValueError(f"{op}: ref is on {ref.device} but img is on {img.device}")
    if (img.dtype == torch.uint8) != (ref.dtype == torch.uint8):
        raise TypeError(f"{op}: img ({img.dtype}) and ref ({ref.dtype}) must both be uint8 or both floating-point")
    if data_range is None:
        data_range = 255.0 if img.dtype == torch.uint8 else 1.0
    data_range = _check_positive(op, "data_range", data_range)
    # float32 / float64 promote like any torch op; uint8 and the 16-bit floats are computed in float32 (the
    # window sums and the MSE of a large image lose too much in 16 bits).
    dtype = torch.promote_types(img.dtype, ref.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return img.to(dtype), ref.to(dtype), data_range


def psnr(img: Tensor, ref: Tensor, *, data_range: Optional[float] = None, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB, per image: ``10 log10(data_range^2 / mean((img - ref)^2))``.

    Args:
        img, ref: ``(..., H, W, C)`` channels-last images (C 1 or 3) of the same shape and device, both
            floating-point or both uint8.
        data_range: the value range L of the images (peak value minus minimum): default 1.0 for floating-point
            images, 255 for uint8 ones.
        reduction: ``"mean"``: the mean over all images of the per-image PSNR (how 3DGS reports a test set),
            a scalar; ``"none"``: the per-image values, shape ``img.shape[:-3]``.

    Returns:
        A tensor (float32, or float64 for float64 input); ``inf`` for identical images (as torchmetrics and
        skimage), so a mean including one is ``inf``. Differentiable except at identical images.
    """
    _check_reduction("psnr", reduction)
    x, y, data_range = _image_pair("psnr", img, ref, data_range)
    mse = (x - y).square().mean(dim=(-3, -2, -1))
    value = 20.0 * math.log10(data_range) - 10.0 * torch.log10(mse)  # log10(0) = -inf: identical images give inf
    return value.mean() if reduction == "mean" else value


def _gaussian_window(window_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The normalised 1D Gaussian ``exp(-(k - window_size // 2)^2 / (2 sigma^2))``, k = 0..window_size-1."""
    offsets = torch.arange(window_size, dtype=torch.float64) - window_size // 2
    g = torch.exp(-offsets.square() / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(img: Tensor, ref: Tensor, *, data_range: Optional[float] = None, window_size: int = 11,
         sigma: float = 1.5, reduction: str = "mean") -> Tensor:
    """Structural similarity as 3D Gaussian Splatting computes it (see the module docstring).

    For each channel, local means, variances and the covariance come from a normalised Gaussian window
    (``window_size`` x ``window_size``, std ``sigma``) with zero padding of ``window_size // 2``::

        SSIM = (2 mu_x mu_y + C1) (2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2))

    with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, L = ``data_range``; the result is the map's mean over
    pixels and channels. The 2D window is the outer product of the 1D Gaussian, so it is applied as two 1D
    depthwise convolutions: the same window sums as 3DGS's 11 x 11 conv2d (equal up to rounding) in 22 instead
    of 121 multiply-adds per output (on CPU measured about as fast as the 2D conv in float32 and faster in
    float64, where PyTorch's 2D depthwise conv takes a slow path).

    Args:
        img, ref: ``(..., H, W, C)`` channels-last images (C 1 or 3) of the same shape and device, both
            floating-point or both uint8 (uint8 with the default data_range is the same as the images / 255).
        data_range: L, the images' value range: default 1.0 for floating-point images, 255 for uint8 ones.
        window_size: odd window width (3DGS: 11). sigma: the window's standard deviation in pixels (1.5).
        reduction: ``"mean"``: the mean over all images, a scalar; ``"none"``: per image, ``img.shape[:-3]``.

    Returns:
        A tensor in [-1, 1] (1 for identical images), float32 (float64 for float64 input), differentiable
        with respect to both images.
    """
    _check_reduction("ssim", reduction)
    if isinstance(window_size, bool) or not isinstance(window_size, int):
        raise TypeError(f"ssim: window_size must be an int, got {type(window_size).__name__}")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"ssim: window_size must be a positive odd int, got {window_size}")
    sigma = _check_positive("ssim", "sigma", sigma)
    x, y, data_range = _image_pair("ssim", img, ref, data_range)

    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    # (..., H, W, C) -> (N, C, H, W); the five quantities whose local means SSIM needs are stacked as channels
    # so that one grouped convolution per axis filters all of them.
    x = x.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    y = y.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1).contiguous()  # (N, 5C, H, W)
    g = _gaussian_window(window_size, sigma, x.dtype, x.device)
    groups, pad = 5 * c, window_size // 2
    local = F.conv2d(stacked, g.view(1, 1, window_size, 1).repeat(groups, 1, 1, 1), padding=(pad, 0), groups=groups)
    local = F.conv2d(local, g.view(1, 1, 1, window_size).repeat(groups, 1, 1, 1), padding=(0, pad), groups=groups)
    mu_x, mu_y, mean_xx, mean_yy, mean_xy = local.chunk(5, dim=1)

    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov_xy = mean_xx - mu_xx, mean_yy - mu_yy, mean_xy - mu_xy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mu_xy + c1) * (2 * cov_xy + c2) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
    value = ssim_map.mean(dim=(1, 2, 3)).reshape(lead)
    return value.mean() if reduction == "mean" else value


# ---------------------------------------------------------------------------------------------- tOF (TecoGAN)

# cv2.calcOpticalFlowFarneback's arguments in TecoGAN's metrics.py (positional there).
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _import_cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError("tof needs OpenCV's cv2 module: pip install opencv-python-headless") from e
    return cv2


def _video_uint8(name: str, video) -> np.ndarray:
    """A (T, H, W, 3) torch tensor or numpy array, floating-point in [0, 1] or uint8, as a uint8 numpy array.

    Floating-point frames are quantised the way an 8-bit PNG writer does (clip to [0, 1], x 255, round): TecoGAN
    measures PNG files, so the flow is computed on the same 8-bit frames one would save."""
    if isinstance(video, Tensor):
        if not (video.is_floating_point() or video.dtype == torch.uint8):
            raise TypeError(f"tof: {name} must be floating-point or uint8, got {video.dtype}")
        video = video.detach().cpu()
        video = (video if video.dtype in (torch.uint8, torch.float64) else video.float()).numpy()
    elif isinstance(video, np.ndarray):
        if not (np.issubdtype(video.dtype, np.floating) or video.dtype == np.uint8):
            raise TypeError(f"tof: {name} must be floating-point or uint8, got {video.dtype}")
    else:
        raise TypeError(f"tof: {name} must be a Tensor or numpy array, got {type(video).__name__}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"tof: {name} must have shape (T, H, W, 3) (RGB, channels last), got {video.shape}")
    if video.dtype == np.uint8:
        return np.ascontiguousarray(video)
    if not np.isfinite(video).all():
        raise ValueError(f"tof: {name} has NaN or inf values")
    return np.rint(np.clip(video, 0.0, 1.0) * 255.0).astype(np.uint8)


def _tecogan_crop(size: int) -> Tuple[int, int]:
    """TecoGAN's ``crop_8x8`` along one axis: the largest multiple of 32 that leaves at least 16 pixels of border
    in all, centred; returns (start, length). A 1080 x 1920 frame keeps 1056 x 1888 from (12, 16)."""
    keep = size // 32 * 32
    while keep > size - 16:
        keep -= 32
    return (size - keep) // 2, keep


def _crop_window(crop, h: int, w: int) -> Tuple[slice, slice]:
    if crop is None:
        rows, cols = (0, h), (0, w)
    elif isinstance(crop, str):
        if crop != "tecogan":
            raise ValueError(f"tof: unknown crop {crop!r}; expected 'tecogan', an int border or None")
        rows, cols = _tecogan_crop(h), _tecogan_crop(w)
    elif isinstance(crop, int) and not isinstance(crop, bool):
        if crop < 0:
            raise ValueError(f"tof: crop must be >= 0 pixels, got {crop}")
        rows, cols = (crop, h - 2 * crop), (crop, w - 2 * crop)
    else:
        raise TypeError(f"tof: crop must be 'tecogan', an int or None, got {type(crop).__name__}")
    if rows[1] <= 0 or cols[1] <= 0:
        need = "H and W of at least 48 (TecoGAN's crop keeps a multiple of 32 with a 16-pixel border)" \
            if crop == "tecogan" else f"H and W above {2 * crop}"
        raise ValueError(f"tof: crop={crop!r} leaves no pixels of {h} x {w} frames; it needs {need}")
    return slice(rows[0], rows[0] + rows[1]), slice(cols[0], cols[0] + cols[1])


def tof(rendered, reference, *, crop: Union[str, int, None] = "tecogan", skip: int = 2,
        reduction: str = "mean") -> Union[float, np.ndarray]:
    """TecoGAN's temporal optical-flow metric tOF between a rendered video and its reference (lower is better).

    Follows thunil/TecoGAN ``metrics.py`` step by step:

    1. Frames ``skip .. T - skip - 1`` are used (TecoGAN's ``cutfr = 2``: the first and last two are skipped).
    2. Each frame becomes 8-bit grey with ``cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)`` (TecoGAN reads PNGs with
       cv2.imread and flips BGR to RGB first, so its input is RGB uint8 as here).
    3. For each consecutive pair of used frames, ``cv2.calcOpticalFlowFarneback(prev, next, None, 0.5, 3, 15,
       3, 5, 1.2, 0)`` on the full frame, separately for the rendered and the reference video.
    4. Both flows are cropped (``crop="tecogan"``: TecoGAN's ``crop_8x8``, the largest centred multiple of 32
       leaving at least 16 pixels of border per axis), and the pair's value is the mean over pixels of
       ``|| flow_rendered - flow_reference ||_2`` (the L2 norm of the 2-vector per pixel).
    5. The result is the mean over pairs.

    Deviations: TecoGAN averages float32 values, this averages in float64; floating-point inputs are quantised
    to uint8 first (round(clip(x, 0, 1) * 255), what writing them as 8-bit PNGs does). The value is returned
    unscaled, as metrics.py computes it; papers' tables sometimes print tOF multiplied by a power of ten (see
    their headers) - scale it yourself to compare.

    Args:
        rendered, reference: ``(T, H, W, 3)`` RGB videos of the same shape, torch tensors (any device; detached
            and copied to the host) or numpy arrays, floating-point in [0, 1] or uint8.
        crop: ``"tecogan"`` (default; needs H, W >= 48), an int border removed from every side, or None (the
            full frame).
        skip: frames skipped at each end (TecoGAN: 2); ``T >= 2 skip + 2`` frames are needed for one pair.
        reduction: ``"mean"``: a float; ``"none"``: the ``T - 2 skip - 1`` per-pair values, a float64 array
            (entry k compares frames ``skip + k`` and ``skip + k + 1``).
    """
    _check_reduction("tof", reduction)
    if isinstance(skip, bool) or not isinstance(skip, int):
        raise TypeError(f"tof: skip must be an int, got {type(skip).__name__}")
    if skip < 0:
        raise ValueError(f"tof: skip must be >= 0, got {skip}")
    out = _video_uint8("rendered", rendered)
    tar = _video_uint8("reference", reference)
    if out.shape != tar.shape:
        raise ValueError(f"tof: reference must have rendered's shape {out.shape}, got {tar.shape}")
    frames, h, w = out.shape[:3]
    if frames < 2 * skip + 2:
        raise ValueError(f"tof: rendered has {frames} frames; skipping {skip} at each end needs at least "
                         f"{2 * skip + 2} for one pair of consecutive frames")
    rows, cols = _crop_window(crop, h, w)
    cv2 = _import_cv2()

    used = range(skip, frames - skip)
    grey_out = [cv2.cvtColor(out[t], cv2.COLOR_RGB2GRAY) for t in used]
    grey_tar = [cv2.cvtColor(tar[t], cv2.COLOR_RGB2GRAY) for t in used]
    values = np.empty(len(used) - 1, dtype=np.float64)
    for k in range(len(values)):
        flow_out = cv2.calcOpticalFlowFarneback(grey_out[k], grey_out[k + 1], None, **_FARNEBACK)
        flow_tar = cv2.calcOpticalFlowFarneback(grey_tar[k], grey_tar[k + 1], None, **_FARNEBACK)
        diff = (flow_out[rows, cols] - flow_tar[rows, cols]).astype(np.float64)
        values[k] = np.sqrt(np.square(diff).sum(axis=-1)).mean()
    return float(values.mean()) if reduction == "mean" else values
