"""Feature transforms fitted on the training part only (so nothing about the validation or
test cases leaks into training)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..bag import FeatureBag

__all__ = ["standardized"]


class _Scaled(Sequence):
    """Bags with features z-scored by a fixed mean and std (applied when indexed)."""

    def __init__(self, bags: Sequence[FeatureBag], mean: torch.Tensor, std: torch.Tensor) -> None:
        self.bags, self.mean, self.std = bags, mean, std

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i):  # type: ignore[override]
        bag = self.bags[i]
        return dataclasses.replace(bag, features=(bag.features - self.mean) / self.std)


def standardized(train: Sequence[FeatureBag], *others: Sequence[FeatureBag]) -> list[Sequence[FeatureBag]]:
    """Every part z-scored per feature with the mean and std of the TRAINING instances."""
    x = torch.cat([bag.features for bag in train]).double()
    mean, std = x.mean(0).float(), x.std(0).clamp_min(1e-6).float()
    return [_Scaled(part, mean, std) for part in (train, *others)]
