"""Running one job over several processes: modes, device mesh, DSP, guidance halves, parallel VAE decoding."""
