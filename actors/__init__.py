"""Rollout side of reelrl: the Ray rollout actor, the vLLM engine wrapper, prompts, rewards
and confidence-gated inference."""
