"""Heatmaps: a model's instance scores drawn at the patches' places, on the slide if given.

``r2t heatmap`` (see :mod:`r2t_plugin.heatmap.cli`); in Python::

    from r2t_plugin.models import load_checkpoint
    from r2t_plugin.heatmap import slide_heatmap
    model, spec = load_checkpoint("out/runs/abmil__r2t__fold0__seed0/best.pt")
    slide_heatmap(model, spec, "slide.h5", "slide.png", wsi="slide.svs")

Names are imported on first use, so that ``r2t --help`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SlideScores": "scores", "HeatmapError": "scores", "score_bag": "scores",
    "Rendered": "render", "draw_heatmap": "render", "percentile_ranks": "render",
    "slide_heatmap": "slide", "place": "slide", "top_k": "scores", "BatchItem": "batch", "run_batch": "batch", "write_index": "batch",
    "RunTestSplit": "runs", "run_checkpoint": "runs", "load_test_split": "runs",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
