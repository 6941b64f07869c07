"""Placeholder: replaced by the full config module."""
from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    """Base of every component's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
