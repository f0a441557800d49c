"""Data checks of the pre-flight on one bag at a time, vectorised (no loop over instances).

- :func:`feature_faults`: features that stop being finite once cast to float32 (training's
  dtype) are an error; magnitudes above :data:`FEATURE_WARN` a warning (float32 training
  overflows or loses precision there; standardize or rescale), unless the features are
  standardised before training (z-scored per column with the training instances' mean and
  std, computed in float64: raw magnitudes within float32's range are harmless then).
- :func:`grid_faults`: a patch grid that is absurd for the bag (more than
  :data:`CELLS_PER_PATCH` cells per patch: the patch size, given or inferred, is far below
  the spacing of the coordinates, as with jittered coordinates) and, with
  ``one_per_cell``, two patches in one grid cell, which R²T's ``coords`` layout refuses.
- :func:`mixed_coordinates`: cases without coordinates in a cohort whose other cases have them.
"""
from __future__ import annotations

import torch

from ..bag import FeatureBag
from ..geometry import grid_cells, infer_patch_size

__all__ = ["FEATURE_WARN", "CELLS_PER_PATCH", "feature_faults", "grid_faults", "mixed_coordinates"]

FEATURE_WARN = 1e4
"""Feature magnitude above which the pre-flight warns."""
CELLS_PER_PATCH = 1e4
"""A bag whose patch grid has more cells than this per patch is not on a patch lattice."""


def feature_faults(bag: FeatureBag, standardized: bool = False) -> tuple[str | None, str | None]:
    """(error, warning) about the features of one slide's bag; None where there is none.

    ``standardized``: the features are z-scored before training, so large values are no warning.
    """
    f = bag.features
    error = None
    if f.element_size() > 4:  # float64: finite here, maybe not in float32
        bad = int((~torch.isfinite(f.to(torch.float32))).any(dim=1).sum())
        if bad:
            error = (f"{bad} instance(s) have features beyond float32's range (|x| up to "
                     f"{float(f.abs().max()):.3g}); training casts features to float32: rescale them")
    top = float(f.abs().max())
    warning = None
    if error is None and not standardized and top > FEATURE_WARN:
        warning = (f"features reach |x| = {top:.3g} (above {FEATURE_WARN:g}): float32 training may overflow "
                   "or lose precision; set cohort.standardize: true or rescale the features")
    return error, warning


def grid_faults(bag: FeatureBag, one_per_cell: bool = False) -> list[str]:
    """Faults of one slide's patch grid, in the grid the models use (cell side
    ``bag.cell_size``, else the patch size inferred from the coordinates): an absurd grid,
    and (``one_per_cell``) patches that share a grid cell."""
    if bag.coords is None:
        return []
    c = bag.coords.to(torch.float64)
    step = bag.cell_size if bag.cell_size is not None else infer_patch_size(bag.coords)
    extent = ((c.amax(dim=0) - c.amin(dim=0)) / step).floor() + 1  # (cols, rows)
    cols, rows = float(extent[0]), float(extent[1])
    if cols * rows > CELLS_PER_PATCH * bag.n:
        how = bag.meta.get("patch_size_source", "given" if bag.cell_size is not None else "inferred")
        return [f"patch size {step:g} px ({how}) makes a grid of {rows:.3g} x {cols:.3g} cells for {bag.n} "
                "patches: the coordinates are not on a patch lattice (jittered?); round them to the patch "
                "grid or give the patch size in the feature file"]
    if not one_per_cell:
        return []
    cells = grid_cells(bag.coords, step)
    key = cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1]
    order = torch.argsort(key, stable=True)
    same = torch.nonzero(key[order][1:] == key[order][:-1]).flatten()
    if not same.numel():
        return []
    a, b = int(order[same[0]]), int(order[same[0] + 1])
    return [f"{same.numel()} patch(es) share a grid cell with another (e.g. patches {a} and {b} at "
            f"{bag.coords[a].tolist()} and {bag.coords[b].tolist()}, cell side {step:g} px); R²T's coords "
            "layout needs one patch per cell: remove the duplicate patches or use layout: sequence"]


def mixed_coordinates(has_coords: dict[str, bool]) -> list[tuple[str, str]]:
    """``[(case, message)]`` for the cases without coordinates when other cases have them."""
    with_coords = sum(has_coords.values())
    if not with_coords or with_coords == len(has_coords):
        return []
    return [(case, f"no patch coordinates, but {with_coords} other case(s) have them; every bag needs them "
                   "(R²T's coords layout, graph aggregators, batches): extract this case's features with coordinates")
            for case, has in has_coords.items() if not has]
