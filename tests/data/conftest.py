"""Fixtures for the data tests: a writer of CLAM-style slides and cohort tables."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest


class CohortWriter:
    """Writes ``h5_files/{slide}.h5`` (CLAM layout) and ``cohort.csv`` under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.features = root / "features"
        (self.features / "h5_files").mkdir(parents=True)
        self.rng = np.random.default_rng(0)

    def slide(self, slide_id: str, n: int = 6, dim: int = 4, patch: int = 256, origin=(0, 0),
              feats: np.ndarray | None = None) -> Path:
        cols = int(np.ceil(np.sqrt(max(n, 1))))
        grid = np.array([(i % cols, i // cols) for i in range(n)], dtype=np.int64).reshape(n, 2)
        coords = grid * patch + np.asarray(origin)
        if feats is None:
            feats = self.rng.standard_normal((n, dim)).astype(np.float32)
        path = self.features / "h5_files" / f"{slide_id}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=feats)
            d = f.create_dataset("coords", data=coords)
            d.attrs["patch_size"] = patch
            d.attrs["patch_level"] = 0
        return path

    def table(self, rows: list[dict]) -> Path:
        path = self.root / "cohort.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        return path


@pytest.fixture
def writer(tmp_path: Path) -> CohortWriter:
    return CohortWriter(tmp_path)
