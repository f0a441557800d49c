"""One case-level bag from the bags of its slides (:func:`assemble_case`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..bag import BagError, FeatureBag
from ..geometry import infer_patch_size

__all__ = ["assemble_case"]


def assemble_case(case_id: str, bags: Sequence[FeatureBag], **targets: Any) -> FeatureBag:
    """One case-level bag from its slides' bags.

    Slides after the first are shifted along x to start two grid cells right of the previous
    slide's rightmost patch (one empty column between them), and along y onto the first
    slide's top row, so every slide lies on one patch lattice without touching another. Raises :class:`BagError` naming the case
    when the slides disagree (feature width, coordinates present or not, patch size, grid
    step, unit). The gap between slides is counted in grid cells (the grid step of
    overlapping patches, else the patch size).
    """
    who = f"case {case_id!r}"
    if not bags:
        raise BagError(f"{who}: no slides")
    widths = {b.dim for b in bags}
    if len(widths) > 1:
        raise BagError(f"{who}: slides have different feature widths {sorted(widths)}")
    slide_ids = tuple(s for b in bags for s in b.slide_ids)
    meta: dict[str, Any] = {"slides": list(slide_ids),
                            "paths": [b.meta.get("path") for b in bags],
                            "formats": [b.meta.get("format") for b in bags]}
    units = {b.meta.get("coord_unit") for b in bags if b.coords is not None}
    if len(units) > 1:
        raise BagError(f"{who}: slides have coordinates in different units {sorted(map(str, units))}")
    if units:
        meta["coord_unit"] = units.pop()
    has = [b.coords is not None for b in bags]
    if any(has) and not all(has):
        raise BagError(f"{who}: slides {[s for b, h in zip(bags, has) if not h for s in b.slide_ids]} "
                       "have no coordinates but the others do")
    sizes = {b.patch_size for b in bags if b.patch_size is not None}
    if len(sizes) > 1:
        raise BagError(f"{who}: slides have different level-0 patch sizes {sorted(sizes)}")
    patch = sizes.pop() if sizes else None
    steps = {b.grid_step for b in bags}
    if len(steps) > 1:
        raise BagError(f"{who}: slides have different grid steps (patch overlap) {sorted(steps, key=str)}")
    grid_step = steps.pop()
    features = torch.cat([b.features for b in bags]) if len(bags) > 1 else bags[0].features
    coords = None
    if all(has):
        step = grid_step or patch or infer_patch_size(torch.cat([b.coords for b in bags]))
        placed, offsets = [bags[0].coords], [(0.0, 0.0)]
        top = float(bags[0].coords[:, 1].min())
        for b in bags[1:]:
            c = b.coords.to(torch.float64)
            dx = float(placed[-1][:, 0].max()) + 2 * step - float(c[:, 0].min())
            dy = top - float(c[:, 1].min())
            placed.append((c + torch.tensor([dx, dy], dtype=torch.float64)).to(bags[0].coords.dtype))
            offsets.append((dx, dy))
        coords = torch.cat(placed) if len(placed) > 1 else placed[0]
        meta["slide_offsets"] = offsets
    bounds, start = [], 0
    for b in bags:
        bounds.append((start, start + b.n))
        start += b.n
    meta["slide_slices"] = bounds
    # the slides' bags passed the NaN/Inf scan already: not run again on their concatenation
    return FeatureBag(features=features, coords=coords, patch_size=patch, grid_step=grid_step,
                      slide_ids=slide_ids, case_id=case_id, meta=meta, check_values=False, **targets)
