"""The configuration of a `fastgan train` run: its flags, defaults, checks and config.json.

One dataclass holds every setting; the CLI builds it from the flags a user gave, a resumed
run from its config.json plus the flags given again (which must agree, except the few in
`RESUME_MAY_CHANGE`, which do not touch the training math). Every check lives in
`TrainConfig.check` and raises UserError naming the flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch

from fastgan.data import check_image_size
from fastgan.errors import UserError
from fastgan.ops.gan_loss_reference import KINDS

ARCHS = ("dcgan", "resnet", "r3gan")
LOSSES = KINDS  # the kinds of fastgan.functional.gan_loss
# What an architecture changes in the defaults of a new run (flags given win). R3GAN's
# paper trains with its relativistic pairing loss, R1 and R2 at every step and Adam's
# beta1 = 0, beta2 = 0.99; gamma 0.05 is its CIFAR-10 setting (at 32x32, as here).
# SNGAN's ResNet trains with the hinge loss, spectral norm in D and betas 0, 0.9 (and 5 D
# steps per G step, which fastgan leaves at --n-critic 1 for a CPU's sake).
ARCH_PRESETS: dict[str, dict[str, Any]] = {
    "resnet": {"loss": "hinge", "spectral_norm": True, "betas": (0.0, 0.9)},
    "r3gan": {"loss": "rpgan", "r1": 0.05, "r2": 0.05, "betas": (0.0, 0.99)},
}
AMP = ("none", "bf16", "fp16")
IMPLS = ("fastgan", "eager", "compile")
# Settings a resumed run may change: the end step, how often to log, sample, save and evaluate, and
# the device (a run may move between machines; bit-exact resume holds on one device).
RESUME_MAY_CHANGE = ("steps", "log_every", "sample_every", "ckpt_every", "eval_every", "out",
                     "device")


@dataclasses.dataclass
class TrainConfig:
    data: str = "fashion-mnist"
    arch: str = "dcgan"        # dcgan, resnet or r3gan (fastgan/models/<arch>.py)
    conditional: bool = False  # class-conditional G and D on the data's labels
    image_size: int = 32
    loss: str = "ns"
    gp: float = 0.0            # WGAN-GP weight (Gulrajani et al. 2017); 0 = off
    r1: float = 0.0            # R1 weight gamma, penalty gamma/2 * |grad D(real)|^2; 0 = off
    r2: float = 0.0            # R2 weight gamma, penalty gamma/2 * |grad D(fake)|^2; 0 = off
    n_critic: int = 1          # D steps per G step
    clip: float = 0.0          # WGAN weight clipping of D's parameters to [-clip, clip]; 0 = off
    spectral_norm: bool = False
    ema: float = 0.999         # decay of the EMA copy of G; 0 = no EMA
    amp: str = "none"
    impl: str = "fastgan"
    batch_size: int = 64
    steps: int = 2000          # G steps (each after n_critic D steps)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    seed: int = 0
    device: str = "cpu"
    out: str = ""
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 1000
    eval_every: int = 0        # steps between FID/KID/IS evaluations (fastgan-fmnist); 0 = never

    def check(self) -> "TrainConfig":
        """Raise UserError for the first setting that is out of range; return self."""
        check_image_size(self.image_size)
        _choice("--arch", self.arch, ARCHS)
        _choice("--loss", self.loss, LOSSES)
        _choice("--amp", self.amp, AMP)
        _choice("--impl", self.impl, IMPLS)
        for flag, value in (("--batch-size", self.batch_size), ("--n-critic", self.n_critic),
                            ("--nz", self.nz), ("--ngf", self.ngf), ("--ndf", self.ndf)):
            if value < 1:
                raise UserError(f"{flag}: expected a positive integer, got {value}")
        if self.steps < 0:
            raise UserError(f"--steps: expected a number of steps >= 0, got {self.steps}")
        for flag, value in (("--log-every", self.log_every), ("--sample-every", self.sample_every),
                            ("--ckpt-every", self.ckpt_every), ("--eval-every", self.eval_every)):
            if value < 0:
                raise UserError(f"{flag}: expected 0 (never) or a positive interval, got {value}")
        for flag, value in (("--gp", self.gp), ("--r1", self.r1), ("--r2", self.r2),
                            ("--clip", self.clip)):
            if not value >= 0:
                raise UserError(f"{flag}: expected a weight >= 0 (0 = off), got {value}")
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema: expected a decay in [0, 1) (0 = off), got {self.ema}")
        if not self.lr > 0:
            raise UserError(f"--lr: expected a learning rate > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"--betas: expected two values in [0, 1), got {list(self.betas)}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise UserError(f"--device: expected cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
        if self.amp == "fp16" and not self.device.startswith("cuda"):
            raise UserError("--amp fp16: needs --device cuda (fp16 with a GradScaler); "
                            "use --amp bf16 on the CPU")
        return self

    # config.json -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"{where}: unknown settings {unknown}; written by a newer fastgan?")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def new_config(given: dict[str, Any]) -> TrainConfig:
    """The config of a new run from the flags given: TrainConfig's defaults, then the
    architecture's preset (ARCH_PRESETS), then the flags."""
    preset = ARCH_PRESETS.get(given.get("arch", TrainConfig.arch), {})
    return TrainConfig(**{"device": default_device(), **preset, **given})


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{flag}: expected one of {', '.join(choices)}, got {value!r}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def read_config(run_dir: str) -> TrainConfig:
    """The TrainConfig of an existing run directory, or UserError if it holds no run."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise UserError(f"--resume {run_dir}: no such directory")
    if not os.path.isfile(path):
        raise UserError(f"--resume {run_dir}: holds no fastgan run (no config.json)")
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a JSON object of settings")
    try:
        return TrainConfig.from_json(d, path)
    except TypeError as e:
        raise UserError(f"{path}: not a fastgan run configuration ({e})") from None


def merge_resume(saved: TrainConfig, given: dict[str, Any], run_dir: str) -> TrainConfig:
    """The saved config updated with the flags given again on `--resume`: those that would
    change the training itself must agree with the run (a UserError names each that does
    not); steps, the intervals and out may change."""
    clash = []
    for name, value in given.items():
        old = getattr(saved, name)
        if name == "betas":
            value = tuple(value)
        if name in RESUME_MAY_CHANGE or value == old:
            continue
        clash.append(f"--{name.replace('_', '-')} {_show(value)} (the run has {_show(old)})")
    if clash:
        raise UserError(f"--resume {run_dir}: flags disagree with the run's config.json: "
                        + "; ".join(clash) + ". Leave them out to keep the run's settings, "
                        "or start a new run with --out")
    merged = dataclasses.replace(saved, **{k: v for k, v in given.items()
                                           if k in RESUME_MAY_CHANGE})
    merged.out = run_dir
    return merged.check()


def _show(v: Any) -> str:
    return " ".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


__all__ = ["TrainConfig", "ARCHS", "ARCH_PRESETS", "new_config", "LOSSES", "AMP", "IMPLS", "RESUME_MAY_CHANGE", "read_config",
           "merge_resume", "default_device"]
