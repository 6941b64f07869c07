"""What the engine asks of a plugin's components, as runtime-checkable Protocols.

A component never subclasses these: any object with the members is one (duck typing, as before),
and ``isinstance(tokenizer, SupportsAllowedNext)`` is how trainframe asks whether it has an optional
capability. docs/plugins.md documents each member; this module is the same contract in code, for
type checkers and for the probes the engine, the commands and the first-party plugins make.

An ``isinstance`` check looks for the members' names only, never their signatures. It sees what
``hasattr`` sees on Python 3.11; from 3.12 it looks the names up statically, which misses a
``torch.nn.Module``'s submodules (they live in ``_modules``): that is why ``HasBlocks`` is read with
``getattr``, not checked with ``isinstance``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch

    from trainframe.phases import Phase, StepOutcome

# --------------------------------------------------------------------------------- tokenizer


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer has. ``eos_id`` (an int) may be left out by tokenizers whose documents
    end by themselves: generation then stops at ``pad_id``."""

    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> Any: ...  # a str, or no end-of-run text sample

    def vocab_size(self) -> int: ...


@runtime_checkable
class SupportsFingerprint(Protocol):
    """Identifies the tokenizer in token caches: change it whenever the same text would encode differently."""

    def fingerprint(self) -> str: ...


@runtime_checkable
class SupportsSave(Protocol):
    """For ``trainframe export``: write the tokenizer's files into ``directory``, return its config keys."""

    def save(self, directory) -> dict[str, str]: ...


@runtime_checkable
class SupportsHfTokenizer(Protocol):
    """For ``export --format hf``: a ``tokenizers`` tokenizer.json giving the same ids, and the special
    tokens' names. A tokenizer without it may say why in an ``hf_unsupported`` string attribute."""

    def hf_tokenizer(self) -> tuple[str, dict[str, str]]: ...


@runtime_checkable
class SupportsAllowedNext(Protocol):
    """For ``generate --constrained``: the tokens that keep a document valid after ``prefix_ids``
    (a bool mask over the vocabulary; ``budget=N`` when the tokenizer also has ``closing_cost``)."""

    def allowed_next(self, prefix_ids: Sequence[int], *args, **kwargs) -> Any: ...


@runtime_checkable
class SupportsClosingCost(Protocol):
    """The fewest tokens that complete the document after ``prefix_ids``: generation keeps room for them."""

    def closing_cost(self, prefix_ids: Sequence[int]) -> int: ...


@runtime_checkable
class SupportsBudgetLimited(Protocol):
    """Whether a constrained sample was closed early because its token budget ran out."""

    def budget_limited(self, prompt: Sequence[int], new: Sequence[int], budget: int) -> bool: ...


@runtime_checkable
class SupportsDecodeFile(Protocol):
    """A generated document as a file's text and suffix (``ValueError`` when ``ids`` do not decode)."""

    def decode_file(self, ids: Sequence[int]) -> tuple[str, str]: ...


@runtime_checkable
class SupportsCompleteTyped(Protocol):
    """The object behind ``generate --prefix-from FILE``."""

    def complete_typed(self, text: str) -> Any: ...


@runtime_checkable
class SupportsInfill(Protocol):
    """The object behind ``generate --infill FILE --at PATH``."""

    def infill(self, text: str, at: str, layout: Any, max_tokens: int) -> Any: ...


# ----------------------------------------------------------------------------------- dataset


@runtime_checkable
class Dataset(Protocol):
    """What every dataset has; ``state_dict``/``load_state_dict`` carry the read position, so a
    resumed run draws exactly the batches the uninterrupted one would have."""

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, ...]: ...

    def val_batches(self, batch_size: int, max_batches: int) -> Iterable[tuple[torch.Tensor, ...]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class HasCharsPerToken(Protocol):
    """Characters of source text per token in the validation split: evaluation then reports ``val_bpc``."""

    chars_per_token: float


@runtime_checkable
class SupportsHoldOut(Protocol):
    """Rows of the training data set aside for good: a verification set training never reads.

    ``hold_out(rows)`` removes ``rows`` rows per rank from every rank's training stream (a seeded
    pick: the same for the same data, seed and ``rows``) and returns this rank's as one batch, in
    the form of its validation batches. A dataset holds out once; the number held is part of its
    state, so a resumed run reads the same stream. ``Trainer.fit`` calls controllers' ``start``
    before the first batch is drawn, so nothing held out there was ever trained on."""

    def hold_out(self, rows: int) -> tuple[torch.Tensor, ...]: ...


# ------------------------------------------------------------------------------------- model


class ModelConfigLike(Protocol):
    context: int  # the sequence length, passed to the dataset factory


@runtime_checkable
class Model(Protocol):
    """What every model has besides being a ``torch.nn.Module``: ``forward(inputs, targets) -> loss``
    and a ``config`` whose ``context`` is the sequence length."""

    config: ModelConfigLike

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, *args, **kwargs) -> torch.Tensor: ...


@runtime_checkable
class SupportsFlopsPerToken(Protocol):
    """Training FLOPs per token, for MFU."""

    def flops_per_token(self) -> int: ...


@runtime_checkable
class SupportsGenerate(Protocol):
    """Sampling, for the end-of-run sample and ``trainframe generate`` (see ``trainframe.model.GPT.generate``)."""

    def generate(self, idx: torch.Tensor, max_new_tokens: int, *args, **kwargs) -> torch.Tensor: ...


@runtime_checkable
class SupportsSummary(Protocol):
    """One line for the start of ``trainframe train``."""

    def summary(self) -> str: ...


@runtime_checkable
class SupportsTrainingMemory(Protocol):
    """Activation checkpointing and a chunked loss, set by the engine before torch.compile."""

    def set_training_memory(self, activation_checkpointing: str = "none", loss_chunk: int | None = None) -> None: ...


class HasBlocks(Protocol):
    """The repeated layers: under FSDP2 each one is sharded on its own before the root module (so
    its parameters are gathered one block at a time). Without ``blocks`` the whole model is one unit."""

    blocks: Iterable[torch.nn.Module]


# ---------------------------------------------------------------------------- phase controller


@runtime_checkable
class Controller(Protocol):
    """The methods of a phase controller, as :class:`trainframe.phases.PhaseController` defines them
    (subclass that: it has every default)."""

    wants_update_norms: bool
    wants_row_losses: bool
    warms_up_itself: bool

    @property
    def wants_host_values(self) -> bool: ...

    def start(self, trainer) -> None: ...

    def decide(self, step: int) -> tuple[Phase, str]: ...

    def batches_for(self, phase: Phase, batches: list) -> list: ...

    def observe(self, outcome: StepOutcome, trainer) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


__all__ = [
    "Tokenizer", "SupportsFingerprint", "SupportsSave", "SupportsHfTokenizer", "SupportsAllowedNext", "SupportsClosingCost",
    "SupportsBudgetLimited", "SupportsDecodeFile", "SupportsCompleteTyped", "SupportsInfill",
    "Dataset", "HasCharsPerToken",
    "Model", "SupportsFlopsPerToken", "SupportsGenerate", "SupportsSummary", "SupportsTrainingMemory", "HasBlocks",
    "Controller",
]
