"""Feature-file readers, cohort tables with case-level bags, pre-flight checks and splits."""
from .cohort import CaseBags, Cohort, CohortError, assemble_case
from .mil_table import read_mil_table
from .preflight import PreflightError, PreflightReport, PreflightWarning, Problem, preflight
from .readers import ReaderError, find_reader, read_bag
from .splits import Fold, SplitError, cohort_strata, load_or_make_folds, make_folds, survival_strata

__all__ = [
    "Cohort", "CaseBags", "CohortError", "assemble_case",
    "preflight", "PreflightError", "PreflightReport", "PreflightWarning", "Problem",
    "ReaderError", "find_reader", "read_bag", "read_mil_table",
    "Fold", "SplitError", "make_folds", "load_or_make_folds", "cohort_strata", "survival_strata",
]
