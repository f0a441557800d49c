"""The plugin manager: registries, entry-point discovery, failures, clashes, `r2t plugins`."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import textwrap

import pytest
import torch

from r2t_plugin import cli, plugins
from r2t_plugin.hookspecs import hookimpl
from r2t_plugin.plugins import PluginConflictError, R2TPluginManager, Registry

PLUGIN_SRC = '''
import torch
from torch import nn
from r2t_plugin.hookspecs import hookimpl
from r2t_plugin.wrap import TensorModelWrapper


class FakeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        return self.lin(x).mean(-2)


class FakeAgg(nn.Module):
    def __init__(self, in_dim, n_out):
        super().__init__()
        self.lin = nn.Linear(in_dim, n_out)

    def forward(self, x, mask=None, coords=None):
        return {"logits": self.lin(x).mean(-2), "instance_scores": x.sum(-1)}


@hookimpl
def r2t_register_aggregators(registry):
    registry.add("fake_agg", FakeAgg)


@hookimpl
def r2t_adapt(model, stage_factory, placement):
    if isinstance(model, FakeModel):
        return TensorModelWrapper(model, stage_factory(8, 8), "input")
    return None
'''
CLASH_SRC = '''
from r2t_plugin.hookspecs import hookimpl

@hookimpl
def r2t_register_aggregators(registry):
    registry.add("abmil", lambda in_dim, n_out, **kw: None)
'''
BROKEN_SRC = "raise RuntimeError('boom at import')\n"


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A tiny distribution ``fakeplug 1.2`` (dist-info + entry_points.txt) on sys.path."""
    dist = tmp_path / "fakeplug-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [r2t_plugin]
        fake = fakeplug_good
        broken = fakeplug_broken
        clash = fakeplug_clash
        """))
    (tmp_path / "fakeplug_good.py").write_text(PLUGIN_SRC)
    (tmp_path / "fakeplug_broken.py").write_text(BROKEN_SRC)
    (tmp_path / "fakeplug_clash.py").write_text(CLASH_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("fakeplug_good", "fakeplug_broken", "fakeplug_clash"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    yield tmp_path
    for mod in ("fakeplug_good", "fakeplug_broken", "fakeplug_clash"):
        sys.modules.pop(mod, None)


def _manager(third_party: bool = True) -> R2TPluginManager:
    pm = R2TPluginManager()
    pm.load_builtins()
    pm.load_entry_points(third_party=third_party)
    return pm


def test_registry_add_create_and_errors():
    reg = Registry("aggregators")
    reg.add("a", lambda **kw: kw)
    assert reg.names() == ["a"] and reg.provider("a") == "builtin"
    assert reg.create("a", x=1) == {"x": 1}
    with pytest.raises(KeyError, match="registered: a"):
        reg.create("nope")
    with pytest.raises(PluginConflictError, match="'builtin' and 'other 2.0'"):
        reg.add("a", lambda **kw: kw, provider="other 2.0")
    with pytest.raises(PluginConflictError):  # the name stays unusable
        reg.get("a")


def test_builtins_registered():
    pm = plugins.get_manager()
    assert {"r2t", "identity"} <= set(pm.registries["stages"].names())
    want = {"abmil", "gated_abmil", "mean", "max", "transmil", "dsmil", "clam_sb", "clam_mb", "dtfd",
            "patch_gcn", "r2t_abmil"}
    assert want <= set(pm.registries["aggregators"].names())
    assert plugins.registry("aggregators").provider("abmil") == "builtin"
    with pytest.raises(ValueError, match="stages"):
        plugins.registry("nope")


def test_create_stage_and_aggregator():
    stage = plugins.create_stage("r2t", 16, heads=2)
    assert stage(torch.randn(7, 16)).shape == (7, 16)
    assert plugins.create_stage("identity", 16)(x := torch.randn(3, 16)) is x
    agg = plugins.create_aggregator("abmil", in_dim=16, n_out=4, dim=16)
    assert agg(torch.randn(5, 16))["logits"].shape == (1, 4)


def test_entry_point_discovery_failure_and_clash(plugin_dir, monkeypatch, capsys):
    pm = _manager()
    aggs = pm.registries["aggregators"]
    assert aggs.provider("fake_agg") == "fakeplug 1.2"
    assert aggs.create("fake_agg", in_dim=4, n_out=2)(torch.randn(3, 4))["logits"].shape == (2,)
    failed = {f.name: f for f in pm.failed}
    assert "RuntimeError: boom at import" in failed["broken"].error
    assert failed["broken"].provider == "fakeplug 1.2"
    with pytest.raises(PluginConflictError, match="'builtin' and 'fakeplug 1.2'"):
        aggs.create("abmil", in_dim=4, n_out=2)
    assert "gated_abmil" in aggs.names()  # the rest keep working
    assert ("fake", "fakeplug 1.2") in pm.adapters()

    monkeypatch.setattr(plugins, "_MANAGER", pm)
    import fakeplug_good

    from r2t_plugin import with_r2t

    wrapped = with_r2t(fakeplug_good.FakeModel(), stage="identity")
    assert type(wrapped).__name__ == "TensorModelWrapper"
    assert cli.main(["plugins"]) == 1  # a clash is an error
    out = capsys.readouterr().out
    assert "fake_agg" in out and "fakeplug 1.2" in out
    assert "boom at import" in out
    assert "'abmil'" in out and "'builtin' and 'fakeplug 1.2'" in out


def test_autoload_disabled_skips_third_party(plugin_dir, monkeypatch):
    monkeypatch.setenv("R2T_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setattr(plugins, "_MANAGER", None)
    pm = plugins.get_manager()
    assert "fake_agg" not in pm.registries["aggregators"].names()
    assert not pm.failed and not pm.conflicts
    monkeypatch.setattr(plugins, "_MANAGER", None)


def test_registration_hook_that_raises_is_recorded_and_unregistered():
    class Bad:
        @hookimpl
        def r2t_register_stages(self, registry):
            registry.add("half_done", lambda **kw: None)
            raise ValueError("bad option table")

    pm = _manager(third_party=False)
    bad = Bad()
    assert pm.load_plugin("bad", bad, "bad 0.1") is False
    assert not pm.is_registered(bad) and "bad" not in pm.providers
    assert any(f.name == "bad" and f.provider == "bad 0.1" and "ValueError: bad option table" in f.error
               for f in pm.failed)
    assert "r2t" in pm.registries["stages"].names()


def test_missing_builtin_module_is_recorded(monkeypatch):
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", [*plugins.BUILTIN_PLUGINS, "r2t_plugin.no_such_module"])
    pm = _manager(third_party=False)
    assert any(f.name == "r2t_plugin.no_such_module" and "ModuleNotFoundError" in f.error for f in pm.failed)
    assert "abmil" in pm.registries["aggregators"].names()


def test_cli_lists_everything(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    for word in ("stages:", "aggregators:", "readers:", "adapters", "r2t ", "abmil", "builtin"):
        assert word in out


def test_an_aggregator_of_a_plugin_that_failed_says_why(monkeypatch, tmp_path, capsys):
    """torchmil missing: `r2t compare` and create_aggregator give the import error, not only
    'not a registered aggregator'."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchmil" else real(name, *a))
    monkeypatch.delitem(sys.modules, "r2t_torchmil", raising=False)
    pm = _manager(third_party=False)
    monkeypatch.setattr(plugins, "_MANAGER", pm)
    provider = f"r2t-plugin {importlib.metadata.version('r2t-plugin')}"
    why = f"plugin 'torchmil' ({provider}) failed to load: ImportError: torchmil is not installed"
    with pytest.raises(KeyError, match=re.escape(why)):
        plugins.create_aggregator("torchmil.ABMIL", in_dim=4, n_out=2)
    assert pm.registries["aggregators"].why_missing("abmil") == ""
    assert pm.registries["aggregators"].why_missing("other").startswith(" (perhaps from a plugin that failed")
    cfg = tmp_path / "compare.yaml"
    cfg.write_text("cohort: {csv: cohort.csv, features: feats, task: classification}\n"
                   "aggregators: [abmil, torchmil.ABMIL]\noutput: out\n")
    assert cli.main(["compare", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"aggregators[1].name: 'torchmil.ABMIL' is not a registered aggregator ({why}" in err
    assert "pip install 'r2t-plugin[torchmil]'" in err and "Traceback" not in err
