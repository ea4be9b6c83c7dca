"""l2ood — out-of-distribution screening with L2-normalized features.

Haas, Yolland & Rabus, "Exploring Simple, High Quality Out-of-Distribution Detection with L2
Normalization", TMLR 2024 (arXiv:2306.04072): train with ``logits = fc(z/‖z‖)``, score with ``‖z‖``.

Convention for every score in l2ood: higher = more in-distribution.
"""

__version__ = "0.1.0"
