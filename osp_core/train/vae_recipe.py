"""`osp vae train`: the CausalVideoVAE recipe of Open-Sora-Plan v1.1.0.

Each step: encode/decode a batch of clips, one generator update (L1 + LPIPS with a learned
log-variance, KL, adaptive-weighted hinge GAN term after `disc_start`) with Adam(0.5, 0.9) and
gradient clipping, then (from `disc_start` on) one discriminator update with its own Adam.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .config import VAETrainConfig
from .plan import VAE_DDP_ONLY
from .trainer import Built, Recipe
from .wrapping import TrainingForward


def _vae_step(vae, video: torch.Tensor, seed: int, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction and posterior moments (mean, logvar on dim 1) of `video`; each clip's
    posterior sample draws from its global position (`randomness`), not from a rank's stream."""
    from .randomness import sample_randn

    posterior = vae.encode(video).latent_dist
    noise = sample_randn(seed, [(p, "posterior") for p in positions], tuple(posterior.mean.shape[1:]), posterior.mean.device)
    recon = vae.decode(posterior.mean + posterior.std * noise.to(posterior.mean.dtype)).sample
    return recon, posterior.parameters


def load_vae_for_training(cfg: VAETrainConfig):
    """The CausalVideoVAE to train: pretrained weights, an inflated image VAE, a config file,
    or the v1.1.0 architecture; plus any `loss.*` tensors of a pretrained checkpoint."""
    from ..hub import resolve_model_dir
    from ..models.causal_vae import CausalVideoVAE, read_loss_state_dict

    m = cfg.model
    chosen = [name for name, value in (("pretrained", m.pretrained), ("init_from_2d_vae", m.init_from_2d_vae), ("config", m.config)) if value]
    if len(chosen) > 1:
        raise InputError(f"model.{chosen[0]} and model.{chosen[1]} both given", "start from pretrained weights, an image VAE or a config, not several")
    loss_state: dict[str, torch.Tensor] = {}
    if m.pretrained:
        root = resolve_model_dir(m.pretrained, subfolders=["vae"])
        folder = root / "vae" if (root / "vae" / "config.json").is_file() else root
        vae = CausalVideoVAE.from_pretrained(str(folder))
        loss_state = read_loss_state_dict(folder)
    elif m.init_from_2d_vae:
        from .inflate import inflate_2d_vae

        vae = inflate_2d_vae(m.init_from_2d_vae)
    elif m.config:
        path = Path(m.config).expanduser()
        if not path.is_file():
            raise InputError(f"VAE config '{m.config}' does not exist", "pass a config.json of a CausalVideoVAE")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"VAE config '{m.config}' is not JSON", "pass a config.json of a CausalVideoVAE") from None
        config = config.get("config", config)  # also accept the reference fixtures' {"config": {...}}
        vae = CausalVideoVAE.from_config(config)
    else:
        vae = CausalVideoVAE()
    if m.reset_mix_factor is not None:
        with torch.no_grad():
            for name, param in vae.named_parameters():
                if name.endswith("mix_factor"):
                    param.fill_(m.reset_mix_factor)
    if m.freeze_encoder:
        for part in encoder_parts(vae):
            part.requires_grad_(False)
    return vae, loss_state


def encoder_parts(vae) -> list[torch.nn.Module]:
    """What maps pixels to the posterior's moments: frozen, it leaves every latent unchanged."""
    return [vae.encoder, vae.quant_conv]


def _lpips_from(cfg: VAETrainConfig, loss_state: dict[str, torch.Tensor]):
    from .losses import build_lpips, load_lpips_state

    if cfg.loss.perceptual_weight <= 0:
        return None
    if cfg.loss.lpips_weights:
        return build_lpips(load_lpips_state(cfg.loss.lpips_weights))
    carried = {k: v for k, v in loss_state.items() if k.startswith("perceptual_loss.")}
    if carried:
        return build_lpips(carried)
    raise InputError(
        "LPIPS needs VGG16 + linear-head weights and none were given",
        "pass --lpips-weights FILE.safetensors (or REPO_ID:FILE on the Hub), or --perceptual-weight 0",
    )


