"""A run's generator: the models of a config, a generator back from a checkpoint, samples.

`build_models` makes the plain pair of a TrainConfig (DCGAN or R3GAN-style) (the training loop converts and
trains it); `load_generator` rebuilds G from a checkpoint (the EMA copy by default) and
returns it ready to sample: converted, in eval mode with its own BatchNorm statistics
(`sampling_generator`). `generate_batches` / `generate` draw images from seeded CPU noise.
`fastgan train` (grids, --eval-every), `fastgan sample` and `fastgan eval` all sample here.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

from fastgan.convert import convert
from fastgan.errors import UserError
from fastgan.models import (Discriminator, Generator, num_classes, r3gan, resnet, spectral_norm_,
                            weights_init)
from fastgan.nn.sync_bn_act import desynchronize_
from fastgan.runs.checkpoint import load_checkpoint
from fastgan.runs.config import TrainConfig, default_device

GEN_BATCH = 250


def build_models(cfg: TrainConfig, nc: int, classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """The plain pair of a config, initialised from `cfg.seed`: DCGAN (pytorch/examples'
    init), ResNet (SNGAN's) or R3GAN-style (its fix-up init; widths from --ngf / --ndf);
    class-conditional on `classes` classes when > 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.arch == "r3gan":
            G = r3gan.Generator(cfg.nz, r3gan.widths_for(cfg.image_size, cfg.ngf), nc=nc,
                                num_classes=classes)
            D = r3gan.Discriminator(r3gan.widths_for(cfg.image_size, cfg.ndf)[::-1], nc=nc,
                                    num_classes=classes)
        elif cfg.arch == "resnet":
            G = resnet.Generator(cfg.nz, cfg.ngf, nc, cfg.image_size, classes)
            D = resnet.Discriminator(cfg.ndf, nc, cfg.image_size, classes)
        else:
            G = Generator(cfg.nz, cfg.ngf, nc, cfg.image_size, classes).apply(weights_init)
            D = Discriminator(cfg.ndf, nc, sigmoid=False, image_size=cfg.image_size,
                              num_classes=classes)
            D.apply(weights_init)
        if cfg.spectral_norm:
            spectral_norm_(D)
    return G, D


@torch.no_grad()
def sampling_generator(G: nn.Module, nz: int, device: torch.device | str, seed: int,
                       batches: int = 8, batch_size: int = 64) -> nn.Module:
    """A copy of G in eval mode whose BatchNorm statistics are its own.

    An EMA generator's running statistics were collected by other weights (the training
    G's), so it is put through `batches` noise batches in training mode with cumulative
    averaging (momentum=None) first: BigGAN's "standing statistics". Deterministic in
    `seed`; G itself is untouched. A conditional G sees every class equally often."""
    Gs = desynchronize_(copy.deepcopy(G))  # run by one process: no collectives
    bns = [m for m in Gs.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        Gs.train()
        gen = torch.Generator(device=device).manual_seed(seed + 3)
        for _ in range(batches):
            z = torch.randn(batch_size, nz, 1, 1, generator=gen, device=device)
            labels = sample_labels(Gs, batch_size)
            Gs(z) if labels is None else Gs(z, labels.to(device))
    return Gs.eval()


def sample_labels(G: nn.Module, n: int, cls: int | None = None) -> torch.Tensor | None:
    """The classes to draw n samples of a conditional G in (None for an unconditional
    one): all `cls`, or by default every class in turn (0, 1, ..., K-1, 0, ...), so the
    classes are equally represented. CPU int64."""
    k = num_classes(G)
    if not k:
        if cls is not None:
            raise UserError(f"--class {cls}: the run is not class-conditional (trained "
                            "without --conditional)")
        return None
    if cls is None:
        return torch.arange(n) % k
    if not 0 <= cls < k:
        raise UserError(f"--class {cls}: expected a class in 0..{k - 1} (the run has {k})")
    return torch.full((n,), cls, dtype=torch.long)


def load_generator(ckpt: str, ema: bool = True, device: str | None = None,
                   what: str = "CKPT") -> tuple[nn.Module, TrainConfig, bool]:
    """(G ready to sample, the run's config, whether it is the EMA copy) from a checkpoint
    file or a run directory."""
    state = load_checkpoint(ckpt, what)
    cfg = TrainConfig.from_json(state["config"], ckpt)
    device = device or default_device()
    G, _ = build_models(cfg, state["nc"], state.get("num_classes", 0))
    use_ema = ema and state.get("G_ema") is not None
    try:
        G.load_state_dict(state["G_ema"] if use_ema else state["G"])
    except (RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{what} {ckpt}: the generator's weights do not fit the checkpoint's "
                        f"config ({first[:300]})") from None
    G = convert(G.to(device), inplace=True)
    return sampling_generator(G, cfg.nz, device, cfg.seed), cfg, use_ema


@torch.no_grad()
def generate_batches(G: nn.Module, nz: int, n: int, seed: int,
                     labels: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """n images of G in [-1, 1], GEN_BATCH at a time on G's device, from CPU noise seeded
    by `seed` (the same images whatever the device). A conditional G draws the classes
    `labels` (default: sample_labels(G, n), every class equally often)."""
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    if labels is None:
        labels = sample_labels(G, n)
    for i in range(0, n, GEN_BATCH):
        z = torch.randn(min(GEN_BATCH, n - i), nz, 1, 1, generator=gen).to(device)
        yield G(z) if labels is None else G(z, labels[i:i + z.shape[0]].to(device))


def generate(G: nn.Module, nz: int, n: int, seed: int,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """n images in [-1, 1], float32 on the CPU (generate_batches, concatenated)."""
    return torch.cat([x.float().cpu() for x in generate_batches(G, nz, n, seed, labels)])


__all__ = ["build_models", "sample_labels", "sampling_generator", "load_generator", "generate",
           "generate_batches", "GEN_BATCH"]
