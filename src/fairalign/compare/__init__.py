"""Paired seed studies: `fairalign compare SPEC.yaml [KEY=VALUE ...]` (docs/compare.md).

spec.py   the study spec, validated whole (every run's config built) before anything trains
study.py  train / resume / reuse every arm x seed run, evaluate it, aggregate, print the table
stats.py  pure statistics: exact Student-t quantiles and p-values, paired differences over seeds
"""
from fairalign.compare.spec import Study, load_study
from fairalign.compare.stats import mean_interval, paired_differences, t_quantile, t_two_sided_p
from fairalign.compare.study import aggregate, format_table, run_metrics, run_study

__all__ = ["Study", "aggregate", "format_table", "load_study", "mean_interval", "paired_differences",
           "run_metrics", "run_study", "t_quantile", "t_two_sided_p"]
