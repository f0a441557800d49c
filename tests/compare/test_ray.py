"""The Ray engine on one local Ray instance (num_cpus=2) shared by the whole test session:
the same results.csv as the local engine, failed tasks retried then recorded, and resume
after the driver is killed mid-grid."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from torch import nn

from r2t_plugin.compare.config import ConfigError, parse_config
from r2t_plugin.compare.engines import get_engine
from r2t_plugin.compare.runner import run_compare
from r2t_plugin.plugins import registry

from .conftest import read_rows, sigkill_mid_run, write_yaml

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

TIMING = {"seconds", "peak_memory_mb"}


class _Boom(nn.Module):
    """Fails whenever it trains (it passes the driver's eval-mode model check); every
    training attempt appends a line to ``log``."""

    def __init__(self, in_dim: int, n_out: int, log: str = "", **_) -> None:
        super().__init__()
        self.head, self.log = nn.Linear(in_dim, n_out), log

    def forward(self, x, mask=None, coords=None, patch_size=None):
        feats = x.features if hasattr(x, "features") else x
        if self.training:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")
            raise RuntimeError("boom while training")
        return {"logits": self.head(feats.mean(dim=1)), "instance_scores": feats[..., 0]}


class _Flaky(_Boom):
    """Fails the first time any instance trains (``marker`` is created then), then works."""

    def __init__(self, in_dim: int, n_out: int, marker: str = "", **_) -> None:
        super().__init__(in_dim, n_out)
        self.marker = marker

    def forward(self, x, mask=None, coords=None, patch_size=None):
        feats = x.features if hasattr(x, "features") else x
        if self.training:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                raise RuntimeError("flaky first attempt")
        return {"logits": self.head(feats.mean(dim=1)), "instance_scores": feats[..., 0]}


def _register_test_aggregators() -> None:
    """In the test process and in every Ray worker (a worker_process_setup_hook)."""
    for name, factory in (("test_ray_boom", _Boom), ("test_ray_flaky", _Flaky)):
        if name not in registry("aggregators"):
            registry("aggregators").add(name, factory)


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray instance for the session; yields its address."""
    if ray.is_initialized():
        ray.shutdown()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    ctx = ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
                   runtime_env={"worker_process_setup_hook": _register_test_aggregators})
    yield ctx.address_info["address"]
    ray.shutdown()


def _config(cohort, output: Path) -> dict:
    """abmil with R²T x 2 folds: 2 runs of 2 epochs, tiny widths, one torch thread per run."""
    return {
        "cohort": {"csv": str(cohort.csv), "features": str(cohort.feature_dir), "task": "classification"},
        "aggregators": [{"name": "abmil", "options": {"dim": 8, "hidden": 4}}],
        "variants": [{"name": "r2t", "r2t": {"layout": "coords", "heads": 2, "crmsa_heads": 2, "epeg_k": 3}}],
        "folds": 2, "seeds": [0], "val_fraction": 0.3,
        "training": {"epochs": 2, "lr": 1e-3, "num_threads": 1},
        "output": str(output),
    }


@pytest.fixture
def ray_config(tiny_cohort, tmp_path):
    return _config(tiny_cohort, tmp_path / "out")


@pytest.fixture(scope="module")
def local_results(tiny_cohort, tmp_path_factory):
    """results.csv of the local engine for the ``ray_config`` grid (run once)."""
    cfg = parse_config(_config(tiny_cohort, tmp_path_factory.mktemp("local") / "out"))
    assert cfg.engine == "local"
    run_compare(cfg, progress=False)
    return _comparable(cfg.output / "results.csv")


def _comparable(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_rows(path)]


def _assert_same(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert [r["run_id"] for r in a] == [r["run_id"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k.startswith(("val_", "test_")):
                assert float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-6), (ra["run_id"], k)
            else:
                assert ra[k] == rb[k], (ra["run_id"], k)


def test_ray_engine_gives_the_local_results(ray_address, ray_config, local_results):
    cfg = parse_config(dict(ray_config, engine="ray"))
    engine = get_engine(cfg)
    assert engine.name == "ray"
    outcome = run_compare(cfg, engine=engine, progress=False)
    assert all(r["status"] == "ok" for r in outcome.rows) and len(outcome.rows) == 2
    assert ray.is_initialized()  # the session's connection was used and left open
    _assert_same(_comparable(cfg.output / "results.csv"), local_results)
    assert (cfg.output / "runs" / outcome.rows[0]["run_id"] / "predictions.csv").is_file()


def test_failed_task_is_retried_then_recorded_and_the_rest_finish(ray_address, ray_config, tmp_path):
    _register_test_aggregators()
    log, marker = tmp_path / "boom.log", tmp_path / "flaky.marker"
    ray_config["aggregators"] = [{"name": "test_ray_boom", "options": {"log": str(log)}},
                                 {"name": "test_ray_flaky", "options": {"marker": str(marker)}}]
    ray_config["variants"] = [{"name": "plain"}]
    ray_config["training"]["epochs"] = 1
    cfg = parse_config(dict(ray_config, engine="ray", retries=1))
    outcome = run_compare(cfg, progress=False)
    rows = {r["run_id"]: r for r in read_rows(cfg.output / "results.csv")}
    assert len(rows) == 4
    for fold in (0, 1):
        boom = rows[f"test_ray_boom__plain__fold{fold}__seed0"]
        assert boom["status"] == "failed" and "boom while training" in boom["error"]
        tb = (cfg.output / "runs" / boom["run_id"] / "traceback.txt").read_text()
        assert "Traceback" in tb and "RuntimeError: boom while training" in tb
        assert rows[f"test_ray_flaky__plain__fold{fold}__seed0"]["status"] == "ok"  # one attempt failed
    assert marker.is_file()
    assert len(log.read_text().splitlines()) == 4  # each failing run: first attempt + 1 retry
    assert len(outcome.failed) == 2


def test_killed_driver_resumes(ray_address, ray_config, local_results, tmp_path):
    ray_config["cpus_per_run"] = 2  # one run at a time: SIGKILL lands in the second run
    config_path = write_yaml(tmp_path / "killed.yaml", ray_config)
    out = Path(ray_config["output"])
    sigkill_mid_run([config_path, "--engine", "ray", "--address", ray_address], out)
    partial = read_rows(out / "results.csv")
    assert len(partial) == 1 and all(r["status"] == "ok" for r in partial)
    resumed = run_compare(parse_config(dict(ray_config, engine="ray")), progress=False)
    assert len(resumed.rows) == 2
    _assert_same(_comparable(out / "results.csv"), local_results)


def test_config_keys_and_missing_ray(ray_config, monkeypatch):
    cfg = parse_config(dict(ray_config, engine="ray", gpus_per_run=0.25, cpus_per_run=1.5, retries=2,
                            address="auto"))
    assert (cfg.gpus_per_run, cfg.cpus_per_run, cfg.retries, cfg.address) == (0.25, 1.5, 2, "auto")
    with pytest.raises(ConfigError) as err:
        parse_config(dict(ray_config, engine="ray", device="cuda", retries=-1))
    assert any(p.startswith("gpus_per_run:") for p in err.value.problems)
    assert any(p.startswith("retries:") for p in err.value.problems)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'r2t-plugin\[ray\]'"):
        get_engine(cfg)
