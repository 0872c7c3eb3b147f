"""LPIPS perceptual distance (Zhang et al. 2018) with a gradient that stays finite.

The `lpips` package is the reference: its ImageNet scaling layer, its 1x1
"linear" heads (`lpips.lpips.NetLinLayer`) and the calibrated head weights it
ships in ``lpips/weights/v0.1/vgg.pth`` are used as they are. Two parts are
our own, on purpose:

* **Feature normalisation.** `lpips.normalize_tensor` computes
  ``x / (sqrt(sum x^2) + eps)``. Where a feature vector is exactly zero (a VGG
  pixel whose ReLUs are all off, common on flat or saturated regions), the
  derivative of ``sqrt`` at 0 is infinite, and ``inf * 0`` puts NaN into the
  generator's gradient (docs/pitfalls.md #14; PerceptualSimilarity #121,
  latent-diffusion #176). :func:`normalize_features` puts the epsilon inside
  the square root, ``x / sqrt(sum x^2 + eps)``, whose derivative is bounded by
  ``1 / sqrt(eps)``. For non-zero features the value matches lpips to float
  rounding (eps = 1e-10 against squared norms that are orders of magnitude
  larger).
* **The VGG16 trunk.** `lpips.pretrained_networks.vgg16` calls
  ``torchvision.models.vgg16(pretrained=...)``: a deprecated argument, a silent
  download attempt, and a 120M-parameter classifier built only to be thrown
  away. We build torchvision's own VGG16 feature layout (``make_layers(cfgs["D"])``,
  layers 0-29, i.e. up to relu5_3) and load torchvision's ImageNet checkpoint
  ``vgg16-397923af.pth`` from the torch hub cache. Parameter names are
  torchvision's (``features.<i>.weight``), so the cached file loads as is.

Decisions where the spec is silent:

* ``forward`` returns one distance per sample, shape ``(B,)``; take ``.mean()``
  for a scalar loss. Per-sample values let callers weight or mask samples and
  let metrics average over a whole validation set.
* Inputs are in [-1, 1]. Single-channel inputs (MNIST-like tokenizers) are
  repeated to three channels, because VGG expects RGB.
* Normalisation and the linear heads run in float32 with autocast disabled
  (whatever the module's dtype): under float16 the epsilon underflows and the
  sum of squares can underflow or overflow. The VGG trunk follows the
  ambient autocast; inputs are cast to the trunk's parameter dtype.
* Both images go through VGG in a single batch of 2B (one pass instead of two).
* The module is frozen (``requires_grad=False``) and always in eval mode:
  ``train()`` is overridden, so a parent's ``.train()`` cannot switch it.
* Values are not checked for NaN here: that would cost a host-device sync on
  every training step. Shapes are checked.
* A missing VGG checkpoint is a ``FileNotFoundError`` at construction, never a
  silent fallback to random weights. A download is attempted only when
  ``allow_download=True`` or the environment variable
  ``VQZOO_ALLOW_DOWNLOAD=1`` says so, with a timeout, so an offline cluster
  node fails fast instead of hanging.
* ``pretrained=False`` gives a random VGG trunk and unit head weights (the
  un-learned "baseline" of the LPIPS paper, so distances stay >= 0). That is
  for tests only: the distance it computes is not LPIPS.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LPIPS",
    "VGG16_FILENAME",
    "VGG16_URL",
    "normalize_features",
    "vgg16_checkpoint_path",
]

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# torchvision names its checkpoints after the first 8 hex digits of the SHA-256.
_VGG16_SHA256_PREFIX = "397923af"
# Indices (in torchvision's vgg16().features) of the ReLUs LPIPS reads:
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG16_TAPS = (3, 8, 15, 22, 29)
_VGG16_CHANNELS = (64, 128, 256, 512, 512)
_DOWNLOAD_TIMEOUT_S = 60.0


def normalize_features(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise feature vectors along dim 1: ``x / sqrt(sum x^2 + eps)``.

    The epsilon sits inside the square root so the gradient is finite even
    where a feature vector is exactly zero (see the module docstring).
    """
    return x * torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + eps)


