"""Which data-parallel strategy this process runs, from `dist_strategy` and the launcher's environment
(torchrun's RANK / WORLD_SIZE, accelerate's ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED and their
settings), and the `Dist` object for it. The strategies themselves are in base.py (one process, DDP),
fsdp2.py and deepspeed.py."""
from __future__ import annotations

import os

import torch

import fairalign.dist.deepspeed as zero
from fairalign.dist.base import DDPDist, Dist
from fairalign.dist.deepspeed import DeepSpeedDist
from fairalign.dist.fsdp2 import FSDP2Dist
from fairalign.errors import ConfigError

STRATEGIES = ("auto", "ddp", "fsdp2", "deepspeed")


def env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def deepspeed_options(env) -> dict:
    """{'zero_stage': 2 | 3} from accelerate's ACCELERATE_DEEPSPEED_* variables (default stage 2);
    a one-line error for each setting fairalign does not implement."""
    stage = (env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or "2").strip()
    if stage not in ("2", "3"):
        raise ConfigError(f"ACCELERATE_DEEPSPEED_ZERO_STAGE={stage} is not supported by fairalign: use zero_stage 2 or 3")
    for var in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        device = (env.get(var) or "none").strip().lower()
        if device != "none":
            raise ConfigError(f"{var}={device} is not supported by fairalign's DeepSpeed mode: set it to none "
                             f"in the accelerate config")
    if env_flag(env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT")):
        raise ConfigError("ACCELERATE_DEEPSPEED_ZERO3_INIT=true is not supported by fairalign (every rank loads the "
                         "full model, then ZeRO partitions it): set zero3_init_flag: false")
    path = (env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "none").strip()
    if path.lower() != "none":
        raise ConfigError(f"ACCELERATE_DEEPSPEED_CONFIG_FILE={path} is not supported by fairalign (it writes the "
                         f"DeepSpeed config itself): set zero_stage in the accelerate config instead")
    gas = (env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS") or "1").strip()
    if gas != "1":
        raise ConfigError(f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS={gas} is not supported by fairalign (it "
                         f"accumulates algo.micro_batch_size micro-batches itself): set gradient_accumulation_steps: 1")
    clip = (env.get("ACCELERATE_GRADIENT_CLIPPING") or "none").strip().lower()
    if clip != "none":
        raise ConfigError(f"ACCELERATE_GRADIENT_CLIPPING={clip} is not supported by fairalign: remove "
                         f"gradient_clipping from the accelerate config and set optim.grad_clip")
    precision = (env.get("ACCELERATE_MIXED_PRECISION") or "no").strip().lower()
    if precision != "no":
        raise ConfigError(f"ACCELERATE_MIXED_PRECISION={precision} is not supported by fairalign's DeepSpeed mode: "
                         f"set mixed_precision: 'no' (fairalign's precision=bf16 sets autocast itself)")
    return {"zero_stage": int(stage)}


def resolve_strategy(configured: str = "auto", env=None) -> tuple[str, dict]:
    """The strategy to use and its options (FSDP2's, or DeepSpeed's `zero_stage`), from `dist_strategy`
    and the launcher's env vars (`accelerate launch` exports ACCELERATE_USE_FSDP, FSDP_VERSION and FSDP_*,
    or ACCELERATE_USE_DEEPSPEED and ACCELERATE_DEEPSPEED_*, from its config)."""
    env = os.environ if env is None else env
    if configured not in STRATEGIES:
        raise ConfigError(f"config key 'dist_strategy' has unknown value '{configured}'; allowed: "
                         f"{', '.join(STRATEGIES)}")
    options: dict = {}
    launcher = None
    if env_flag(env.get("ACCELERATE_USE_DEEPSPEED")) and env_flag(env.get("ACCELERATE_USE_FSDP")):
        raise ConfigError("ACCELERATE_USE_DEEPSPEED and ACCELERATE_USE_FSDP are both set: pick one accelerate config")
    if env_flag(env.get("ACCELERATE_USE_DEEPSPEED")) or configured == "deepspeed":
        options = deepspeed_options(env)
        launcher = "deepspeed" if env_flag(env.get("ACCELERATE_USE_DEEPSPEED")) else None
    if env_flag(env.get("ACCELERATE_USE_FSDP")):
        version = env.get("FSDP_VERSION", "1").strip()
        if version != "2":
            raise ConfigError(f"FSDP version {version} (FSDP_VERSION) is not supported by fairalign: use FSDP2 "
                             f"(fsdp_version: 2, configs/accelerate/fsdp2.yaml) or DDP")
        for var in ("FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING"):
            if env_flag(env.get(var)):
                raise ConfigError(f"{var}=true is not supported by fairalign's FSDP2 mode: set it to false "
                                 f"in the accelerate config")
        policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
        if policy != "TRANSFORMER_BASED_WRAP":
            raise ConfigError(f"FSDP_AUTO_WRAP_POLICY={policy} is not supported by fairalign: use "
                             f"TRANSFORMER_BASED_WRAP (each decoder layer is sharded)")
        reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
        if reshard not in ("true", "false"):
            raise ConfigError(f"FSDP_RESHARD_AFTER_FORWARD={reshard} must be true or false with FSDP2")
        options["reshard_after_forward"] = reshard == "true"
        classes = [c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip()]
        if classes:
            options["wrap_classes"] = classes
        launcher = "fsdp2"
    if configured == "auto":
        return launcher or "ddp", options
    if launcher is not None and configured != launcher:
        flag = "DeepSpeed (ACCELERATE_USE_DEEPSPEED)" if launcher == "deepspeed" else "FSDP2 (ACCELERATE_USE_FSDP)"
        raise ConfigError(f"config key 'dist_strategy' is '{configured}' but the launcher's accelerate config "
                         f"selects {flag}: set dist_strategy={launcher} or auto")
    return configured, options


def from_env(strategy: str = "auto") -> Dist:
    """The strategy's class for this process (see `make_dist`), from `dist_strategy` and the
    launcher's env vars; joins (or creates) the process group when WORLD_SIZE > 1."""
    strategy, options = resolve_strategy(strategy)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return make_dist(strategy=strategy, options=options)
    if strategy == "deepspeed":
        zero.import_deepspeed()  # fail before the process group exists
    import torch.distributed as td

    if not td.is_initialized():  # launched by `accelerate launch` / torchrun: env:// rendezvous
        if torch.cuda.is_available():  # one GPU per process (NCCL needs it set before its first use)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        # CPU tensors (metrics, the model while it lives on CPU) go over gloo, CUDA tensors over NCCL
        td.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return make_dist(td.get_rank(), td.get_world_size(), strategy, options)


_CLASSES = {"ddp": DDPDist, "fsdp2": FSDP2Dist, "deepspeed": DeepSpeedDist}


def make_dist(rank: int = 0, world: int = 1, strategy: str = "ddp", options: dict | None = None) -> Dist:
    """The `Dist` for `strategy` (a resolved name: ddp, fsdp2 or deepspeed) with `world` processes:
    the strategy's class, or the plain `Dist` for one process (nothing to shard or partition)."""
    if strategy not in _CLASSES:
        raise ConfigError(f"unknown distributed strategy '{strategy}'; allowed: {', '.join(_CLASSES)}")
    if world <= 1:
        return Dist(rank, world, strategy, options)
    return _CLASSES[strategy](rank, world, options)
