"""The stage's default width: the aggregator's width up to 128, then a 128-wide stage that
projects in and back out."""
from __future__ import annotations

import torch

from r2t_plugin import with_r2t
from r2t_plugin.plugins import create_aggregator
from r2t_plugin.r2t.plugin import MAX_DEFAULT_WIDTH, default_width
from r2t_plugin.train import count_parameters


def test_default_width_rule():
    assert MAX_DEFAULT_WIDTH == 128
    assert (default_width(64), default_width(128), default_width(512), default_width(None, 96)) == (64, 128, 128, 96)


def test_a_wide_aggregator_gets_a_128_wide_stage_that_keeps_its_width():
    torch.manual_seed(0)
    agg = create_aggregator("abmil", 1024, 2)  # ABMIL's default width, 512
    wrapped = with_r2t(agg)
    stage = wrapped.stage.body  # the default residual stage: R²T inside x + Z(R²T(x))
    assert (stage.in_dim, stage.dim, stage.out_dim) == (512, 128, 512) and stage.proj is not None
    added = count_parameters(wrapped) - count_parameters(agg)
    assert added < count_parameters(agg)  # at 512 wide the stage alone had ~2.1M parameters
    out = wrapped(torch.randn(20, 1024))["logits"]
    assert out.shape == (1, 2)
    narrow = with_r2t(create_aggregator("abmil", 16, 2, dim=32, hidden=8), residual=False).stage
    assert (narrow.in_dim, narrow.dim) == (None, 32)  # no projection at the aggregator's width
    assert with_r2t(create_aggregator("abmil", 16, 2), dim=512, residual=False).stage.dim == 512  # an explicit width wins
