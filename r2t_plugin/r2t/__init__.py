"""The R²T re-embedding stage: regions, R-MSA + EPEG, CR-MSA, R²T-MIL, official import."""
from .model import R2TABMIL
from .stage import R2T

__all__ = ["R2T", "R2TABMIL"]
