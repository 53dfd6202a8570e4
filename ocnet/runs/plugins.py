"""Plug-ins named by ``--plugin``: modules or ``.py`` files imported before the configuration
is resolved, so that the solvers, data sets and step kinds they register are choices of
``--solver``, ``--problem`` and ``--net``."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .. import solvers
from ..model import data, kinds
from ..model.options import ConfigError


def load_plugins(spec: str) -> list[str]:
    """Import the modules of ``spec`` (comma-separated module names or ``.py`` paths) so that
    the solvers they register become available; returns the module names.

    Raises
    ------
    ConfigError
        For a module that cannot be found or fails while importing.
    """
    names = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        before = _registries()
        try:
            if item.endswith(".py"):
                path = Path(item).resolve()
                name = f"ocnet_plugin_{path.stem}"
                fresh = name not in sys.modules
                if fresh:
                    loader_spec = importlib.util.spec_from_file_location(name, path)
                    if path.exists() and not path.is_file():  # a FIFO would block the import
                        raise ConfigError(f"plugin file {item!r} is not a regular file")
                    if loader_spec is None or loader_spec.loader is None or not path.exists():
                        raise ConfigError(f"plugin file {item!r} not found")
                    module = importlib.util.module_from_spec(loader_spec)
                    sys.modules[name] = module
                    try:
                        loader_spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[name]
                        raise
            else:
                name = item
                fresh = name not in sys.modules
                importlib.import_module(item)
        except ConfigError:
            raise
        except ModuleNotFoundError as e:
            raise ConfigError(f"plugin {item!r} cannot be imported: {e}") from None
        except Exception as e:
            raise ConfigError(f"plugin {item!r} failed while importing: {type(e).__name__}: {e}") from None
        if fresh:
            _REGISTERED[name] = [key for key, cls in _registries().items() if before.get(key) is not cls]
        names.append(name)
    return names


#: Plug-in module ↦ the solvers, data sets and step kinds its import registered (for the
#: modules ``load_plugins`` imported).
_REGISTERED: dict[str, list[str]] = {}


def _registries() -> dict[str, Any]:
    """What plug-ins register, by name: solvers, data sets, step kinds."""
    return {**solvers.SOLVERS, **data.REGISTERED, **kinds.KINDS}


def idle_plugins(spec: str) -> list[str]:
    """The plug-ins of ``spec`` (as given) whose import registered nothing (already imported)."""
    idle = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name = f"ocnet_plugin_{Path(item).stem}" if item.endswith(".py") else item
        if _REGISTERED.get(name) == []:
            idle.append(item)
    return idle
