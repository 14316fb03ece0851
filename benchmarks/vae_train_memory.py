"""Saved-activation bytes of one CausalVideoVAE training forward (v1.1.0 architecture), and its
parameter / gradient / Adam bytes, for the VAE-stays-DDP decision."""
import time, torch
from osp_core.models.causal_vae import CausalVideoVAE
from osp_core.train.losses import VAELoss
torch.set_num_threads(2)
vae = CausalVideoVAE()
params = sum(p.numel() for p in vae.parameters())
loss = VAELoss(None, perceptual_weight=0.0)
dparams = sum(p.numel() for p in loss.discriminator.parameters())
saved = [0]
def pack(t):
    saved[0] += t.numel() * t.element_size()
    return t
frames, size = 9, 64
x = torch.randn(1, 3, frames, size, size)
t0 = time.time()
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
print(f"vae params {params/1e6:.1f}M disc params {dparams/1e6:.2f}M; states fp32 (param+grad+2 Adam) {16*(params+dparams)/2**30:.2f} GiB")
print(f"saved activations at {frames}x{size}x{size}: {saved[0]/2**30:.3f} GiB ({time.time()-t0:.1f}s)")
scale = (17 / frames) * (256 * 256) / (size * size)
print(f"scaled to 17x256x256 per sample: {saved[0]*scale/2**30:.1f} GiB")
