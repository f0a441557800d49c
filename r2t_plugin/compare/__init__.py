"""The compare harness: aggregators with and without R²T over folds x seeds, paired."""
from .config import CompareConfig, ConfigError, load_config, parse_config
from .runner import CompareOutcome, run_compare

__all__ = ["CompareConfig", "ConfigError", "load_config", "parse_config", "CompareOutcome", "run_compare"]
