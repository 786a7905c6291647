"""Paired seed studies: `fairalign compare SPEC.yaml [KEY=VALUE ...]` (docs/compare.md).

spec.py       the study spec (arms, seeds, primary and derived metrics), validated whole before anything trains
study.py      train / resume / reuse every arm x seed run, evaluate it and each seed's untrained policy
results.py    each run's metrics from its files, aggregated into comparison.json
table.py      the printed reading: primary metrics first, then the secondary ones
stats.py      pure statistics: exact Student-t quantiles and p-values, paired differences, mde80, Holm
bootstrap.py  the two-level (seeds x profiles) paired bootstrap of the dialogue metrics
"""
from fairalign.compare.bootstrap import dialogue_bootstrap
from fairalign.compare.results import aggregate, run_metrics
from fairalign.compare.spec import Study, load_study
from fairalign.compare.stats import holm, mde80, mean_interval, paired_differences, t_quantile, t_two_sided_p
from fairalign.compare.study import run_study
from fairalign.compare.table import format_table

__all__ = ["Study", "aggregate", "dialogue_bootstrap", "format_table", "holm", "load_study", "mde80",
           "mean_interval", "paired_differences", "run_metrics", "run_study", "t_quantile", "t_two_sided_p"]
