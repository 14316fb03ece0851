"""Training: one Accelerate loop (`trainer`) with atomic checkpoints (`checkpoint`), the VAE and
text-to-video recipes (`vae_recipe`, `t2v_recipe`), their objectives (`losses`, `diffusion`),
image-VAE inflation (`inflate`) and the typed config tree (`config`).

Submodules are imported on use, so `import osp_core.train` stays light.
"""
