"""A training run as `fastgan train` leaves it and every other command reads it: its
settings (config.py: TrainConfig, the flags' checks, config.json), its files
(checkpoint.py: atomic writes, checkpoint loading) and its generator (generator.py: the
models of a config, a generator back from a checkpoint, samples).

Below both fastgan.train (which writes runs) and fastgan.metrics (which evaluates their
generators), so neither has to import the other to share them.
"""

from fastgan.runs.config import TrainConfig

__all__ = ["TrainConfig"]
