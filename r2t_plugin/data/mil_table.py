"""The classic MIL benchmark table: one row per instance, ``label, bag_id, features...``.

This is the layout of the Musk / Fox / Tiger / Elephant / UCSB collections (CSV, optionally
gzipped, no header): column 0 the bag's label, column 1 the bag id, the rest the instance
features. Every bag becomes one :class:`~r2t_plugin.bag.FeatureBag` without coordinates.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from ..bag import FeatureBag

__all__ = ["read_mil_table"]


def read_mil_table(path: str | os.PathLike) -> list[FeatureBag]:
    """Bags of a classic MIL table, in order of first appearance; ``case_id`` = bag id.

    Raises ValueError naming the file and bag when a bag's rows disagree on its label.
    """
    df = pd.read_csv(path, header=None)
    if df.shape[1] < 3:
        raise ValueError(f"{path}: expected label, bag id and features, got {df.shape[1]} column(s)")
    labels = df.iloc[:, 0].to_numpy()
    ids = df.iloc[:, 1].astype(str).to_numpy()
    feats = df.iloc[:, 2:].to_numpy(dtype=np.float32)
    bags = []
    for bag_id in pd.unique(ids):
        rows = np.flatnonzero(ids == bag_id)
        lab = np.unique(labels[rows])
        if len(lab) != 1:
            raise ValueError(f"{path}: bag {bag_id!r} has rows with different labels {lab.tolist()}")
        bags.append(FeatureBag(features=torch.from_numpy(feats[rows]), case_id=str(bag_id),
                               label=int(lab[0]), meta={"path": str(path)}))
    return bags
