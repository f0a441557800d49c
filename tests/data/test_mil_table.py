"""The classic MIL table reader, on a written table and on the real Musk1 file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from r2t_plugin.data.mil_table import read_mil_table

MUSK1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mil" / "musk1.csv.gz"


def test_rows_group_into_bags_in_order(tmp_path):
    (tmp_path / "t.csv").write_text("1,b7,0.5,1\n0,a2,2,3\n1,b7,4,5\n0,a2,6,7\n0,c,8,9\n")
    bags = read_mil_table(tmp_path / "t.csv")
    assert [(b.case_id, b.label, b.n) for b in bags] == [("b7", 1, 2), ("a2", 0, 2), ("c", 0, 1)]
    assert torch.equal(bags[0].features, torch.tensor([[0.5, 1.0], [4.0, 5.0]]))
    (tmp_path / "bad.csv").write_text("1,x,0,0\n0,x,1,1\n")
    with pytest.raises(ValueError, match="bad.csv.*'x'"):
        read_mil_table(tmp_path / "bad.csv")


@pytest.mark.skipif(not MUSK1.is_file(), reason=f"real data not present at {MUSK1}")
def test_real_musk1_matches_its_description():
    bags = read_mil_table(MUSK1)
    assert len(bags) == 92 and sum(b.n for b in bags) == 476 and bags[0].dim == 166
    assert sum(b.label for b in bags) == 47
