"""The pluggy hook specifications of r2t-plugin (project name ``r2t_plugin``).

A plugin is any object or module with functions marked ``@hookimpl``; built-ins are
registered exactly like third-party plugins (entry-point group ``r2t_plugin``).
"""
from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "r2t_plugin"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def r2t_register_stages(registry: Any) -> None:
    """Add named re-embedding stages: ``registry.add("r2t", factory)``.

    ``factory(in_dim: int | None, out_dim: int | None = None, **options) -> nn.Module``
    following the stage contract ``stage(x, mask=None, coords=None, patch_size=None)``.
    """


@hookspec
def r2t_register_aggregators(registry: Any) -> None:
    """Add named aggregator factories: ``registry.add("abmil", factory)``.

    ``factory(in_dim: int, n_out: int, **options) -> nn.Module`` following the aggregator
    contract ``agg(x, mask=None, coords=None) -> {"logits", "instance_scores", ...}``.
    """


@hookspec(firstresult=True)
def r2t_adapt(model: Any, stage_factory: Any, options: dict) -> Any:
    """Return ``model`` with a re-embedding stage inserted, or None if not recognised.

    ``stage_factory(in_dim: int | None, out_dim: int | None = None) -> nn.Module`` builds
    the stage (already residual when the user asked for ``residual=True``); ``options``:
    ``{"placement": "after_projection" | "input" | None}`` (None: the adapter's default).
    Adapters usually return a :class:`r2t_plugin.wrap.R2TWrapper` subclass; the generic
    fallback (``r2t_plugin.wrap``) is registered ``trylast``.
    """


@hookspec
def r2t_register_readers(registry: Any) -> None:
    """Add feature-file formats: ``registry.add("clam_h5", reader)``; a reader can
    ``sniff(path) -> bool`` and ``read(path) -> FeatureBag``."""
