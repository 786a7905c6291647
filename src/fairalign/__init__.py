"""fairalign: RL alignment of language models with length-fair (FSPO) and preference-fair (P-GRPO)
objectives, multi-turn personalized dialogue (RLPA), the usual baselines, and length-fairness
diagnostics."""

__version__ = "0.1.0"
