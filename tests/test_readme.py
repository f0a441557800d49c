"""The README's code runs as written.

The short example: its first ``python`` block (except the line that needs a real file).
Every block after a ``<!-- tested: NAME -->`` line: run by the test named in ``TESTS``,
as it stands; a marked block without a test, or a test without its block, fails.
"""
import re
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
TESTED = re.compile(r"^<!-- tested: (\S+) -->\n```(\w+)\n(.*?)^```", re.S | re.M)


def blocks() -> dict[str, str]:
    """NAME -> the code of the block marked ``<!-- tested: NAME -->``."""
    found: dict[str, str] = {}
    for name, _lang, code in TESTED.findall(README.read_text()):
        assert name not in found, f"two README blocks are marked {name!r}"
        found[name] = code
    return found


def run_block(name: str, **namespace) -> dict:
    """Execute README block ``name`` in a namespace holding ``namespace``; return it."""
    exec(compile(blocks()[name], f"README block {name}", "exec"), namespace)
    return namespace


def test_readme_example_runs():
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = "\n".join(line for line in block.splitlines() if "best_model.pth" not in line)
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)
    assert namespace["out"]["logits"].shape == (2, 2)
    assert namespace["h"].shape == (3000, 512)


def test_torchmil_block():
    pytest.importorskip("torchmil")
    from torchmil.models import MILModel

    torch.manual_seed(0)
    ns = run_block("torchmil")
    model, batch = ns["model"], ns["batch"]
    assert isinstance(model, MILModel) and ns["Y_pred"].shape == (4,)
    assert ns["att"].shape == batch["mask"].shape
    plain = model.inner.predict(X=batch["X"], mask=batch["mask"])[0]
    assert not torch.allclose(ns["Y_pred"], plain)  # R²T in predict


def test_pyg_block():
    pytest.importorskip("torch_geometric")
    from r2t_pyg import PygWrapper

    torch.manual_seed(0)
    ns = run_block("pyg")
    model = ns["model"]
    assert isinstance(model, PygWrapper) and model.hook_path == "fc"
    assert ns["logits"].shape == (2, 2)
    with torch.no_grad():  # the default residual stage: GraphMIL's own outputs until training moves Z
        torch.testing.assert_close(ns["logits"], model.inner(ns["graphs"]), rtol=0, atol=1e-6)
        torch.nn.init.normal_(model.stage.gate.weight, std=0.1)
        assert not torch.allclose(model(ns["graphs"]), model.inner(ns["graphs"]))  # R²T is in the path


def clam_sb(gate=True, size_arg="small", dropout=0.25, k_sample=8, n_classes=2, instance_loss_fn=None,
            subtyping=False, embed_dim=1024):
    """A stand-in for CLAM's ``models.model_clam.CLAM_SB`` (same constructor and calls)."""
    from tests.adapters.clam_interface import CLAMInterface

    hidden = {"small": 256, "big": 384}[size_arg]
    return CLAMInterface(embed_dim, n_classes, dim=512, hidden=hidden, dropout=dropout, k_sample=k_sample,
                         subtyping=subtyping)


def test_clam_block(tmp_path, monkeypatch):
    """CLAM's h5 as its extract_features_fp.py writes it (features + coords, no attributes)."""
    (tmp_path / "h5_files").mkdir()
    i = np.arange(200)
    with h5py.File(tmp_path / "h5_files" / "slide_1.h5", "w") as f:
        f["features"] = np.random.default_rng(0).standard_normal((200, 1024)).astype(np.float32)
        f["coords"] = np.stack([i % 20, i // 20], 1) * 512 + 1000
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))  # CLAM's package
    monkeypatch.setitem(sys.modules, "models.model_clam", types.SimpleNamespace(CLAM_SB=clam_sb))
    torch.manual_seed(0)
    ns = run_block("clam")
    model = ns["model"]
    assert type(model).__name__ == "ClamWrapper" and model.hook_path == "attention_net.2"
    assert ns["bag"].patch_size == 512 and ns["logits"].shape == (1, 2)
    assert ns["results"]["instance_loss"].requires_grad
    assert any(p.grad is not None for p in model.stage.parameters())


def test_plugin_blocks(tmp_path, monkeypatch):
    """The plugin module and its entry point, installed as a distribution would be."""
    from r2t_plugin import plugins, with_r2t

    entry = tomllib.loads(blocks()["plugin-entry-point"])["project"]["entry-points"]["r2t_plugin"]
    assert entry == {"my_mil": "my_mil.plugin"}
    (tmp_path / "my_mil").mkdir()
    (tmp_path / "my_mil" / "__init__.py").write_text("")
    (tmp_path / "my_mil" / "plugin.py").write_text(blocks()["plugin"])
    dist = tmp_path / "my_mil-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-mil\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [r2t_plugin]
        my_mil = my_mil.plugin
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("my_mil", "my_mil.plugin"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    pm = plugins.R2TPluginManager()
    pm.load_builtins()
    pm.load_entry_points()
    monkeypatch.setattr(plugins, "_MANAGER", pm)
    assert not pm.failed and pm.registries["aggregators"].provider("mean_max") == "my-mil 0.1"
    torch.manual_seed(0)
    agg = plugins.create_aggregator("mean_max", in_dim=16, n_out=3, dim=8).eval()
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    for model in (agg, with_r2t(agg, heads=2, region_num=2, min_region_tokens=2, crmsa_heads=2,
                                residual=False).eval()):
        out = model(x, mask=mask)
        assert out["logits"].shape == (2, 3) and torch.all(out["instance_scores"][1, 4:] == 0)
        torch.testing.assert_close(model(x[1:, :4])["logits"][0], out["logits"][1], rtol=1e-5, atol=1e-6)


TESTS = {"torchmil": test_torchmil_block, "pyg": test_pyg_block, "clam": test_clam_block,
         "plugin": test_plugin_blocks, "plugin-entry-point": test_plugin_blocks}


def test_every_marked_block_has_a_test():
    assert set(blocks()) == set(TESTS)
