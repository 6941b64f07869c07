"""trainframe: a plugin-based training framework for decoder-only language models.

The names below are what a plugin may import from ``trainframe`` (docs/architecture.md, "What a
plugin may import"). All but ``hookimpl`` load on first use, so ``import trainframe`` stays cheap
and a module that ``trainframe.config`` imports can still import ``trainframe``.
"""

import importlib

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("trainframe")
"""Decorator for plugin hook implementations: ``@trainframe.hookimpl``."""

_PROTOCOLS = (
    "Tokenizer", "SupportsFingerprint", "SupportsSave", "SupportsHfTokenizer", "SupportsAllowedNext", "SupportsClosingCost",
    "SupportsBudgetLimited", "SupportsDecodeFile", "SupportsCompleteTyped", "SupportsInfill",
    "Dataset", "HasCharsPerToken", "SupportsHoldOut",
    "Model", "SupportsFlopsPerToken", "SupportsGenerate", "SupportsSummary", "SupportsTrainingMemory", "HasBlocks",
    "Controller",
)
_LAZY = {
    "ComponentConfig": "trainframe.config", "RunConfig": "trainframe.config", "load_config": "trainframe.config",
    "UserError": "trainframe.errors",
    "Registry": "trainframe.registry",
    "Phase": "trainframe.phases", "PhaseController": "trainframe.phases", "StepOutcome": "trainframe.phases",
    "atomic_path": "trainframe.fileio", "atomic_dir": "trainframe.fileio",
    "write_text_atomic": "trainframe.fileio", "write_bytes_atomic": "trainframe.fileio",
    "Trainer": "trainframe.engine.loop",
    **{name: "trainframe.protocols" for name in _PROTOCOLS},
}

__all__ = ["hookimpl", "__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainframe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})
