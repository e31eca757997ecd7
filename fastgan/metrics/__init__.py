"""Offline GAN metrics: FID, KID and IS with fastgan's own Fashion-MNIST feature network
(weights shipped; the numbers are named "FID (fastgan-fmnist)"), or with an Inception
network from a weights file the user already has. Nothing is downloaded.

    from fastgan.metrics import frechet_distance, kid, inception_score
    fid = frechet_distance(mu1, sigma1, mu2, sigma2)
    kid_mean, kid_std = kid(features1, features2, subsets=100, subset_size=1000)

distances.py holds the math (float64, batch-size independent), features.py the feature
networks, fmnist_net.py fastgan's classifier, evaluate.py reference statistics (cached on
disk) and the metrics of a generator or of images (`fastgan eval` is
fastgan/commands/eval.py). Generators come from fastgan.runs; fastgan.metrics never
imports fastgan.train (the training loop imports it for --eval-every).
"""

from fastgan.metrics.distances import FeatureStats, frechet_distance, inception_score, kid

__all__ = ["FeatureStats", "frechet_distance", "kid", "inception_score"]
