"""Several torch optimizers over disjoint parameters, presented to the engine as one.

An optimizer factory may return a list of optimizers (Muon for the hidden matrices and AdamW for
the rest, say); ``engine/build.py`` wraps it in a :class:`CombinedOptimizer`, the one place that
does, so the loop, checkpoints and plugins see a single optimizer with the usual interface.
"""

from __future__ import annotations


class CombinedOptimizer:
    """The members' optimizers stepped, zeroed, saved and loaded together.

    ``param_groups`` is the members' own group dicts, concatenated: the engine's per-step
    ``lr`` writes (``base_lr`` x schedule) land in the members. Iterating yields the members, the
    form torch.distributed.checkpoint's ``get/set_optimizer_state_dict`` take under FSDP2.

    A NaN/Inf step is skipped by every member together: on the device, through ``found_inf``, when
    every member can (fused AdamW, ``StackedMuon``: see ``skips_on_device`` in engine/nonfinite.py), else by
    the engine's host check of the loss and grad norm.
    """

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)
        if not self.optimizers:
            raise ValueError("an optimizer factory returned an empty list")
        seen = set()
        for opt in self.optimizers:
            for p in (p for g in opt.param_groups for p in g["params"]):
                if id(p) in seen:  # it would be updated twice per step
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} is in more than one optimizer")
                seen.add(id(p))

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        """Per-parameter state (moments) of every member; a read-only view, built on each access."""
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @property
    def found_inf(self):
        return getattr(self.optimizers[0], "found_inf", None)

    @found_inf.setter
    def found_inf(self, flag) -> None:  # the engine's on-device skip flag, for every member
        for opt in self.optimizers:
            opt.found_inf = flag

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        states = state.get("optimizers") if isinstance(state, dict) else None
        if states is None or len(states) != len(self.optimizers):
            saved = "one optimizer" if states is None else f"{len(states)} optimizers"
            raise ValueError(f"the saved optimizer state is of {saved}, this run combines {len(self.optimizers)} "
                             f"({self})")
        for opt, member_state in zip(self.optimizers, states):
            opt.load_state_dict(member_state)

    def __iter__(self):
        return iter(self.optimizers)

    def __repr__(self) -> str:
        return " + ".join(type(opt).__name__ for opt in self.optimizers)

