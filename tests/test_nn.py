"""Shared blocks: activations by name, the projection, masked attention pooling."""
import pytest
import torch
from torch import nn

from r2t_plugin.nn import AttentionPool, GatedAttentionPool, make_activation, masked_softmax, projection


def test_activation_lookup() -> None:
    assert isinstance(make_activation("gelu"), nn.GELU)
    with pytest.raises(ValueError, match="unknown activation 'swish'; choose one of"):
        make_activation("swish")


def test_projection_shape() -> None:
    block = projection(6, 4, act="tanh", dropout=0.0)
    assert [type(m) for m in block] == [nn.Linear, nn.Tanh, nn.Dropout]
    assert block(torch.randn(2, 3, 6)).shape == (2, 3, 4)


def test_pooling_ignores_padding() -> None:
    torch.manual_seed(0)
    h, mask = torch.randn(2, 5, 4), torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    w = masked_softmax(torch.randn(2, 5), mask)
    assert torch.allclose(w.sum(1), torch.ones(2)) and not w[0, 3:].any()
    for pool in (AttentionPool(4, 8), GatedAttentionPool(4, 8, n_branches=2)):
        pooled, weights = pool(h, mask)
        alone, _ = pool(h[:1, :3])
        assert torch.allclose(pooled[:1], alone, atol=1e-6)
        assert not weights[0, ..., 3:].any()
