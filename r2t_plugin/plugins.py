"""The plugin manager: built-ins first, then the ``r2t_plugin`` entry-point group.

Every plugin (built-in or third-party) is a module or object with ``@hookimpl`` functions
(see :mod:`r2t_plugin.hookspecs`). The manager calls each plugin's ``r2t_register_*`` hooks
through pluggy, one plugin at a time (``subset_hook_caller``), with a :class:`PluginRegistry`
view of that kind's registry, so that every name is recorded with the plugin providing it. A plugin that
fails to import, or whose registration hook raises, is recorded in
:attr:`R2TPluginManager.failed` and the others keep working. Two providers of one name is
a :class:`PluginConflictError` naming both: raised by :meth:`Registry.add` at run time; a
clash between plugins while loading is recorded in :attr:`R2TPluginManager.conflicts` and
raised whenever that name is used (so one clash does not hide every other plugin).

``R2T_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points of other distributions (the adapters
shipped with r2t-plugin itself still load).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pluggy
from torch import nn

from . import hookspecs
from .hookspecs import PROJECT

__all__ = [
    "BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "KINDS", "Registry", "PluginRegistry", "PluginConflictError",
    "FailedPlugin", "R2TPluginManager", "get_manager", "registry", "create_aggregator",
    "create_stage",
]

ENTRY_POINT_GROUP = "r2t_plugin"
DISTRIBUTION = "r2t-plugin"
BUILTIN = "builtin"
KINDS = ("stages", "aggregators", "readers")
_HOOK_OF_KIND = {
    "stages": "r2t_register_stages",
    "aggregators": "r2t_register_aggregators",
    "readers": "r2t_register_readers",
}
# Built-in plugins, by import path; registered exactly like third-party ones.
BUILTIN_PLUGINS = [
    "r2t_plugin.r2t.plugin",
    "r2t_plugin.aggregators.plugin",
    "r2t_plugin.wrap",
    "r2t_plugin.data.readers",
]


class PluginConflictError(RuntimeError):
    """Two plugins provide the same name in one registry."""


@dataclass(frozen=True)
class FailedPlugin:
    """A plugin that could not be loaded or whose hook raised."""

    name: str
    provider: str
    error: str


class Registry:
    """Named factories of one kind (``"stages"``, ``"aggregators"`` or ``"readers"``)."""

    def __init__(self, kind: str, failed: list[FailedPlugin] | None = None) -> None:
        self.kind = kind
        self.failed = failed if failed is not None else []  # the manager's load failures
        self._factories: dict[str, Callable] = {}
        self._providers: dict[str, str] = {}
        self._clashes: dict[str, list[str]] = {}

    def add(self, name: str, factory: Callable, provider: str = BUILTIN, *, strict: bool = True) -> None:
        """Register ``factory`` under ``name``, provided by ``provider``.

        A name that is already taken becomes unusable (both providers are recorded); with
        ``strict`` that raises :class:`PluginConflictError` at once, else the error is raised
        whenever the name is used (how the manager loads plugins, so that one clash does not
        hide every other plugin).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise TypeError(f"{self.kind} {name!r}: factory must be callable, got {factory!r}")
        if name in self._factories or name in self._clashes:
            first = self._clashes.get(name, [self._providers.get(name)])
            self._clashes[name] = [*first, provider]
            self._factories.pop(name, None)
            self._providers.pop(name, None)
            if strict:
                raise self._clash_error(name)
            return
        self._factories[name] = factory
        self._providers[name] = provider

    def _clash_error(self, name: str) -> PluginConflictError:
        who = " and ".join(repr(p) for p in self._clashes[name])
        return PluginConflictError(f"{self.kind} name {name!r} is provided by {who}; "
                                   "uninstall or disable one of them")

    def get(self, name: str) -> Callable:
        """The factory registered under ``name``."""
        if name in self._clashes:
            raise self._clash_error(name)
        if name not in self._factories:
            known = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown {self.kind[:-1]} {name!r}{self.why_missing(name)}; registered: {known}")
        return self._factories[name]

    def why_missing(self, name: str) -> str:
        """``" (plugin 'x' (provider) failed to load: error)"`` for an unregistered ``name``:
        the failed plugin whose name prefixes it (``torchmil`` for ``torchmil.ABMIL``), else
        every plugin that failed, as a maybe; ``""`` when none failed."""
        if name in self._factories or not self.failed:
            return ""
        mine = [f for f in self.failed if name.startswith(f"{f.name}.")]
        lead = " (" if mine else " (perhaps from a plugin that failed to load: "
        return lead + "; ".join(f"plugin {f.name!r} ({f.provider}) failed to load: {f.error}"
                                for f in mine or self.failed) + ")"

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory of ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted (clashing names excluded)."""
        return sorted(self._factories)

    def provider(self, name: str) -> str:
        """``"distribution version"`` of the plugin that registered ``name``, or ``"builtin"``."""
        self.get(name)
        return self._providers[name]

    @property
    def conflicts(self) -> dict[str, list[str]]:
        """Names provided by several plugins -> their providers."""
        return {k: list(v) for k, v in self._clashes.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


class PluginRegistry:
    """The view of a :class:`Registry` that one plugin's registration hook receives:
    ``add(name, factory)`` records that plugin as the provider."""

    def __init__(self, registry: Registry, provider: str) -> None:
        self.registry, self.provider = registry, provider
        self.kind = registry.kind

    def add(self, name: str, factory: Callable) -> None:
        """Register ``factory`` under ``name`` (a clash is raised when the name is used)."""
        self.registry.add(name, factory, self.provider, strict=False)

    def names(self) -> list[str]:
        """The names registered so far."""
        return self.registry.names()

    def __contains__(self, name: object) -> bool:
        return name in self.registry


class R2TPluginManager(pluggy.PluginManager):
    """pluggy manager with the registries, plugin providers and load failures."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.failed: list[FailedPlugin] = []
        self.registries = {kind: Registry(kind, self.failed) for kind in KINDS}
        self.providers: dict[str, str] = {}  # plugin name -> provider

    # -------------------------------------------------------------- loading
    def load_plugin(self, name: str, obj: Any, provider: str) -> bool:
        """Register ``obj`` as plugin ``name`` and run its registration hooks.

        A plugin whose registration raises is unregistered and recorded in :attr:`failed`.
        """
        try:
            self.register(obj, name=name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the rest
            self.failed.append(FailedPlugin(name, provider, _describe(exc)))
            return False
        self.providers[name] = provider
        others = [p for p in self.get_plugins() if p is not obj]
        for kind, hook in _HOOK_OF_KIND.items():
            call = self.subset_hook_caller(hook, remove_plugins=others)  # this plugin's impls only
            try:
                call(registry=PluginRegistry(self.registries[kind], provider))
            except Exception as exc:  # noqa: BLE001
                self.failed.append(FailedPlugin(name, provider, _describe(exc)))
                self.unregister(obj)
                self.providers.pop(name, None)
                return False
        return True

    def load_builtins(self) -> None:
        """Import and register every module of :data:`BUILTIN_PLUGINS`."""
        for path in BUILTIN_PLUGINS:
            try:
                module = importlib.import_module(path)
            except Exception as exc:  # noqa: BLE001
                self.failed.append(FailedPlugin(path, BUILTIN, _describe(exc)))
                continue
            self.load_plugin(path, module, BUILTIN)

    def load_entry_points(self, third_party: bool = True) -> None:
        """Load the ``r2t_plugin`` entry-point group (only r2t-plugin's own unless ``third_party``)."""
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            if not third_party and _canonical(dist_name) != _canonical(DISTRIBUTION):
                continue
            provider = f"{dist_name} {dist.version}" if dist is not None else "unknown"
            if self.has_plugin(ep.name):
                continue  # the same distribution seen twice on sys.path
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001
                self.failed.append(FailedPlugin(ep.name, provider, _describe(exc)))
                continue
            self.load_plugin(ep.name, obj, provider)

    # -------------------------------------------------------------- queries
    @property
    def conflicts(self) -> dict[str, dict[str, list[str]]]:
        """kind -> {name: providers} for every name provided more than once."""
        return {k: r.conflicts for k, r in self.registries.items() if r.conflicts}

    def adapters(self) -> list[tuple[str, str]]:
        """(plugin name, provider) of every plugin implementing ``r2t_adapt``, in call order."""
        impls = self.hook.r2t_adapt.get_hookimpls()[::-1]  # pluggy calls the last registered first
        return [(i.plugin_name, self.providers.get(i.plugin_name, BUILTIN)) for i in impls]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


_MANAGER: R2TPluginManager | None = None
_LOCK = threading.Lock()


def get_manager(reload: bool = False) -> R2TPluginManager:
    """The process-wide plugin manager (built on first use; ``reload=True`` rebuilds it)."""
    global _MANAGER
    with _LOCK:
        if _MANAGER is None or reload:
            pm = R2TPluginManager()
            pm.load_builtins()
            pm.load_entry_points(third_party=os.environ.get("R2T_DISABLE_PLUGIN_AUTOLOAD", "") != "1")
            _MANAGER = pm
        return _MANAGER


def registry(kind: str) -> Registry:
    """The registry of ``kind``: ``"stages"``, ``"aggregators"`` or ``"readers"``."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; choose one of {list(KINDS)}")
    return get_manager().registries[kind]


def create_aggregator(name: str, in_dim: int, n_out: int, **options: Any) -> nn.Module:
    """A registered aggregator: ``n_out`` classes, or ``n_out`` hazard logits for survival."""
    return registry("aggregators").create(name, in_dim=in_dim, n_out=n_out, **options)


def create_stage(name: str, in_dim: int | None, out_dim: int | None = None, **options: Any) -> nn.Module:
    """A registered re-embedding stage (``"r2t"``, ``"identity"``, ...)."""
    return registry("stages").create(name, in_dim=in_dim, out_dim=out_dim, **options)
