"""A comparison folder started when ``with_r2t`` replaced the features by default does not
resume under today's residual default: its variants' ``residual`` is made explicit."""
from __future__ import annotations

import json

import pytest

from r2t_plugin.compare.config import parse_config
from r2t_plugin.compare.manifest import ManifestMismatch, _fingerprint, check_resumable

CONFIG = {"cohort": {"csv": "cohort.csv", "features": "feats", "task": "classification"},
          "aggregators": ["abmil"], "output": "out",
          "variants": [{"name": "plain"}, {"name": "r2t", "r2t": {"layout": "coords"}},
                       {"name": "r2t_replacing", "r2t": {"layout": "coords", "residual": False}}]}


def test_an_implicit_residual_is_recorded_and_an_old_folder_is_not_resumed(tmp_path):
    fp = _fingerprint(parse_config(CONFIG), {})
    assert fp["variants"] == {"plain": None, "r2t": {"layout": "coords", "residual": True},
                              "r2t_replacing": {"layout": "coords", "residual": False}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"fingerprint": fp}))
    check_resumable(path, {"fingerprint": fp})  # the same comparison today: resumes
    old = {**fp, "variants": {"plain": None, "r2t": {"layout": "coords"},  # as written before: no key
                              "r2t_replacing": {"layout": "coords", "residual": False}}}
    path.write_text(json.dumps({"fingerprint": old}))
    with pytest.raises(ManifestMismatch, match=r"\(variants\.r2t differ\)"):
        check_resumable(path, {"fingerprint": fp})
