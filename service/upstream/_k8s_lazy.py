"""Import ``kubernetes_asyncio.config`` without the generated client's ~800 model modules.

``kubernetes_asyncio/__init__.py`` and ``kubernetes_asyncio.client/__init__.py`` import every
generated API and model class (about +38 MB RSS); ``config.kube_config`` needs only
``client.Configuration`` (and ``client.ApiClient`` in helpers podgate never calls). This
registers both packages with their real specs but without running their ``__init__``;
``Configuration`` is imported from its own module and any other attribute runs the real
``__init__`` then (so ``kubernetes_asyncio.client.CoreV1Api`` still works, e.g. in tests).
Does nothing when the package was already imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__all__ = ["install"]

_TOP = "kubernetes_asyncio"
_CLIENT = "kubernetes_asyncio.client"


def _api_client(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``ApiClient`` in ``kube_config`` (whose import would load every model)
    until someone calls it."""
    return importlib.import_module(f"{_CLIENT}.api_client").ApiClient(*args, **kwargs)


def _shell(name: str, eager: dict[str, str], stand_ins: dict[str, Any]) -> types.ModuleType | None:
    """The package ``name`` registered but not executed; ``eager`` maps attributes to the
    submodule that defines them, ``stand_ins`` are returned until the real ``__init__`` ran."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return None
    module = importlib.util.module_from_spec(spec)
    loaded = False

    def __getattr__(attr: str) -> Any:
        nonlocal loaded
        if attr in eager:
            value = getattr(importlib.import_module(eager[attr]), attr)
            setattr(module, attr, value)
            return value
        if attr in stand_ins and not loaded:
            return stand_ins[attr]
        if attr.startswith("__"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        try:  # a submodule, as the real package would have imported it
            return importlib.import_module(f"{name}.{attr}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{name}.{attr}":
                raise
        if not loaded:
            loaded = True  # any other attribute: run the real __init__ into this module
            assert spec.loader is not None
            spec.loader.exec_module(module)
            if attr in module.__dict__:
                return module.__dict__[attr]
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
    return module


def install() -> None:
    if _TOP in sys.modules:
        return
    top = _shell(_TOP, {}, {})
    if top is None:
        return
    client = _shell(
        _CLIENT,
        {"Configuration": f"{_CLIENT}.configuration"},
        {"ApiClient": _api_client},
    )
    if client is not None:
        top.client = client  # type: ignore[attr-defined]


install()
