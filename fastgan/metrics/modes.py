"""Mode coverage and class accuracy from fastgan's Fashion-MNIST classifier (fmnist_net.py).

Each channel of an image is classified on its own: a 1-channel image has one of Fashion-MNIST's
10 classes, a 3-channel stacked image (stacked-fashion-mnist) one of 1000 modes, the class
triple (a, b, c) numbered 100 a + 10 b + c as the dataset labels it.

`modes` counts the modes a set of stacked images covers. The classifier is 92% accurate per
channel, so a plain arg-max would put ~22% of the triples in a wrong mode, and data drawn
from 10 modes would seem to cover ~180. The rule (measured both ways in
scripts/check_mode_metric.py; README "Mode collapse, measured"):

1. an image counts only when every channel's top class probability is >= CONFIDENCE (0.7):
   a confident classification is wrong 4% of the time instead of 8%, and unrecognisable
   samples, which belong to no mode, are left out;
2. a mode is covered when at least one counted image falls in it and its count is at least
   NEIGHBOUR_RATIO (0.15) times that of every mode that differs from it in one channel.
   A misclassified channel moves an image to exactly such a neighbour, and at most a few
   percent of a mode's images go to any one neighbour, so a mode that holds less than 15%
   of a neighbour's count is taken as that neighbour's leakage.

On the 10,000 held-out stacked test images this finds 983 of the 1000 modes; on 10,000
images of 10 random modes 10 or 11, and 13 to 15 on the hardest 10 (every class three
times: the shirt / T-shirt / pullover / coat triples leak most). It errs towards too few modes
when a real mode is much rarer than its neighbour, and then says the distribution is
far from uniform, as `modes_kl` does.

`modes_kl` is the KL divergence, in nats, of the counted images' mode histogram from the
uniform distribution over the 1000 modes (0 for perfectly uniform, log(1000 / K) for K
equally likely modes, log(100) = 4.6 for 10); a finite sample adds about (modes - 1) /
(2 n_counted) to it (~0.07 for real data at 10,000 images). `modes_counted` is the share of
images that passed step 1. Few recognisable samples bound the modes that can be found (500
counted images cannot cover 1000 modes), so `modes_uniform` says how many modes a generator
drawing the 1000 modes uniformly would show with the same number of counted images under
the same rule: `modes` well below it means collapse, `modes` near it with a small
`modes_counted` means unrecognisable samples, not missing modes.

`class_accuracy` is the share of images whose arg-max class (or mode) equals their label,
no confidence threshold: the classifier's own accuracy (92%) for real test images with their
labels, 10% for labels drawn at random.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NUM_MODES = 1000
CONFIDENCE = 0.7
NEIGHBOUR_RATIO = 0.15


def joint_labels(channel_probs: Tensor) -> Tensor:
    """The arg-max class of each image: (N, 1, 10) -> class 0..9, (N, 3, 10) -> the mode
    100 a + 10 b + c."""
    pred = channel_probs.argmax(-1)
    if pred.shape[1] == 1:
        return pred[:, 0]
    if pred.shape[1] == 3:
        return 100 * pred[:, 0] + 10 * pred[:, 1] + pred[:, 2]
    raise ValueError(f"joint_labels: expected 1 or 3 channels, got {pred.shape[1]}")


def mode_histogram(channel_probs: Tensor) -> Tensor:
    """Counts (1000,) int64 of the confidently classified stacked images per mode (rule 1).
    channel_probs: (N, 3, 10) class probabilities of each channel."""
    confident = (channel_probs.amax(-1) >= CONFIDENCE).all(1)
    return torch.bincount(joint_labels(channel_probs)[confident], minlength=NUM_MODES)


def covered(counts: Tensor) -> Tensor:
    """Which modes (1000,) bool a histogram covers (rule 2): at least one image, and at least
    NEIGHBOUR_RATIO of the count of every mode one channel away."""
    h = counts.view(10, 10, 10).double()
    # the largest count along each channel's axis (the mode itself included: it never
    # fails against itself since NEIGHBOUR_RATIO < 1)
    biggest = torch.stack([h.amax(axis, keepdim=True).expand_as(h) for axis in range(3)]).amax(0)
    return ((h >= 1) & (h >= NEIGHBOUR_RATIO * biggest)).flatten()


def uniform_modes(total: int, draws: int = 5) -> float:
    """The mean number of modes `covered` finds in `total` images drawn uniformly from the
    1000 modes (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    return sum(int(covered(torch.bincount(torch.randint(NUM_MODES, (total,), generator=gen),
                                          minlength=NUM_MODES)).sum())
               for _ in range(draws)) / draws


def mode_metrics(channel_probs: Tensor) -> dict[str, float]:
    """{"modes", "modes_kl", "modes_counted", "modes_uniform"} of stacked images' channel
    probabilities (N, 3, 10)."""
    if channel_probs.dim() != 3 or channel_probs.shape[1:] != (3, 10):
        raise ValueError(f"modes: expected stacked images' channel probabilities (N, 3, 10), "
                         f"got {tuple(channel_probs.shape)}")
    counts = mode_histogram(channel_probs)
    total = int(counts.sum())
    if total == 0:
        kl = math.log(NUM_MODES)  # nothing recognisable: as far from uniform as one mode
    else:
        p = counts[counts > 0].double() / total
        kl = float((p * (p * NUM_MODES).log()).sum())
    return {"modes": int(covered(counts).sum()), "modes_kl": kl,
            "modes_counted": total / channel_probs.shape[0], "modes_uniform": uniform_modes(total)}


def class_accuracy(channel_probs: Tensor, labels: Tensor) -> float:
    """The share of images whose arg-max class (1 channel) or mode (3 channels) is their
    label."""
    if labels.shape != channel_probs.shape[:1]:
        raise ValueError(f"class_accuracy: {channel_probs.shape[0]} images but labels of shape "
                         f"{tuple(labels.shape)}")
    return float((joint_labels(channel_probs) == labels.to(channel_probs.device)).double().mean())


__all__ = ["NUM_MODES", "CONFIDENCE", "NEIGHBOUR_RATIO", "joint_labels", "mode_histogram",
           "covered", "uniform_modes", "mode_metrics", "class_accuracy"]
