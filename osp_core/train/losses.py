"""The CausalVideoVAE training objective of Open-Sora-Plan v1.1.0.

L1 + LPIPS reconstruction with a learned log-variance, KL to the unit Gaussian, and a 3D
PatchGAN discriminator with hinge loss, switched on at `disc_start` with the adaptive weight of
Esser et al. (taming-transformers), computed on the decoder's last layer.

LPIPS weights (VGG16 features + the five linear heads) are read from safetensors, with the key
layout of the `lpips`/taming LPIPS module: `net.slice{1..5}.{i}.weight|bias` (VGG16 `features`
indices) and `lin{0..4}.model.1.weight`. Keys may carry the `loss.perceptual_loss.` prefix of
released VAE checkpoints, and torchvision-style `features.{i}.*` names are accepted for the
backbone. Sources, in order: an explicit .safetensors file, `REPO_ID:FILENAME` through
huggingface_hub (honours HF_HUB_OFFLINE and the cache), or the `loss.perceptual_loss.*` tensors
a pretrained VAE checkpoint carries.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import HubUnavailableError, InputError

# ----------------------------------------------------------------------------------- LPIPS

# VGG16 `features` layout: (index, in, out) of every conv; ReLU after each, max-pool at 4, 9, 16, 23.
_VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
                (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]  # fmt: skip
_VGG16_POOLS = (4, 9, 16, 23)
# LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: features[0:4], [4:9], [9:16], [16:23], [23:30]
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """The VGG16 convolutional trunk, cut into the five LPIPS slices (parameter names keep the
    torchvision `features` indices, as in the lpips package)."""

    def __init__(self) -> None:
        super().__init__()
        convs = {index: (cin, cout) for index, cin, cout in _VGG16_CONVS}
        layers: dict[int, nn.Module] = {}
        for index in range(30):
            if index in convs:
                layers[index] = nn.Conv2d(*convs[index], kernel_size=3, padding=1)
            elif index in _VGG16_POOLS:
                layers[index] = nn.MaxPool2d(kernel_size=2, stride=2)
            else:
                layers[index] = nn.ReLU(inplace=False)
        for number, (lo, hi) in enumerate(_SLICES, 1):
            block = nn.Sequential()
            for index in range(lo, hi):
                block.add_module(str(index), layers[index])
            setattr(self, f"slice{number}", block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for number in range(1, 6):
            x = getattr(self, f"slice{number}")(x)
            taps.append(x)
        return taps


class _ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _LinearHead(nn.Module):
    """1x1 conv to one channel; `model.1` is the conv (index 0 is the dropout of the original)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Learned perceptual distance (Zhang et al. 2018), VGG16 variant, frozen and always in eval
    mode. `forward(a, b)` on (N, 3, H, W) in [-1, 1] gives (N, 1, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = VGG16Features()
        for index, channels in enumerate(LPIPS_CHANNELS):
            setattr(self, f"lin{index}", _LinearHead(channels))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:  # a frozen metric: never dropout/train mode
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        taps_a, taps_b = self.net(self.scaling_layer(a)), self.net(self.scaling_layer(b))
        total = 0
        for index, (fa, fb) in enumerate(zip(taps_a, taps_b)):
            fa = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            head = getattr(self, f"lin{index}").model
            total = total + head((fa - fb) ** 2).mean(dim=(2, 3), keepdim=True)
        return total


def _normalise_lpips_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip known prefixes and map torchvision `features.N` names into the LPIPS slices."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("loss.perceptual_loss.", "perceptual_loss.", "lpips."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("features."):
            index = int(key.split(".")[1])
            number = next(n for n, (lo, hi) in enumerate(_SLICES, 1) if lo <= index < hi) if index < 30 else None
            if number is None:
                continue
            key = f"net.slice{number}.{key[len('features.'):]}"
        out[key] = value
    return out


def load_lpips_state(source: str) -> dict[str, torch.Tensor]:
    """LPIPS tensors from a .safetensors file or `REPO_ID:FILENAME` on the Hub (see module doc)."""
    from safetensors.torch import load_file

    path = Path(source).expanduser()
    if not path.is_file():
        repo, sep, filename = source.partition(":")
        if not sep or repo.count("/") != 1 or not filename:
            raise InputError(f"LPIPS weights '{source}' not found", "pass a .safetensors file or REPO_ID:FILENAME on the Hub")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

        try:
            path = Path(hf_hub_download(repo, filename))
        except (RepositoryNotFoundError, EntryNotFoundError):
            raise InputError(f"LPIPS weights '{source}' do not exist on the Hub", "check the repo id and file name") from None
        except (LocalEntryNotFoundError, OSError):
            raise HubUnavailableError(f"LPIPS weights '{source}' are not cached and the Hub cannot be reached", "download them first or pass a local .safetensors file") from None
    if path.suffix != ".safetensors":
        raise InputError(f"LPIPS weights '{path}' are not a .safetensors file", "convert them with osp_core.train.losses.convert_lpips_weights")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise InputError(f"LPIPS weights '{path}' are unreadable ({type(exc).__name__})", "it is truncated or not a safetensors file: pass the VGG16 LPIPS weights") from None
    return _normalise_lpips_keys(state)


def build_lpips(state: dict[str, torch.Tensor]) -> LPIPS:
    """An LPIPS module with every VGG and head weight from `state` (the scaling constants may be absent)."""
    lpips = LPIPS()
    wanted = lpips.state_dict()
    state = _normalise_lpips_keys(state)
    missing = [k for k in wanted if k not in state and not k.startswith("scaling_layer.")]
    if missing:
        raise InputError(f"LPIPS weights lack {len(missing)} tensors (e.g. {missing[0]})", "use a full VGG16 + linear-head LPIPS file")
    for key, value in state.items():
        if key in wanted and wanted[key].shape != value.shape:
            raise InputError(f"LPIPS tensor '{key}' has shape {tuple(value.shape)}, expected {tuple(wanted[key].shape)}", "use the VGG16 LPIPS weights")
    lpips.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return lpips


def convert_lpips_weights(vgg16_features: dict[str, torch.Tensor], heads: dict[str, torch.Tensor], out: str | Path) -> Path:
    """Write one LPIPS .safetensors file from a torchvision VGG16 state dict (`features.N.*`) and the
    lpips package's `vgg.pth` heads (`lin{k}.model.1.weight`); load .pth files with weights_only=True."""
    from ..io.atomic import save_safetensors

    state = _normalise_lpips_keys({k: v for k, v in vgg16_features.items() if k.startswith("features.")})
    state.update({k: v for k, v in heads.items() if k.startswith("lin")})
    build_lpips(state)  # validates completeness and shapes
    return save_safetensors(out, state)


# ----------------------------------------------------------------------------------- discriminator


def _init_discriminator(module: nn.Module) -> None:
    # the pix2pix / taming initialisation
    if isinstance(module, nn.Conv3d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PatchGAN3D(nn.Module):
    """3D PatchGAN discriminator: `num_layers` strided 4x4x4 convs with BatchNorm and LeakyReLU,
    one logit per space-time patch. Parameter names (`main.N`) match the original's."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, num_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv3d(channels * prev, channels * mult, 4, stride=(1, 2, 2), padding=1, bias=False),
                nn.BatchNorm3d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**num_layers, 8)
        layers += [
            nn.Conv3d(channels * prev, channels * mult, 4, stride=1, padding=1, bias=False),
            nn.BatchNorm3d(channels * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(channels * mult, 1, 4, stride=1, padding=1),
        ]
        self.main = nn.Sequential(*layers)
        self.apply(_init_discriminator)
        self.num_layers = num_layers

    def _extent(self, n: int, spatial: bool) -> int:
        """Output length along one axis for input length `n` (k4, p1 convs)."""
        strides = [2] + [2 if spatial else 1] * (self.num_layers - 1) + [1, 1]
        for stride in strides:
            n = (n + 2 - 4) // stride + 1
        return n

    def min_extent(self, spatial: bool) -> int:
        """Fewest frames (spatial=False) or pixels (spatial=True) that leave one output patch."""
        n = 1
        while self._extent(n, spatial) < 1:
            n += 1
        return n

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> patch logits. Clips shorter than the receptive field (the 9-frame
        stage) are extended by repeating their last frame, which the original would reject."""
        need = self.min_extent(spatial=False)
        if video.shape[2] < need:
            video = F.pad(video, (0, 0, 0, 0, 0, need - video.shape[2]), mode="replicate")
        return self.main(video)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, scale: float) -> torch.Tensor:
    """||grad nll|| / (||grad g|| + 1e-4) on `last_layer`, clamped to [0, 1e4], times `scale`:
    balances the adversarial gradient against the reconstruction gradient."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * scale


def kl_loss(posterior) -> torch.Tensor:
    """Mean over the batch of the summed KL(q(z|x) || N(0, I)) of a diagonal Gaussian posterior."""
    kl = posterior.kl()
    return kl.sum() / kl.shape[0]


# ----------------------------------------------------------------------------------- the VAE loss


PIXEL_ERRORS = {"l1": torch.abs, "l2": torch.square, "l1+l2": lambda d: d.abs() + d.square()}
"""Per-pixel reconstruction errors VAELoss offers (VAELossConfig.pixel_loss), of x - y."""


class VAELoss(nn.Module):
    """LPIPSWithDiscriminator3D of Open-Sora-Plan, as one module so that DDP synchronises the
    discriminator and the learned log-variance: `forward("generator", ...)` for the VAE step,
    `forward("discriminator", ...)` for the discriminator step. Both return a dict of scalar
    tensors whose "loss" entry is what to back-propagate.

    The reconstruction term is summed over pixels and averaged over (batch x frames), as the
    original. LPIPS is frozen and kept outside the state dict (it is not trained or saved).
    """

    def __init__(
        self,
        lpips: LPIPS | None,
        disc_start: int = 2001,
        kl_weight: float = 1e-6,
        perceptual_weight: float = 1.0,
        pixel_loss: str = "l1",
        disc_weight: float = 0.5,
        disc_factor: float = 1.0,
        logvar_init: float = 0.0,
        disc_num_layers: int = 3,
        disc_channels: int = 64,
    ) -> None:
        super().__init__()
        if perceptual_weight > 0 and lpips is None:
            raise InputError("LPIPS weights are needed for perceptual_weight > 0", "pass --lpips-weights FILE.safetensors or --perceptual-weight 0")
        # a plain list: not a submodule, so neither DDP nor checkpoints carry the frozen net
        self._lpips: list[LPIPS] = [lpips] if (lpips is not None and perceptual_weight > 0) else []
        if pixel_loss not in PIXEL_ERRORS:
            raise InputError(f"unknown pixel loss '{pixel_loss}'", f"use one of: {', '.join(PIXEL_ERRORS)}")
        self.pixel_error = PIXEL_ERRORS[pixel_loss]
        self.perceptual_weight = perceptual_weight
        self.kl_weight = kl_weight
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor
        self.logvar = nn.Parameter(torch.tensor(float(logvar_init)))
        self.discriminator = PatchGAN3D(3, disc_channels, disc_num_layers)

    def _apply(self, fn, *args, **kwargs):  # keep LPIPS on the module's device/dtype moves
        for lpips in self._lpips:
            lpips._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @staticmethod
    def _touch(params) -> torch.Tensor | float:
        """0 x the parameters a pass does not use: DDP then sees every parameter take part
        (a zero gradient) and needs no unused-parameter search."""
        return sum((0.0 * p.sum() for p in params if p.requires_grad), 0.0)

    def factor(self, step: int) -> float:
        """The adversarial factor at `step`: 0 before disc_start."""
        return self.disc_factor if step >= self.disc_start else 0.0

    def reconstruction(self, inputs: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(nll summed / (B*T), mean pixel error + w*LPIPS, mean LPIPS) for (B, 3, T, H, W) videos."""
        x = rearrange(inputs, "b c t h w -> (b t) c h w")
        y = rearrange(recon, "b c t h w -> (b t) c h w")
        rec = self.pixel_error(x - y)
        p_loss = torch.zeros((), device=x.device)
        if self._lpips:
            p_loss = self._lpips[0](x.float(), y.float())
            rec = rec + self.perceptual_weight * p_loss
        nll = rec / torch.exp(self.logvar) + self.logvar
        return nll.sum() / nll.shape[0], rec.detach().mean(), p_loss.detach().mean()

    def forward(self, mode: str, inputs: torch.Tensor, recon: torch.Tensor, moments: torch.Tensor | None = None, step: int = 0, last_layer: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if mode == "generator":
            return self._generator(inputs, recon, moments, step, last_layer)
        if mode == "discriminator":
            return self._discriminator(inputs, recon, step)
        raise ValueError(f"unknown VAELoss mode {mode!r}")

    def _generator(self, inputs, recon, moments, step, last_layer) -> dict[str, torch.Tensor]:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        nll, rec, p_loss = self.reconstruction(inputs, recon)
        kl = kl_loss(DiagonalGaussianDistribution(moments))
        loss = nll + self.kl_weight * kl
        factor = self.factor(step)
        zero = torch.zeros((), device=inputs.device)
        g_loss, d_weight = zero, zero
        if factor > 0:
            g_loss = -self.discriminator(recon).mean()
            if last_layer is not None and torch.is_grad_enabled():
                d_weight = adaptive_weight(nll, g_loss, last_layer, self.disc_weight)
            loss = loss + d_weight * factor * g_loss
        else:
            loss = loss + self._touch(self.discriminator.parameters())
        return {
            "loss": loss,
            "nll": nll.detach(),
            "rec": rec,
            "perceptual": p_loss,
            "kl": kl.detach(),
            "g": g_loss.detach(),
            "d_weight": d_weight.detach(),
            "logvar": self.logvar.detach(),
        }

    def _discriminator(self, inputs, recon, step) -> dict[str, torch.Tensor]:
        logits_real = self.discriminator(inputs.detach())
        logits_fake = self.discriminator(recon.detach())
        loss = self.factor(step) * hinge_d_loss(logits_real, logits_fake) + self._touch([self.logvar])
        return {"loss": loss, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}
