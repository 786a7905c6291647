"""fairalign inside other trainers: glue that puts fairalign's policy losses, P-GRPO advantages and
length-fairness metrics into a framework the user already trains with (docs/integrations.md).

Each integration is a submodule that imports its framework, so import the one you use:
    fairalign.integrations.trl    TRL's GRPOTrainer (`FairGRPOConfig`, `FairGRPOTrainer`); extra `trl`
    fairalign.integrations.verl   verl's policy-loss and advantage-estimator registries; extra `verl`
This package itself imports nothing, so `import fairalign` never needs either framework.
"""
