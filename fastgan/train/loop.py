"""The training loop of `fastgan train`: optimizers, one GAN step, state, run (the models
and the sampled generator come from fastgan.runs.generator).

One step is pytorch/examples' dcgan step, generalised:
  - `n_critic` discriminator updates, each on a fresh real batch and fresh noise; the
    generator's last batch of fakes is made with grad and reused by the G update, so the
    common n_critic = 1 case runs G forward once per step, as the original does;
  - the D loss of `--loss` (real and fake batches through D separately, so BatchNorm sees
    each on its own), plus R1 on the real batch (Mescheder et al. 2018) or the WGAN-GP
    penalty on real/fake interpolates (Gulrajani et al. 2017), then weight clipping;
  - the G update with D's parameters frozen (no weight gradients computed for D);
  - the EMA copy of G (decay min(ema, (1 + t) / (10 + t)), so short runs are not
    dominated by the initial weights; buffers copied).

Every source of randomness is a seeded torch.Generator of the trainer, and all of them,
the data order, the optimizers, the GradScalers and the EMA are in the checkpoint: on the
CPU, N steps + resume + N steps give bit-identical state to 2N steps straight.

Under torchrun (fastgan/train/distributed.py) each process runs this step on its slice of
every global batch of data and noise, with BatchNorm statistics merged across processes
and gradients averaged by one explicit all-reduce per network per update (why not DDP:
that file's docstring); rank 0 alone writes the run directory.

`impl` picks what runs the same model: "fastgan" (fastgan.convert + the fused loss),
"eager" (plain PyTorch layers and the loss as plain torch expressions) or "compile"
(torch.compile of the plain model and loss).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fastgan._backend import use_backend
from fastgan.convert import convert
from fastgan.data import Batches, to_float
from fastgan.errors import UserError
from fastgan.functional import GANLosses, gan_loss
from fastgan.ops.gan_loss_reference import reference_forward
from fastgan.runs.checkpoint import load_checkpoint, save_checkpoint, write_json
from fastgan.runs.config import TrainConfig
from fastgan.runs.generator import build_models, sampling_generator
from fastgan.train.distributed import Dist
from fastgan.train.report import MetricsLog, Progress, eval_line, plot_metrics, save_grid

N_FIXED = 64          # samples in each grid (8 a row; a conditional run: 8 per class row)
GRID_CLASSES = 16     # class rows in a conditional run's grids (the first 16 classes)
EVAL_N = 10_000       # samples per --eval-every evaluation (fastgan eval's default too)
# what metrics.jsonl averages over a logging interval, in this order
TRACKED = ("d_loss", "g_loss", "d_real", "d_fake", "penalty")


def _reference_loss(real_logits: Tensor, fake_logits: Tensor, kind: str) -> GANLosses:
    return GANLosses(*reference_forward(real_logits, fake_logits, kind, "mean", 1.0))


def _fused_loss(real_logits: Tensor, fake_logits: Tensor, kind: str) -> GANLosses:
    return gan_loss(real_logits, fake_logits, kind)


def _call(net: Callable[..., Tensor], x: Tensor, labels: Tensor | None) -> Tensor:
    """net(x), or net(x, labels) for a conditional run."""
    return net(x) if labels is None else net(x, labels)


def _grad(out: Tensor, inp: Tensor, scaler: torch.amp.GradScaler) -> Tensor:
    """d out.sum() / d inp with a graph (for a penalty), computed on the GradScaler's scale
    so fp16 gradients do not underflow, then unscaled (torch.amp's gradient-penalty recipe)."""
    (g,) = torch.autograd.grad(scaler.scale(out.float().sum()), inp, create_graph=True)
    return g.float() / scaler.get_scale() if scaler.is_enabled() else g.float()


class Trainer:
    """Owns a run's models, optimizers, data stream and random generators. With `dist`
    (several processes, fastgan/train/distributed.py) this process trains on its share of
    every global batch, with synchronized BatchNorm and averaged gradients."""

    def __init__(self, cfg: TrainConfig, images: Tensor, dist: Dist | None = None,
                 labels: Tensor | None = None) -> None:
        self.cfg = cfg
        self.dist = dist = dist or Dist()
        self.device = dev = torch.device(dist.device(cfg.device))
        self.local_batch = dist.shard(cfg.batch_size)
        if cfg.conditional and labels is None:
            raise ValueError("Trainer: a conditional run needs the data's labels")
        self.num_classes = int(labels.max()) + 1 if cfg.conditional else 0
        G, D = build_models(cfg, images.shape[1], self.num_classes)
        G, D = G.to(dev), D.to(dev)
        G_ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema > 0 else None
        if dist.enabled and cfg.impl != "fastgan":
            if dev.type != "cuda":
                raise UserError(f"--impl {cfg.impl} on several processes: torch's "
                                "nn.SyncBatchNorm runs on CUDA only; use --impl fastgan (its "
                                "synchronized BatchNorm runs on the CPU too) or --device cuda")
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
            D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        if cfg.impl == "fastgan":
            # G_ema is only ever run by one process (samples, evaluations): not synchronized
            G = convert(G, inplace=True, sync_bn=dist.enabled)
            D = convert(D, inplace=True, sync_bn=dist.enabled)
            G_ema = convert(G_ema, inplace=True) if G_ema is not None else None
        dist.broadcast_module(G)
        dist.broadcast_module(D)
        self.G, self.D, self.G_ema = G, D, G_ema           # own the parameters and state
        self.G_fwd, self.D_fwd = G, D                       # what the step calls
        self.loss_fn: Callable[[Tensor, Tensor, str], GANLosses] = (
            _fused_loss if cfg.impl == "fastgan" else _reference_loss)
        if cfg.impl == "compile":
            self.G_fwd, self.D_fwd = torch.compile(G), torch.compile(D)
            self.loss_fn = torch.compile(_reference_loss)
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
        fp16 = cfg.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler(dev.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(dev.type, enabled=fp16)
        self.nc = images.shape[1]
        self.batches = Batches(images.to(dev), self.local_batch, cfg.seed, dist.rank,
                               dist.world_size,
                               labels.to(dev) if self.num_classes else None)
        self.noise = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        # the grids' samples: 8 per class row for a conditional run
        self.fixed_labels = (torch.arange(min(self.num_classes, GRID_CLASSES), device=dev)
                             .repeat_interleave(8) if self.num_classes else None)
        n_fixed = N_FIXED if self.fixed_labels is None else self.fixed_labels.shape[0]
        fixed = torch.Generator().manual_seed(cfg.seed + 2)
        self.fixed_noise = torch.randn(n_fixed, cfg.nz, 1, 1, generator=fixed).to(dev)
        self.step = 0
        self._acc = torch.zeros(len(TRACKED), dtype=torch.float64, device=dev)
        self._acc_n = 0

    # one step -------------------------------------------------------------------------

    def _ops(self):
        """fastgan's ops (bias_act, upfirdn2d, conditional BatchNorm) that a model calls
        itself run as the plain-PyTorch reference for --impl eager and compile, so the
        comparison is with the same model in plain PyTorch."""
        return nullcontext() if self.cfg.impl == "fastgan" else use_backend("reference")

    def _autocast(self):
        if self.cfg.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _z(self) -> Tensor:
        """This process's slice of a global batch of noise: every process draws the whole
        batch from the run's seed (a few KB), so the processes' noise together is one
        process's, whatever their number."""
        z = torch.randn(self.cfg.batch_size, self.cfg.nz, 1, 1, generator=self.noise,
                        device=self.device)
        return self.dist.mine(z)

    def _fake_labels(self) -> Tensor | None:
        """A conditional run's classes for this process's slice of a global batch of
        fakes, uniform over the classes (drawn whole by every process, as the noise)."""
        if not self.num_classes:
            return None
        y = torch.randint(self.num_classes, (self.cfg.batch_size,), generator=self.noise,
                          device=self.device)
        return self.dist.mine(y)

    def _d_step(self, real: Tensor, fake: Tensor, y_real: Tensor | None,
                y_fake: Tensor | None) -> tuple[GANLosses, Tensor]:
        cfg, D = self.cfg, self.D
        self.opt_d.zero_grad(set_to_none=True)
        if cfg.r1:
            real = real.detach().requires_grad_(True)
        if cfg.r2:
            fake = fake.detach().requires_grad_(True)
        # torch.compile has no double backward, so a penalised D step runs the module
        # itself (all of it: an eager graph's saved BatchNorm buffers must not be bumped
        # by a compiled graph's in-place running-stat update before backward). So does a
        # spectral-normalised D: with a 1x1 convolution (the ResNet's shortcuts), two
        # compiled calls before one backward fail in torch 2.14 (the first call's saved
        # power-iteration vector is updated in place by the second), where eager's
        # parametrization clones it.
        D_fwd = D if cfg.r1 or cfg.r2 or cfg.gp or cfg.spectral_norm else self.D_fwd
        with self._autocast():
            real_logits = _call(D_fwd, real, y_real)
            fake_logits = _call(D_fwd, fake, y_fake)
            losses = self.loss_fn(real_logits, fake_logits, cfg.loss)
        penalty = torch.zeros((), device=self.device)
        if cfg.r1:
            g = _grad(real_logits, real, self.scaler_d)
            penalty = penalty + cfg.r1 / 2 * g.square().flatten(1).sum(1).mean()
        if cfg.r2:  # R1's twin on the fakes (R3GAN penalises both)
            g = _grad(fake_logits, fake, self.scaler_d)
            penalty = penalty + cfg.r2 / 2 * g.square().flatten(1).sum(1).mean()
        if cfg.gp:
            alpha = self.dist.mine(torch.rand(self.cfg.batch_size, 1, 1, 1, generator=self.noise,
                                              device=self.device))
            mix = torch.lerp(fake.detach().float(), real.detach().float(), alpha)
            mix.requires_grad_(True)
            with self._autocast():  # (conditional: each interpolate judged as its real's class)
                out = _call(D, mix, y_real)
            g = _grad(out, mix, self.scaler_d)
            penalty = penalty + cfg.gp * (g.flatten(1).norm(dim=1) - 1).square().mean()
        self.scaler_d.scale(losses.d_loss + penalty).backward()
        self.dist.average_gradients(D)
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        if cfg.clip:
            with torch.no_grad():
                for p in D.parameters():
                    p.clamp_(-cfg.clip, cfg.clip)
        return losses, penalty.detach()

    def _g_step(self, fake: Tensor, y_fake: Tensor | None, real: Tensor,
                y_real: Tensor | None) -> GANLosses:
        self.opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                if self.cfg.loss == "rpgan":  # paired with the updated D's real logits
                    with torch.no_grad():
                        real_logits = _call(self.D_fwd, real, y_real)
                else:  # the other kinds' g_loss reads only the fakes
                    real_logits = torch.zeros(1, device=self.device)
                fake_logits = _call(self.D_fwd, fake, y_fake)
                losses = self.loss_fn(real_logits, fake_logits, self.cfg.loss)
            self.scaler_g.scale(losses.g_loss).backward()
        finally:
            self.D.requires_grad_(True)
        self.dist.average_gradients(self.G)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        return losses

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.G_ema is None:
            return
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def train_step(self) -> None:
        """One G step after n_critic D steps."""
        with self._ops():
            self._train_step()

    def _train_step(self) -> None:
        cfg = self.cfg
        for i in range(cfg.n_critic):
            if self.num_classes:
                real, y_real = self.batches.next_labelled()
            else:
                real, y_real = self.batches.next(), None
            real = to_float(real, self.device)
            z, y_fake = self._z(), self._fake_labels()
            with torch.set_grad_enabled(i == cfg.n_critic - 1), self._autocast():
                fake = _call(self.G_fwd, z, y_fake)
            d_losses, penalty = self._d_step(real, fake.detach(), y_real, y_fake)
        g_losses = self._g_step(fake, y_fake, real, y_real)
        self.step += 1
        self._update_ema()
        self._acc += torch.stack([d_losses.d_loss.detach().double(),
                                  g_losses.g_loss.detach().double(),
                                  d_losses.d_real.double(), d_losses.d_fake.double(),
                                  penalty.double()])
        self._acc_n += 1

    def take_metrics(self) -> dict[str, float]:
        """Means over the steps since the last call, and over the processes (one device
        sync; every process calls it at the same step)."""
        vals = (self.dist.mean(self._acc) / max(self._acc_n, 1)).tolist()
        self._acc.zero_()
        self._acc_n = 0
        return dict(zip(TRACKED, vals))

    # sampling ---------------------------------------------------------------------------

    def sampler(self) -> nn.Module:
        """The generator that grids and evaluations use: the EMA copy when there is one."""
        G = self.G_ema if self.G_ema is not None else self.G
        return sampling_generator(G, self.cfg.nz, self.device, self.cfg.seed)

    @torch.no_grad()
    def grid_samples(self) -> Tensor:
        """The grid's images: the sampled G on the fixed noise (and, conditional, a row of
        8 per class)."""
        return _call(self.sampler(), self.fixed_noise, self.fixed_labels)

    # state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "config": self.cfg.to_json(),
            "nc": self.nc,
            "num_classes": self.num_classes,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "batches": self.batches.state_dict(),
            "noise_rng": self.noise.get_state(),
            "fixed_noise": self.fixed_noise.cpu(),
            "torch_rng": torch.get_rng_state(),
            "metrics_acc": (self._acc.cpu(), self._acc_n),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.batches.load_state_dict(state["batches"])
        self.noise.set_state(state["noise_rng"])
        self.fixed_noise = state["fixed_noise"].to(self.device)
        torch.set_rng_state(state["torch_rng"])
        acc, self._acc_n = state["metrics_acc"]
        self._acc = acc.to(self.device)
        self.step = state["step"]


class _Stop:
    """SIGINT/SIGTERM while training: finish the step, save, exit. A second signal aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class Run:
    """A run directory and the loop that fills it: config.json, metrics.jsonl, samples/,
    checkpoints/ and losses.png. With several processes (`dist`), all of them train and
    rank 0 alone writes (and prints)."""

    def __init__(self, cfg: TrainConfig, images: Tensor, resume: bool = False,
                 quiet: bool = False, dist: Dist | None = None,
                 labels: Tensor | None = None) -> None:
        dist = dist or Dist()
        self.main = dist.is_main
        self.cfg, self.dir, self.quiet = cfg, cfg.out, quiet or not self.main
        self.trainer = Trainer(cfg, images, dist, labels)
        ckpt = os.path.join(self.dir, "checkpoints", "last.pt")
        if resume:
            state = load_checkpoint(ckpt, "--resume")
            if state.get("nc") != images.shape[1]:
                raise UserError(f"--resume {self.dir}: the checkpoint's images have "
                                f"{state.get('nc')} channels, the data has {images.shape[1]}")
            if state.get("num_classes", 0) != self.trainer.num_classes:
                raise UserError(f"--resume {self.dir}: the run was trained on "
                                f"{state.get('num_classes', 0)} classes, the data has "
                                f"{self.trainer.num_classes}")
            try:
                self.trainer.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError, TypeError) as e:
                if isinstance(e, UserError):
                    raise
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UserError(f"--resume {self.dir}: checkpoints/last.pt does not fit the "
                                f"run's config.json ({first[:300]})") from None
            if cfg.steps <= self.trainer.step:
                raise UserError(f"--steps {cfg.steps}: the run in {self.dir} is already at step "
                                f"{self.trainer.step}; pass a larger --steps to continue it")
        self.metrics = self.extractor = self.reference = None
        if not self.main:
            return
        os.makedirs(os.path.join(self.dir, "samples"), exist_ok=True)
        write_json(cfg.to_json(), os.path.join(self.dir, "config.json"))
        self.metrics = MetricsLog(os.path.join(self.dir, "metrics.jsonl"),
                                  self.trainer.step if resume else None)
        if cfg.eval_every:  # metrics load only when asked for (train -> metrics, never back)
            from fastgan.metrics.evaluate import reference_stats
            from fastgan.metrics.features import get_extractor

            self.extractor = get_extractor("fastgan-fmnist", device=cfg.device, data=cfg.data)
            self.reference = reference_stats(cfg.data, "train", cfg.image_size, self.extractor,
                                             quiet)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def save(self) -> None:
        t = self.trainer
        state = t.state_dict()
        save_checkpoint(state, self.path("checkpoints", "last.pt"))
        if self.cfg.ckpt_every and t.step % self.cfg.ckpt_every == 0:
            save_checkpoint(state, self.path("checkpoints", f"step_{t.step:06d}.pt"))
        plot_metrics(self.path("metrics.jsonl"), self.path("losses.png"))

    def sample(self) -> str:
        t = self.trainer
        path = self.path("samples", f"step_{t.step:06d}.png")
        save_grid(t.grid_samples(), path, nrow=8)
        return path

    def evaluate(self) -> dict[str, float]:
        """FID, KID and IS (fastgan-fmnist features) of EVAL_N samples of the sampled G, plus
        modes / modes_kl on 3-channel (stacked) data and class_accuracy for a conditional run."""
        from fastgan.metrics.evaluate import generator_metrics

        from fastgan.data import builtin_name

        t = self.trainer
        # the classifier knows Fashion-MNIST's classes and stacked-fashion-mnist's modes only
        metrics = ("fid", "kid", "is") + (("modes",) if self.extractor.stacked else ()) \
            + (("accuracy",) if t.num_classes and builtin_name(self.cfg.data) else ())
        return generator_metrics(t.sampler(), self.cfg.nz, EVAL_N, self.reference,
                                 self.extractor, metrics, seed=self.cfg.seed,
                                 device=self.cfg.device)

    def run(self) -> int:
        """Train to cfg.steps; 0 when done, 128 + signal number when stopped by a signal."""
        cfg, t = self.cfg, self.trainer
        progress = Progress(t.step, cfg.steps, self.quiet)
        every = lambda n: n and t.step % n == 0  # noqa: E731
        t_log, n_log = time.perf_counter(), t.step
        first_step_s = None
        saved_at = sampled_at = None
        main = self.main
        stopped = False
        with _Stop() as stop:
            try:
                while t.step < cfg.steps:
                    # a stop request on any process stops all of them before the same step
                    stopped = t.dist.any(stop.signum is not None, t.device)
                    if stopped:
                        break
                    t0 = time.perf_counter()
                    t.train_step()
                    if first_step_s is None:
                        first_step_s = time.perf_counter() - t0
                        progress.write(f"first step took {first_step_s:.2f} s "
                                       f"(impl {cfg.impl}, includes warm-up)")
                    progress.step(t.step)
                    evaluate = cfg.eval_every and (every(cfg.eval_every) or t.step == cfg.steps)
                    if every(cfg.log_every) or t.step == cfg.steps or evaluate:
                        now = time.perf_counter()
                        imgs = (t.step - n_log) * cfg.batch_size * cfg.n_critic
                        rec = {"step": t.step, **t.take_metrics(),
                               "img_per_s": imgs / max(now - t_log, 1e-9)}
                        if not main:  # (take_metrics is collective; the rest is rank 0's)
                            continue
                        if evaluate:
                            rec.update(self.evaluate())
                            progress.write(eval_line(t.step, rec, self.extractor.name))
                        self.metrics.append(rec)
                        progress.log(rec)
                        if not all(math.isfinite(rec[k]) for k in TRACKED):
                            progress.write(f"warning: non-finite losses at step {t.step}: {rec}")
                        t_log, n_log = time.perf_counter(), t.step
                    if not main:
                        continue
                    if every(cfg.sample_every):
                        self.sample()
                        sampled_at = t.step
                    if every(cfg.ckpt_every):
                        self.save()
                        saved_at = t.step
                    if t.step in (sampled_at, saved_at):  # img/s counts training time only
                        t_log, n_log = time.perf_counter(), t.step
            finally:
                progress.close()
            if main and saved_at != t.step:
                self.save()
            if main and sampled_at != t.step:
                self.sample()
        if stopped:
            signum = stop.signum or signal.SIGTERM  # (another process was signalled)
            if main:
                print(f"{signal.Signals(signum).name}: stopped at step {t.step}; checkpoint "
                      f"saved to {self.path('checkpoints', 'last.pt')}. Continue with: "
                      f"fastgan train --resume {self.dir}", flush=True)
            return 128 + signum
        if not self.quiet:
            print(f"done: step {t.step}; samples in {self.path('samples')}, "
                  f"checkpoint {self.path('checkpoints', 'last.pt')}, "
                  f"plots {self.path('losses.png')}", flush=True)
        return 0


__all__ = ["Trainer", "Run", "N_FIXED", "TRACKED", "EVAL_N"]
