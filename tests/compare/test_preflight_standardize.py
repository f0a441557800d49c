"""``r2t compare``'s pre-flight does not tell a config with ``cohort.standardize: true`` to set
it: features z-scored per fold before training are harmless however large they are raw."""
from __future__ import annotations

import warnings

import pytest

from r2t_plugin.compare.runner import run_compare
from r2t_plugin.compare.config import parse_config
from r2t_plugin.data import PreflightWarning
from r2t_plugin.data.synthetic import SyntheticSpec, generate_cohort


@pytest.fixture(scope="module")
def loud_cohort(tmp_path_factory):
    """Features of magnitude ~1e5 (above the pre-flight's 1e4)."""
    return generate_cohort(tmp_path_factory.mktemp("loud"), SyntheticSpec(n_cases=12, min_patches=20, max_patches=30,
                                                                            dim=8, noise=5e4, seed=3))


@pytest.mark.parametrize("standardize", [False, True])
def test_large_features_warn_only_without_standardize(mini_config, loud_cohort, standardize):
    mini_config["cohort"].update(csv=str(loud_cohort.csv), features=str(loud_cohort.feature_dir),
                                 standardize=standardize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_compare(parse_config(mini_config), progress=False)
    texts = [str(w.message) for w in caught if issubclass(w.category, PreflightWarning)]
    if standardize:
        assert texts == []
    else:
        assert len(texts) == 1 and "above 10000" in texts[0] and "set cohort.standardize: true" in texts[0]
