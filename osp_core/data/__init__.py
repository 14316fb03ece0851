"""Training data: the Open-Sora-Plan annotation format (`annotations`), clip datasets with
skip-and-count (`datasets`) and the frozen-encoder feature cache (`cache`)."""
