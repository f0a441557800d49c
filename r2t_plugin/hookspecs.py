"""The pluggy hook specifications of r2t-plugin (project name ``r2t_plugin``).

A plugin is any object or module with functions marked ``@hookimpl``; built-ins are
registered exactly like third-party plugins (entry-point group ``r2t_plugin``, see the
README's "Plugins" section). An implementation may take any subset of a hook's arguments,
by name, as in pytest.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import pluggy

if TYPE_CHECKING:
    from torch import nn

PROJECT = "r2t_plugin"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

StageFactory = Callable[..., "nn.Module"]
"""``stage_factory(in_dim: int | None, out_dim: int | None = None) -> nn.Module``."""


class Registrar(Protocol):
    """What a registration hook receives (the manager's view of one registry)."""

    kind: str

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        """Register ``factory`` under ``name``."""

    def names(self) -> list[str]:
        """The names registered so far."""


@hookspec
def r2t_register_stages(registry: Registrar) -> None:
    """Add named re-embedding stages: ``registry.add("r2t", factory)``.

    :param registry: the stage registry; the manager records this plugin as the provider.

    ``factory(in_dim: int | None, out_dim: int | None = None, **options) -> nn.Module``
    following the stage contract ``stage(x, mask=None, coords=None, patch_size=None)``.
    """


@hookspec
def r2t_register_aggregators(registry: Registrar) -> None:
    """Add named aggregator factories: ``registry.add("abmil", factory)``.

    :param registry: the aggregator registry; the manager records this plugin as the provider.

    ``factory(in_dim: int, n_out: int, **options) -> nn.Module`` following the aggregator
    contract ``agg(x, mask=None, coords=None) -> {"logits", "instance_scores", ...}``.
    """


@hookspec(firstresult=True)
def r2t_adapt(model: nn.Module, stage_factory: StageFactory,
              placement: Optional[str]) -> Optional[nn.Module]:
    """Return ``model`` with a re-embedding stage inserted, or None if not recognised.

    :param model: the user's model.
    :param stage_factory: builds the stage for the width the adapter finds (already
        residual unless the user asked for ``residual=False``).
    :param placement: ``"after_projection"``, ``"input"`` or None (the adapter's default);
        adapters decide with :func:`r2t_plugin.wrap.resolve_placement`.

    Adapters usually return a :class:`r2t_plugin.wrap.R2TWrapper` subclass; the first
    non-None result wins, and the generic fallback (``r2t_plugin.wrap``) is ``trylast``.
    """


@hookspec
def r2t_register_readers(registry: Registrar) -> None:
    """Add feature-file formats: ``registry.add("clam_h5", reader)``.

    :param registry: the reader registry; a reader can ``sniff(path) -> bool`` and
        ``read(path) -> FeatureBag``.
    """
