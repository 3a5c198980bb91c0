"""Training side of reelrl: the per-rank DeepSpeed worker, GRPO and SFT losses, batch
collation, weight export and checkpoint/resume."""
