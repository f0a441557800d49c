"""Speed and memory of R²T-ABMIL: the fast path against the straightforward one.

Same as ``r2t bench`` (see r2t_plugin/r2t/bench.py for what is measured and how):
    python bench/r2t_speed.py --n 1000 5000 20000 50000 100000 --json r2t_speed.json
    python bench/r2t_speed.py --device cuda --dtype bf16
"""
import sys

from r2t_plugin.r2t.bench import main

if __name__ == "__main__":
    sys.exit(main())