def vgg16_checkpoint_path() -> Path:
    """Where torchvision caches the VGG16 ImageNet weights.

    ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``; the hub directory is
    ``$TORCH_HOME/hub`` (``TORCH_HOME`` defaults to ``~/.cache/torch``). It is
    resolved at call time so a changed ``TORCH_HOME`` is honoured.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def _download_allowed(allow_download: bool | None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get("VQZOO_ALLOW_DOWNLOAD", "").strip().lower() in {"1", "true", "yes", "on"}


def _download_vgg16(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            VGG16_URL, timeout=_DOWNLOAD_TIMEOUT_S
        ) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(_VGG16_SHA256_PREFIX):
            raise ValueError(
                f"Downloaded {VGG16_URL} but its SHA-256 {digest.hexdigest()[:8]}... does not "
                f"start with {_VGG16_SHA256_PREFIX}; refusing to use it."
            )
        shutil.move(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def _missing_weights_error(path: Path, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"LPIPS needs the torchvision VGG16 ImageNet weights file '{VGG16_FILENAME}' in the "
        f"directory '{path.parent}' (that is $TORCH_HOME/hub/checkpoints; TORCH_HOME defaults "
        f"to ~/.cache/torch), and it is not there ({reason}). Get it from {VGG16_URL} "
        f"(e.g. `wget {VGG16_URL} -P {path.parent}` on a machine with network access, then "
        f"copy it over), or pass allow_download=True / set VQZOO_ALLOW_DOWNLOAD=1 to let "
        f"vqzoo download it, or pass weights_path=... . LPIPS never falls back to random "
        f"weights silently."
    )


def _vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 feature stack up to relu5_3 (layers 0-29), random init."""
    from torchvision.models.vgg import cfgs, make_layers

    layers = list(make_layers(cfgs["D"], batch_norm=False).children())[: _VGG16_TAPS[-1] + 1]
    # Non-inplace ReLUs: the tapped activations are read again by the loss, so
    # they must not be overwritten by a later in-place op.
    layers = [nn.ReLU(inplace=False) if isinstance(m, nn.ReLU) else m for m in layers]
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Learned perceptual image distance on images in [-1, 1], one value per sample.

    Args:
        net: backbone; only ``"vgg"`` (the variant taming, MoVQGAN and the
            papers use).
        pretrained: load the torchvision VGG16 ImageNet weights and the lpips
            v0.1 linear heads. ``False`` gives a random trunk and unit heads,
            for tests only.
        weights_path: explicit path to ``vgg16-397923af.pth``; by default the
            torch hub cache (see :func:`vgg16_checkpoint_path`).
        allow_download: try to download a missing VGG16 file (60 s timeout).
            ``None`` reads the ``VQZOO_ALLOW_DOWNLOAD`` environment variable.
        eps: the epsilon inside the square root of the feature normalisation.

    Raises:
        FileNotFoundError: ``pretrained=True`` and the VGG16 file is missing and
            may not or could not be downloaded. The message names the file, the
            directory and the URL.
    """

    def __init__(
        self,
        net: Literal["vgg"] = "vgg",
        pretrained: bool = True,
        weights_path: str | None = None,
        allow_download: bool | None = None,
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        if net != "vgg":
            raise ValueError(f"LPIPS net must be 'vgg', got {net!r}")
        if not eps > 0:
            raise ValueError(f"LPIPS eps must be > 0 (it keeps the sqrt gradient finite), got {eps}")
        from lpips.lpips import NetLinLayer, ScalingLayer

        self.net = net
        self.eps = float(eps)
        self.pretrained = bool(pretrained)
        self.scaling = ScalingLayer()
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(NetLinLayer(c, use_dropout=False) for c in _VGG16_CHANNELS)
        if pretrained:
            self._load_vgg16(weights_path, allow_download)
            self._load_lpips_heads()
        else:
            # The paper's un-learned baseline: every channel weighs 1, so the
            # distance is >= 0 with equality only for equal features (random
            # heads could make it negative).
            with torch.no_grad():
                for lin in self.lins:
                    lin.model[-1].weight.fill_(1.0)
        self.requires_grad_(False)
        super().train(False)

    def _load_vgg16(self, weights_path: str | None, allow_download: bool | None) -> None:
        path = Path(weights_path).expanduser() if weights_path else vgg16_checkpoint_path()
        if not path.is_file():
            if weights_path is not None:
                raise _missing_weights_error(path, "the given weights_path does not exist")
            if not _download_allowed(allow_download):
                raise _missing_weights_error(
                    path, "downloading is off: allow_download is not set and VQZOO_ALLOW_DOWNLOAD != 1"
                )
            try:
                _download_vgg16(path)
            except (OSError, ValueError) as err:
                raise _missing_weights_error(path, f"the download failed: {err}") from err
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: say which one
            raise ValueError(
                f"Could not read the VGG16 weights file '{path}' ({err}). Delete it and fetch "
                f"{VGG16_URL} again."
            ) from err
        wanted = {k for k in self.state_dict() if k.startswith("features.")}
        missing = sorted(wanted - set(state))
        if missing:
            raise ValueError(
                f"'{path}' is not a torchvision VGG16 checkpoint: it lacks {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''}. Expected the file from {VGG16_URL}."
            )
        self.load_state_dict({k: state[k] for k in wanted}, strict=False)

    def _load_lpips_heads(self) -> None:
        import lpips

        path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
        if not path.is_file():
            raise FileNotFoundError(
                f"The lpips package should ship its linear-head weights at '{path}', but the file "
                f"is missing. Reinstall it: `pip install --force-reinstall lpips`."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for k, lin in enumerate(self.lins):
                # lpips names the 1x1 conv model.1 (model.0 is its optional dropout).
                lin.model[-1].weight.copy_(state[f"lin{k}.model.1.weight"])

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode whatever ``mode`` is: LPIPS is a frozen metric."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance between ``x`` and ``y`` (B, C, H, W) in [-1, 1], C in {1, 3}.

        Returns a float32 tensor of shape ``(B,)`` (float32 even for a float64
        or bfloat16 module: the last stage always runs in float32).
        """
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects images (B, 1 or 3, H, W) in [-1, 1], got shape {tuple(x.shape)}")
        if not (x.is_floating_point() and y.is_floating_point()):
            raise ValueError(f"LPIPS expects floating-point images, got {x.dtype} and {y.dtype}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        batch = x.shape[0]
        # Follow the trunk's dtype (float64 in tests, bfloat16 under "bf16-true" precision).
        h = self.scaling(torch.cat([x, y], dim=0)).to(self.features[0].weight.dtype)
        total = torch.zeros(batch, device=x.device, dtype=torch.float32)
        taps = iter(zip(_VGG16_TAPS, self.lins))
        tap, lin = next(taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i != tap:
                continue
            with torch.autocast(device_type=h.device.type, enabled=False):
                fx, fy = normalize_features(h.float(), self.eps).chunk(2, dim=0)
                head = lin.model[-1].weight.float()
                total = total + F.conv2d((fx - fy).pow(2), head).mean(dim=(1, 2, 3))
            tap, lin = next(taps, (None, None))
        return total
