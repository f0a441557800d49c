"""R2T.official against the slow loop reference (tests/r2t/reference_loops.py)."""
import pytest
import torch

from r2t_plugin import R2TABMIL, to_official_state_dict
from . import reference_loops as ref


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (biases, LayerNorms, EPEG bias) so each key matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def check(n, *, dim=16, in_dim=12, heads=2, crmsa_heads=2, epeg_k=5, crmsa_k=3, crmsa_mlp=False,
          all_shortcut=False, n_layers=2, region_num=8, attn_act="tanh", seed=0):
    torch.manual_seed(seed)
    model = R2TABMIL.official(in_dim, 3, dim, heads=heads, crmsa_heads=crmsa_heads, epeg_k=epeg_k,
                              crmsa_k=crmsa_k, crmsa_mlp=crmsa_mlp, all_shortcut=all_shortcut,
                              n_layers=n_layers, region_num=region_num, attn_act=attn_act).eval()
    randomise(model, seed)
    x = torch.randn(n, in_dim)
    with torch.no_grad():
        emb = model.stage(x)
        logits = model(x)["logits"][0]
    want_emb, want_logits = ref.r2t_abmil(
        to_official_state_dict(model), x, heads=heads, crmsa_heads=crmsa_heads, region_num=region_num,
        all_shortcut=all_shortcut, crmsa_mlp=crmsa_mlp, epeg=True, abmil_act=attn_act)
    torch.testing.assert_close(emb, want_emb.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, want_logits.float(), rtol=1e-5, atol=1e-5)
    return emb


@pytest.mark.parametrize("n", [1, 7, 64, 65, 300, 1000])
def test_sizes(n):
    check(n)


@pytest.mark.parametrize("opts", [
    dict(epeg_k=1),
    dict(epeg_k=7, crmsa_k=1),
    dict(crmsa_k=5, crmsa_mlp=True),
    dict(all_shortcut=True, heads=1, crmsa_heads=1),
    dict(heads=8, crmsa_heads=8, dim=32),
    dict(n_layers=3, attn_act="relu"),
    dict(region_num=4, epeg_k=9),
])
def test_options(opts):
    check(300, **opts)


def test_crmsa_is_exercised_on_large_regions():
    """With regions of >1 token the CR-MSA branch must change the output (else the test is blind)."""
    torch.manual_seed(0)
    model = R2TABMIL.official(12, 2, 16, heads=2, crmsa_heads=2, epeg_k=5).eval()
    randomise(model, 1)
    x = torch.randn(300, 12)
    with torch.no_grad():
        full = model.stage(x)
        model.stage.crmsa.attn.proj.weight.add_(torch.randn(16, 16))
        moved = model.stage(x)
    assert (full - moved).abs().max() > 1e-3


def test_small_bags_are_per_instance_maps_in_official_mode():
    """The reference grid, N <= 64 with 8 x 8 regions: every region is one token, so each
    output row depends on its own input row only (a documented reference quirk)."""
    torch.manual_seed(0)
    model = R2TABMIL.official(12, 2, 16, heads=2, crmsa_heads=2, epeg_k=5).eval()
    randomise(model, 2)
    x = torch.randn(50, 12)
    with torch.no_grad():
        a = model.stage(x)
        x2 = x.clone()
        x2[10:] = torch.randn(40, 12)
        b = model.stage(x2)
    torch.testing.assert_close(a[:10], b[:10])
