"""Config validation: every problem reported with its key path and the valid choices."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from r2t_plugin.compare.config import ConfigError, load_config, parse_config

BASE = {
    "cohort": {"csv": "cohort.csv", "features": "feats", "task": "classification"},
    "aggregators": ["abmil", {"name": "mean", "id": "meanpool", "options": {"dim": 8}}],
    "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {"layout": "coords", "heads": 2}}],
    "folds": 3,
    "seeds": [0, 1],
    "training": {"epochs": 2},
    "output": "out",
}


def _with(**changes):
    cfg = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = cfg
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return cfg


def _problems(cfg) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, "/base")
    return err.value.problems


def test_valid_config_and_defaults():
    cfg = parse_config(BASE, "/base")
    assert cfg.cohort.csv == Path("/base/cohort.csv") and cfg.cohort.features == (Path("/base/feats"),)
    assert [a.id for a in cfg.aggregators] == ["abmil", "meanpool"]
    assert cfg.aggregators[1].options == {"dim": 8}
    assert cfg.plain_variant.name == "plain" and cfg.variants[1].r2t == {"layout": "coords", "heads": 2}
    assert cfg.seeds == (0, 1) and cfg.folds == 3 and cfg.val_fraction == 0.2
    assert cfg.training["epochs"] == 2 and cfg.training["optimizer"] == "adamw"
    assert cfg.output == Path("/base/out") and cfg.engine == "local" and cfg.workers == 1


def test_unknown_keys_name_path_and_valid_keys():
    problems = _problems(_with(cohort__labels="x", trainig={"epochs": 1}))
    assert any(p.startswith("cohort.labels: unknown key; valid keys: csv, features, task") for p in problems)
    assert any(p.startswith("trainig: unknown key; valid keys: cohort, aggregators") for p in problems)


def test_wrong_types_and_choices():
    problems = _problems(_with(folds="five", cohort__task="regression", training__optimizer="sgd",
                               training__epochs=0, seeds=[0, "a"]))
    text = "\n".join(problems)
    assert "folds: expected an integer, got str 'five'" in text
    assert "cohort.task: 'regression' is not one of: classification, survival" in text
    assert "training.optimizer: 'sgd' is not one of: adam, adamw" in text
    assert "training.epochs: must be >= 1, got 0" in text
    assert "seeds: expected a non-empty list of integers" in text
    assert len(problems) == 5  # every problem at once


def test_bool_is_not_an_integer():
    assert any(p.startswith("folds: expected an integer, got bool") for p in _problems(_with(folds=True)))


def test_unknown_aggregator_lists_registered():
    problems = _problems(_with(aggregators=["abmil", "nope"]))
    assert len(problems) == 1
    assert problems[0].startswith("aggregators[1].name: 'nope' is not a registered aggregator; registered: ")
    assert "abmil" in problems[0] and "transmil" in problems[0]


def test_variant_options():
    problems = _problems(_with(variants__1__r2t={"layout": "grid", "regoin_num": 4}))
    text = "\n".join(problems)
    assert "variants[1].r2t.layout: 'grid' is not one of: sequence, coords" in text
    assert "variants[1].r2t.regoin_num: unknown key; valid keys:" in text and "region_num" in text
    two_plain = _problems(_with(variants=[{"name": "a"}, {"name": "b"}]))
    assert any("at most one variant without r2t" in p for p in two_plain)
    dup = _problems(_with(aggregators=["abmil", "abmil"]))
    assert any("id 'abmil' appears twice" in p for p in dup)


def test_missing_required():
    cfg = copy.deepcopy(BASE)
    del cfg["output"]
    del cfg["cohort"]["csv"]
    problems = _problems(cfg)
    assert "output: required key is missing" in problems
    assert "cohort.csv: required key is missing" in problems


def test_survival_columns():
    cfg = parse_config(_with(cohort__task="survival"), "/b")
    assert cfg.cohort.censorship_column == "censorship" and cfg.cohort.event_column is None
    both = _with(cohort__task="survival")
    both["cohort"].update(event_column="e", censorship_column="c")
    assert any("not both" in p for p in _problems(both))


def test_load_config_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cohort: {csv: t.csv, features: f, task: classification}\naggregators: [abmil]\n"
                    "output: o\n")
    cfg = load_config(path)
    assert cfg.cohort.csv == tmp_path / "t.csv" and cfg.output == tmp_path / "o"
    assert [v.name for v in cfg.variants] == ["plain", "r2t"]  # default variants
    path.write_text("cohort: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("cohort:\n  csv: a: b\n")  # yaml's own message spans several lines
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and "line 2, column" in str(info.value)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping"):
        load_config(path)


def test_bench_config_is_valid():
    bench = Path(__file__).resolve().parents[2] / "bench" / "compare_mil.yaml"
    cfg = load_config(bench)
    assert [a.name for a in cfg.aggregators] == ["abmil", "gated_abmil", "transmil", "dsmil", "clam_sb"]
    assert cfg.folds == 10 and cfg.seeds == (0, 1, 2) and cfg.cohort.standardize
    assert cfg.variants[1].r2t["layout"] == "sequence"


def test_readme_example_config_is_valid():
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## r2t compare"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = parse_config(yaml.safe_load(block), "/base")
    assert [v.name for v in cfg.variants] == ["plain", "r2t_coords", "r2t_seq"]
    assert cfg.aggregators[2].id == "clam_small" and cfg.seeds == (0, 1, 2)


def test_stamp_and_trident_cohort_keys():
    cfg = parse_config(_with(cohort__case_column="PATIENT", cohort__slide_column="FILENAME",
                             cohort__mpp_column="MPP", cohort__encoder="uni_v1"), "/base")
    c = cfg.cohort
    assert (c.case_column, c.slide_column, c.mpp_column, c.encoder) == ("PATIENT", "FILENAME", "MPP", "uni_v1")
    plain = parse_config(BASE, "/base").cohort
    assert (plain.case_column, plain.slide_column, plain.mpp_column, plain.encoder) == ("case_id", "slide_id",
                                                                                        None, None)
    problems = _problems(_with(cohort__mpp_column=0.5))
    assert problems == ["cohort.mpp_column: expected a string or null, got float 0.5"]


def test_clam_splits_key(tmp_path):
    folder = tmp_path / "splits" / "task_1_100"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"splits_{i}.csv").write_text(",train,val,test\n0,a,b,c\n")
        (folder / f"splits_{i}_bool.csv").write_text(",train,val,test\na,True,False,False\n")
    cfg = copy.deepcopy(BASE)
    del cfg["folds"]
    cfg["splits"] = "splits/task_1_100"
    parsed = parse_config(cfg, tmp_path)
    assert parsed.splits == tuple(folder / f"splits_{i}.csv" for i in range(3)) and parsed.folds == 3
    listed = parse_config({**cfg, "splits": [str(folder / "splits_1.csv"), str(folder / "splits_0.csv")]}, tmp_path)
    assert listed.folds == 2 and [p.name for p in listed.splits] == ["splits_1.csv", "splits_0.csv"]
    assert parse_config(BASE, "/base").splits is None
    with pytest.raises(ConfigError) as err:
        parse_config({**cfg, "folds": 5}, tmp_path)
    assert err.value.problems == ["folds: 5, but splits names 3 CLAM file(s), one fold each; remove folds"]
    with pytest.raises(ConfigError, match=r"splits: no such split file\(s\) \[.*nowhere'\]"):
        parse_config({**cfg, "splits": "nowhere"}, tmp_path)


def test_readme_formats_configs_are_valid(tmp_path):
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Formats"):readme.index("## Heatmaps")]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    assert len(blocks) == 3
    clam_folder = tmp_path / blocks[0]["splits"]
    clam_folder.mkdir(parents=True)
    for i in range(2):
        (clam_folder / f"splits_{i}.csv").write_text(",train,val,test\n0,a,b,c\n")
    clam, trident, stamp = (parse_config({**b, "aggregators": ["abmil"], "output": "out"}, tmp_path) for b in blocks)
    assert clam.folds == 2 and clam.cohort.case_column == "case_id"
    assert trident.cohort.encoder == "uni_v1"
    assert (stamp.cohort.case_column, stamp.cohort.slide_column, stamp.cohort.mpp_column) == ("PATIENT", "FILENAME",
                                                                                           "MPP")


def test_cohort_cache_sizes_dtype_and_loader_workers():
    cfg = parse_config(_with(cohort__cache="8GB", cohort__cache_dtype="float16", training__num_workers=2), "/base")
    assert cfg.cohort.cache == "8GB" and cfg.cohort.cache_dtype == "float16" and cfg.training["num_workers"] == 2
    assert parse_config(BASE, "/base").training["num_workers"] is None  # chosen from the cohort size
    assert parse_config(_with(cohort__cache=True), "/base").cohort.cache is True
    text = "\n".join(_problems(_with(cohort__cache="lots", training__num_workers=-1)))
    assert "cohort.cache: 'lots' is not a size" in text and "training.num_workers: must be >= 0" in text
    text = "\n".join(_problems(_with(cohort__cache_dtype="float16")))
    assert "cohort.cache_dtype: float16 needs a cache" in text
    assert "cohort.cache_dtype: 'int8' is not one of: float32, float16" in "\n".join(
        _problems(_with(cohort__cache=True, cohort__cache_dtype="int8")))


def test_loader_and_cache_settings_do_not_block_a_resume_but_the_cache_dtype_does(tmp_path):
    import json

    from r2t_plugin.compare.manifest import ManifestMismatch, check_resumable

    def manifest(cache, dtype, workers):
        return {"fingerprint": {"cohort": {"csv": "c", "cache": cache, "cache_dtype": dtype},
                                "training": {"epochs": 2, "num_workers": workers},
                                "aggregators": {}, "variants": {}}}

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest(False, "float32", 0)))
    check_resumable(path, manifest("8GB", "float32", 4))
    with pytest.raises(ManifestMismatch, match="cohort"):
        check_resumable(path, manifest(True, "float16", 0))
