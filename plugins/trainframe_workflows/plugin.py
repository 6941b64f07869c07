"""Registers the workflow tokenizers, the ``workflows`` dataset, the workflow-model presets, the
``tokenizer check`` and ``eval-workflows`` and ``eval-completion`` commands and the ``schema``
tokenizer trainer."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

import trainframe
from trainframe.config import ComponentConfig
from trainframe.errors import UserError
from trainframe.fileio import relative_note

from .cli import check_args, check_main, schema_train, schema_train_args
from .dataset import WorkflowsConfig, build_workflows
from .eval_completion import eval_completion_args, eval_completion_main
from .evaluate import eval_args, eval_main
from .tct import TctConfig, build_tct_tokenizer


class SchemaTokenizerConfig(ComponentConfig):
    """``schema``: a built-in name (github-workflow) or a JSON Schema file.
    ``vocab``: a vocabulary file from ``trainframe tokenizer train``; default: the shipped one."""

    # "schema" would shadow a pydantic BaseModel attribute: keep it as the alias users write.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_name: str = Field("github-workflow", alias="schema",
                             description="a built-in schema name (github-workflow) or a JSON Schema file")
    vocab: str | None = Field(None, description="a vocabulary file from trainframe tokenizer train; "
                                                "null = the shipped one")


# The workflow model trains on a small corpus, so the whole family keeps the dropout the issue
# gives for `small`. Untied embeddings: with an 8192 vocab the head is cheap and `small` lands
# on the intended ~20M only untied. Parameter counts are in docs/models.md.
_WORKFLOW = {"vocab_size": 8192, "mlp": "relu2", "dropout": 0.2, "tie_embeddings": False}
MODEL_PRESETS = {
    "small": {**_WORKFLOW, "d_model": 384, "n_layer": 8, "n_head": 6, "context": 512},
    "medium-small": {**_WORKFLOW, "d_model": 512, "n_layer": 8, "n_head": 8, "context": 512},
    "medium-512": {**_WORKFLOW, "d_model": 768, "n_layer": 10, "n_head": 12, "context": 512},
    "medium": {**_WORKFLOW, "d_model": 768, "n_layer": 10, "n_head": 12, "context": 1024},
    "large-512": {**_WORKFLOW, "d_model": 1024, "n_layer": 12, "n_head": 16, "context": 512},
    "large": {**_WORKFLOW, "d_model": 1024, "n_layer": 12, "n_head": 16, "context": 1024},
}


def build_schema_tokenizer(cfg: SchemaTokenizerConfig):
    return make_schema_tokenizer(cfg.schema_name, cfg.vocab)


def make_schema_tokenizer(schema: str, vocab: str | None = None):
    """Build a SchemaTokenizer, turning bad names and files into one-line UserErrors."""
    from .schema_tokenizer import SchemaNotFound, SchemaTokenizer
    from .schema_tokenizer.regex_dfa import Unsupported

    if vocab is not None and not Path(vocab).is_file():
        raise UserError(f"tokenizer.vocab: {vocab}: no such file{relative_note(vocab)}; expected a file written by "
                        "`trainframe tokenizer train`")
    try:
        return SchemaTokenizer(schema, vocab=vocab)
    except SchemaNotFound as e:
        raise UserError(f"tokenizer.schema: {e}") from None
    except Unsupported as e:
        raise UserError(f"tokenizer.schema: {schema}: unsupported schema construct: {e}") from None
    except (ValueError, KeyError) as e:
        raise UserError(f"tokenizer.vocab: {vocab}: {e}") from None


@trainframe.hookimpl
def trainframe_register(registry):
    registry.add("tokenizer", "schema", build_schema_tokenizer, SchemaTokenizerConfig,
                 help="schema-aware tokenizer compiled from a JSON Schema (default: GitHub workflows)")
    registry.add("tokenizer", "tct", build_tct_tokenizer, TctConfig,
                 help="the compiled tct_github_workflow wheel, when installed")
    registry.add("dataset", "workflows", build_workflows, WorkflowsConfig,
                 help="GitHub workflows: cached tokens, split by repository, offset/prefix/FIM windows")
    for name, fields in MODEL_PRESETS.items():
        registry.add_model_preset(name, fields)
    registry.add_command("eval-workflows", run=eval_main, add_arguments=eval_args,
                         help="validity of generated workflows: YAML, schema, on/jobs, distinct, actionlint")
    registry.add_command("eval-completion", run=eval_completion_main, add_arguments=eval_completion_args,
                         help="held-out loss, completion at job/step/with cut points, and infill of steps and jobs")
    registry.add_command("tokenizer check", run=check_main, add_arguments=check_args,
                         help="encode a workflow collection: validity, round trip, tokens, speed")
    registry.add_tokenizer_trainer("schema", schema_train, schema_train_args,
                                   help="dictionary + BPE merges for the schema tokenizer (--data FILE)")
