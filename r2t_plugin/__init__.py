"""r2t-plugin: R²T feature re-embedding for multiple-instance learning on whole-slide images."""
from .bag import BagBatch, FeatureBag
from .r2t import R2T, R2TABMIL, load_official_checkpoint, to_official_state_dict

__version__ = "0.1.0"
__all__ = ["FeatureBag", "BagBatch", "R2T", "R2TABMIL", "load_official_checkpoint", "to_official_state_dict", "__version__"]

from .plugins import create_aggregator, create_stage, get_manager, registry  # noqa: E402

__all__ += ["create_aggregator", "create_stage", "get_manager", "registry"]
from .wrap import with_r2t  # noqa: E402

__all__ += ["with_r2t"]
