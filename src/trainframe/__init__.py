"""trainframe: a plugin-based training framework for decoder-only language models."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("trainframe")
"""Decorator for plugin hook implementations: ``@trainframe.hookimpl``."""

__all__ = ["hookimpl", "__version__"]
