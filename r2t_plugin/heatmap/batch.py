"""Heatmaps of every test slide of an ``r2t compare`` run, with an ``index.html`` grid.

Each test case of the run's fold is scored as the harness scored it (its case-level bag,
all slides together); each of its slides gets its own PNG (its patches, back at their own
level-0 coordinates). The index shows them in a grid with the true and predicted labels.
"""
from __future__ import annotations

import hashlib
import html
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from ..data.wsi import WSIError, find_wsi, read_thumbnail
from ..io import atomic_write_text, safe_name
from ..models import ModelSpec
from .render import CMAP, OVERLAY_ALPHA
from .runs import RunTestSplit
from .scores import HeatmapError, score_bag
from .slide import check_bag, draw_slide

__all__ = ["BatchItem", "png_names", "run_batch", "write_index"]

_NAME_KEEP = 100  # characters of a slide id kept in its PNG name


@dataclass(frozen=True)
class BatchItem:
    """One slide of the batch: its PNG (relative to the index) or the error that stopped it."""

    slide_id: str
    case_id: str
    truth: str
    predicted: str
    correct: bool | None
    png: str | None = None
    error: str | None = None
    top_k: str | None = None  # its top-k CSV (relative to the index), with --top-k


def _truth(bag, spec) -> str:
    if spec.task == "classification":
        return spec.class_name(int(bag.label))
    return f"{bag.time:g} ({'event' if bag.event else 'censored'})"


def png_names(slide_ids: list[str]) -> dict[str, str]:
    """A distinct PNG file name per slide id: the id itself where it is a safe file name,
    else its safe form plus a short hash of the id (``case-004 α`` and ``case-004 β`` both
    sanitise to ``case-004-``). Names equal but for letter case (one file on macOS or
    Windows) and very long ids get the hash too."""
    safe = {s: safe_name(s) for s in dict.fromkeys(slide_ids)}
    folded: dict[str, int] = {}
    for name in safe.values():
        folded[name.lower()] = folded.get(name.lower(), 0) + 1
    out = {}
    for sid, name in safe.items():
        if name != sid or folded[name.lower()] > 1 or len(name) > _NAME_KEEP:
            name = f"{name[:_NAME_KEEP]}-{hashlib.sha256(sid.encode('utf-8')).hexdigest()[:8]}"
        out[sid] = f"{name}.png"
    return out


def run_batch(model: nn.Module, spec: ModelSpec, split: RunTestSplit, out_dir: str | os.PathLike,
              wsi_dir: str | os.PathLike | None = None, *, max_size: int = 2048, alpha: float = OVERLAY_ALPHA,
              cmap: str = CMAP, top: int | None = None) -> list[BatchItem]:
    """Draw every slide of ``split``'s test cases with ``model`` into ``out_dir`` and write the
    index (with ``top``, each slide's top-k CSV next to its PNG)."""
    out_dir = Path(out_dir)
    items: list[BatchItem] = []
    names = png_names([s for c in split.cases for s in split.cohort.slides(c)])
    for case_id in split.cases:
        bag = split.cohort.load_case(case_id)
        check_bag(bag, spec, f"case {case_id!r}")
        scored = score_bag(model, bag, spec)
        truth, predicted = _truth(bag, spec), scored.prediction_text(spec)
        correct = None if scored.predicted is None else scored.predicted == int(bag.label)
        slides = bag.meta.get("slides", list(bag.slide_ids))
        offsets = bag.meta.get("slide_offsets", [(0.0, 0.0)] * len(slides))
        for slide_id, (a, b), (dx, dy) in zip(slides, bag.meta["slide_slices"], offsets):
            item = BatchItem(slide_id, case_id, truth, predicted, correct)
            coords = bag.coords[a:b].numpy().astype(np.float64) - np.array([dx, dy])
            try:
                thumb = None
                if wsi_dir is not None:
                    path = find_wsi(wsi_dir, slide_id)
                    if path is None:
                        raise WSIError(f"no slide file for {slide_id!r} in {wsi_dir}")
                    thumb = read_thumbnail(path, max_size)
                png = names[slide_id]
                done = draw_slide(spec, replace(scored, scores=scored.scores[a:b]), coords, bag.patch_size,
                                  f"{slide_id} (case {case_id})", out_dir / png, thumb,
                                  unit=bag.meta.get("coord_unit", "px"), max_size=max_size, alpha=alpha, cmap=cmap,
                                  top=top, where=f"slide {slide_id!r}")
                items.append(replace(item, png=png, top_k=done.top_k.name if done.top_k else None))
            except (WSIError, HeatmapError) as exc:
                items.append(replace(item, error=str(exc)))
    write_index(out_dir / "index.html", items, f"{spec.title}: test slides of {split.run_dir.name}")
    return items


def write_index(path: str | os.PathLike, items: list[BatchItem], title: str) -> Path:
    """An HTML page showing the heatmaps in a grid with true and predicted labels (atomic)."""
    e = html.escape
    judged = [i.correct for i in items if i.correct is not None]
    summary = f"{len(items)} slides"
    if judged:
        summary += f", {sum(judged)} of {len(judged)} correctly classified (per slide, by case)"
    cards = []
    for it in items:
        mark = "" if it.correct is None else (" ✓" if it.correct else " ✗")
        cls = "" if it.correct is None else (" ok" if it.correct else " wrong")
        body = (f'<a href="{e(it.png)}"><img src="{e(it.png)}" loading="lazy" alt="{e(it.slide_id)}"></a>'
                if it.png else f'<p class="error">{e(it.error or "")}</p>')
        cards.append(f'<figure class="card{cls}">{body}<figcaption><b>{e(it.slide_id)}</b> '
                     f'(case {e(it.case_id)})<br>true: {e(it.truth)}<br>{e(it.predicted)}{mark}'
                     + (f'<br><a href="{e(it.top_k)}">top patches (CSV)</a>' if it.top_k else "")
                     + '</figcaption></figure>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 1em; }}
.card {{ margin: 0; border: 1px solid #ccc; border-radius: 6px; padding: .5em; }}
.card.ok {{ border-color: #3a3; }} .card.wrong {{ border-color: #c33; }}
.card img {{ width: 100%; height: auto; }}
figcaption {{ font-size: .85em; line-height: 1.4; }}
.error {{ color: #c33; font-size: .85em; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>{e(summary)}</p>
<div class="grid">
{chr(10).join(cards)}
</div>
</body></html>
"""
    return atomic_write_text(path, page)
