"""Reward functions: pure graders that map any model output text to a number."""
