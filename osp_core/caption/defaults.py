"""Default settings of `osp caption`, shared by the library and the CLI (no heavy imports here)."""

# A video-capable vision-language model that transformers runs natively (no remote code).
DEFAULT_CAPTION_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
NUM_FRAMES = 8  # frames sampled uniformly per clip for the captioner
BATCH_SIZE = 4  # clips per generate call
MAX_NEW_TOKENS = 256  # longest caption
FRAME_SIZE = 448  # longest side of the frames the captioner sees
MIN_MOTION = 1.0  # motion score (gray levels) below which a clip counts as static
