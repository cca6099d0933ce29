"""The run machinery: the training loop, checkpoints, resume, tracking, data-parallel setup, warm-start pretraining."""
