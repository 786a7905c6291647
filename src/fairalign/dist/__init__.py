"""Data-parallel glue: collectives and model/optimizer wrapping per strategy (base.py: one process and
DDP; fsdp2.py; deepspeed.py), and which one this process runs (launch.py). No algorithm code here."""
from fairalign.dist.base import DDPDist, Dist
from fairalign.dist.deepspeed import DeepSpeedDist
from fairalign.dist.fsdp2 import FSDP2Dist
from fairalign.dist.launch import STRATEGIES, from_env, make_dist, resolve_strategy

__all__ = ["Dist", "DDPDist", "FSDP2Dist", "DeepSpeedDist", "STRATEGIES", "from_env", "make_dist",
           "resolve_strategy"]
