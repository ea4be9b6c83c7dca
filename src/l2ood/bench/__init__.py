"""The CIFAR-scale benchmark: definitions (data), recipes, and the resumable matrix runner."""

from .definitions import BENCHMARKS, OPENOOD_CIFAR10_RESNET18, RECIPES, VARIANTS, resolve
from .runner import BenchSpec, aggregate, run_bench

__all__ = ["BENCHMARKS", "OPENOOD_CIFAR10_RESNET18", "RECIPES", "VARIANTS", "BenchSpec", "aggregate", "resolve",
           "run_bench"]
