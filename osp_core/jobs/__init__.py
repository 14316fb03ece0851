"""Jobs: the floor that plans, runs and writes. Each job is `plan_*(job)` (every check, no
weights loaded) then `run_*(plan, progress)` returning a summary; the CLI and the web page call
these, and these call `pipelines/` (tensors in, tensors out).

- `sampling_plan`: `SamplingJob`, `plan_sampling`, prompts, memory checks (imports no torch)
- `sampling`: the shared run (output folder, `PipelineCache`, load/place/denoise), `run_sampling`
- `calibrate`: TeaCache calibration
- `edit`: `EditJob`, `plan_edit`, `run_edit`
- `vae`: encode, decode and the round trip
- `records`: the one writer of mp4/png + latents + sidecar, and their schemas
- `progress`: what a run reports (`SamplingProgress`)
"""
