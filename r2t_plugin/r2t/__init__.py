"""The R²T re-embedding stage: regions, R-MSA + EPEG, CR-MSA, R²T-MIL, official import."""
from .model import R2TABMIL
from .official import PRESETS, load_official_checkpoint, to_official_state_dict
from .stage import R2T

__all__ = ["R2T", "R2TABMIL", "PRESETS", "load_official_checkpoint", "to_official_state_dict"]
