"""The README's example compare configuration parses, and its training line gives the real defaults."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from r2t_plugin.compare.config import TRAINING_KEYS, parse_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_parses_and_shows_the_training_defaults():
    text = README.read_text()
    section = text[text.index("## r2t compare"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    raw = yaml.safe_load(block)
    config = parse_config(raw, "/x")
    assert [v.name for v in config.variants] == ["plain", "r2t_coords", "r2t_seq"]
    defaults = {key: default for key, (_types, default) in TRAINING_KEYS.items()}
    assert raw["training"] == defaults  # every key, each at its default
