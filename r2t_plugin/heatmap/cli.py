"""``r2t heatmap``: instance scores of a trained model drawn on its slides.

One slide::

    r2t heatmap --checkpoint RUN_OR_CKPT --features SLIDE.h5 [--wsi SLIDE.svs] -o OUT.png

Every test slide of an ``r2t compare`` run (one PNG per slide and ``index.html``)::

    r2t heatmap --checkpoint COMPARE_OUT/runs/RUN_ID --test-split [--wsi-dir SLIDES/] -o OUT_DIR
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``r2t heatmap``."""
    parser.add_argument("--checkpoint", required=True, metavar="RUN_OR_CKPT",
                        help="a run folder of r2t compare (runs/<run_id>) or its best.pt, or a "
                             "model checkpoint written by r2t_plugin.models.save_checkpoint")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--features", metavar="SLIDE.h5", help="feature file of one slide (with coordinates)")
    what.add_argument("--test-split", action="store_true",
                      help="every slide of the run's test split (needs a compare run)")
    parser.add_argument("--wsi", metavar="SLIDE", help="the slide, to draw on its thumbnail (needs openslide)")
    parser.add_argument("--wsi-dir", metavar="DIR", help="with --test-split: folder of the slides, named by slide id")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="PNG to write (one slide) or folder (with --test-split)")
    parser.add_argument("--size", type=int, default=2048, metavar="PX",
                        help="longest side of the slide image in pixels (default 2048)")
    parser.add_argument("--alpha", type=float, default=0.4, metavar="A",
                        help="opacity of the colours over the slide's tissue, in (0, 1] (default 0.4)")
    parser.add_argument("--cmap", default="turbo", metavar="NAME",
                        help="colour map: any matplotlib colormap name (default turbo)")
    parser.add_argument("--top-k", type=int, metavar="K",
                        help="also write each slide's K highest-scoring patches as <png name>_topK.csv "
                             "(rank, patch, x, y in level-0 px, x_um, y_um for µm files, score)")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the Python traceback too (by default: one line)")


def run(args: argparse.Namespace) -> int:
    """Draw the heatmap(s); 0 on success, 1 if some slides of a batch failed, 2 on an error
    (told in one line; ``--debug`` adds the traceback)."""
    from ..bag import BagError
    from ..data import CohortError, SplitError
    from ..data.readers import ReaderError
    from ..data.wsi import WSIError
    from ..io import describe_os_error
    from ..r2t.regions import RegionError
    from ..models import CheckpointError, load_checkpoint
    from .batch import run_batch
    from .render import check_style
    from .runs import load_test_split, run_checkpoint
    from .scores import HeatmapError
    from .slide import slide_heatmap

    if args.wsi and args.test_split:
        print("r2t heatmap: error: --wsi is for one slide; use --wsi-dir with --test-split", file=sys.stderr)
        return 2
    if args.wsi_dir and not args.test_split:
        print("r2t heatmap: error: --wsi-dir goes with --test-split; use --wsi for one slide", file=sys.stderr)
        return 2
    if args.size < 64:
        print(f"r2t heatmap: error: --size must be >= 64, got {args.size}", file=sys.stderr)
        return 2
    if args.top_k is not None and args.top_k < 1:
        print(f"r2t heatmap: error: --top-k must be >= 1, got {args.top_k}", file=sys.stderr)
        return 2
    style = {"alpha": args.alpha, "cmap": args.cmap, "top": args.top_k}
    t0 = time.perf_counter()
    try:
        check_style(args.alpha, args.cmap)
        model, spec = load_checkpoint(run_checkpoint(args.checkpoint))
        if args.test_split:
            split = load_test_split(args.checkpoint)
            items = run_batch(model, spec, split, args.output, args.wsi_dir, max_size=args.size, **style)
            failed = [i for i in items if i.error]
            for item in failed:
                print(f"r2t heatmap: {item.slide_id}: {item.error}", file=sys.stderr)
            print(f"{len(items) - len(failed)} heatmaps and index.html in {args.output} "
                  f"({time.perf_counter() - t0:.1f} s)")
            return 1 if failed else 0
        done = slide_heatmap(model, spec, args.features, args.output, args.wsi, max_size=args.size, **style)
    except (CheckpointError, HeatmapError, WSIError, ReaderError, BagError, RegionError, CohortError,
            SplitError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        message = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        print(f"r2t heatmap: {message}", file=sys.stderr)
        return 2
    print(f"{done.path}" + (f" and {done.top_k}" if done.top_k else "") + f" ({time.perf_counter() - t0:.1f} s)")
    return 0