class VAERecipe(Recipe):
    name = "vae"
    config: VAETrainConfig

    def check(self, accelerator) -> None:
        # the rules that need no layout: `plan.check_vae_config`
        layout = self.trainer.parallel.layout
        if layout.mode != "ddp" or layout.sp > 1:
            raise InputError(*VAE_DDP_ONLY)

    def build(self, accelerator) -> Built:
        from diffusers.optimization import get_scheduler

        from .losses import VAELoss

        cfg = self.config
        vae, loss_state = load_vae_for_training(cfg)
        lpips = _lpips_from(cfg, loss_state)
        loss = VAELoss(
            lpips,
            disc_start=cfg.loss.disc_start,
            kl_weight=cfg.loss.kl_weight,
            perceptual_weight=cfg.loss.perceptual_weight,
            pixel_loss=cfg.loss.pixel_loss,
            disc_weight=cfg.loss.disc_weight,
            disc_factor=cfg.loss.disc_factor,
            logvar_init=cfg.loss.logvar_init,
            disc_num_layers=cfg.loss.disc_num_layers,
            disc_channels=cfg.loss.disc_channels,
        )
        self.carried = self._load_carried_loss(loss, loss_state)
        need = loss.discriminator.min_extent(spatial=True)
        if min(cfg.data.height, cfg.data.width) < need:
            raise InputError(f"size {cfg.data.height}x{cfg.data.width} is below the discriminator's {need}x{need} receptive field", f"train at {need}x{need} or larger")
        gen_params = [p for p in vae.parameters() if p.requires_grad] + ([loss.logvar] if cfg.loss.learn_logvar else [])
        if not cfg.loss.learn_logvar:
            loss.logvar.requires_grad_(False)
        o = cfg.optim
        adam = torch.optim.AdamW if o.weight_decay > 0 else torch.optim.Adam
        gen_opt = adam(gen_params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        disc_opt = adam(loss.discriminator.parameters(), lr=cfg.loss.disc_lr or o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        scheds = [
            get_scheduler(o.lr_scheduler, opt, num_warmup_steps=o.lr_warmup_steps, num_training_steps=cfg.run.max_steps)
            for opt in (gen_opt, disc_opt)
        ]
        return Built(model=TrainingForward(vae, _vae_step), optimizers=[gen_opt, disc_opt], schedulers=scheds, extra_models=[loss])

    @staticmethod
    def _load_carried_loss(loss, loss_state: dict[str, torch.Tensor]) -> list[str]:
        """Start the discriminator / logvar from a released checkpoint's `loss.*` when they fit."""
        used = []
        disc = {k[len("discriminator."):]: v for k, v in loss_state.items() if k.startswith("discriminator.")}
        own = loss.discriminator.state_dict()
        if disc and set(disc) == set(own) and all(own[k].shape == v.shape for k, v in disc.items()):
            loss.discriminator.load_state_dict(disc)
            used.append("discriminator")
        if "logvar" in loss_state and loss_state["logvar"].numel() == 1:
            with torch.no_grad():
                loss.logvar.fill_(float(loss_state["logvar"].reshape(())))
            used.append("logvar")
        return used

    def prepared(self, model, optimizers, schedulers, extra_models) -> None:
        self.model = model
        self.loss = extra_models[0]
        self.gen_opt, self.disc_opt = optimizers
        self.gen_sched, self.disc_sched = schedulers
        unwrapped = self.trainer.accelerator.unwrap_model(model)
        self.vae = unwrapped.inner
        self.loss_module = self.trainer.accelerator.unwrap_model(self.loss)

    def dataset(self):
        from ..data.annotations import load_entries
        from ..data.datasets import ClipSpec, VideoClipDataset

        d = self.config.data
        entries = load_entries(d.data, folder="videos")
        spec = ClipSpec(d.frames, d.stride, d.height, d.width, d.random_start)
        return VideoClipDataset(entries, spec, seed=self.config.run.seed)

    def train_step(self, micro_batches: list[dict[str, Any]], step: int) -> dict[str, float]:
        acc = self.trainer.accelerator
        clip = self.config.optim.max_grad_norm
        batch = micro_batches[0]
        video = batch["video"].to(acc.device)
        self.model.train()
        self.loss.train()

        from .randomness import batch_positions

        recon, moments = self.model(video, self.config.run.seed, batch_positions(batch))
        gen = self.loss("generator", video, recon, moments, step, self.vae.get_last_layer())
        self.gen_opt.zero_grad(set_to_none=True)
        acc.backward(gen["loss"])
        if clip > 0:
            acc.clip_grad_norm_(self.vae.parameters(), clip)
        self.gen_opt.step()
        self.gen_sched.step()
        logs = {f"vae/{k}": float(v.detach()) for k, v in gen.items() if k != "loss"}
        logs["loss"] = float(gen["loss"].detach())

        if self.loss_module.factor(step) > 0:
            disc = self.loss("discriminator", video, recon.detach(), None, step)
            self.disc_opt.zero_grad(set_to_none=True)  # drop what the generator step left on D
            acc.backward(disc["loss"])
            if clip > 0:
                acc.clip_grad_norm_(self.loss_module.discriminator.parameters(), clip)
            self.disc_opt.step()
            self.disc_sched.step()
            logs.update({f"disc/{k}": float(v.detach()) for k, v in disc.items()})
        logs["lr"] = self.gen_sched.get_last_lr()[0]
        return logs

    def extra_state(self) -> dict[str, Any]:
        return {"loss_weights_from_checkpoint": getattr(self, "carried", [])}

