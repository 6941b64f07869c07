"""``trainframe tokenizer train``: learn a tokenizer and write it to one file.

The command is core; what it trains comes from plugins: each ``tokenizer_trainer`` kind
(``registry.add_tokenizer_trainer``) brings its options and its run function, and ``--kind``
(or the config's ``tokenizer.name``) picks one.
"""

from __future__ import annotations

import argparse

from trainframe.config import load_config
from trainframe.errors import UserError
from trainframe.plugins import current


def tokenizer_train_args(p: argparse.ArgumentParser) -> None:
    trainers = current().registry.components["tokenizer_trainer"]
    p.add_argument("config", nargs="?", help="a run config: train the tokenizer it names on its data")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the run config")
    p.add_argument("--kind", choices=sorted(trainers),
                   help="which tokenizer to train (default: the config's tokenizer.name); "
                   + "; ".join(f"{name}: {t.help}" for name, t in sorted(trainers.items())))
    p.add_argument("--data", default=None, help="training corpus, for kinds that read a file instead of a config")
    p.add_argument("--out", default=None, help="file to write (default: where the config or kind says)")
    p.add_argument("--vocab-size", type=int, default=8192, help="total ids, special tokens included (default 8192)")
    for name, trainer in sorted(trainers.items()):
        if trainer.add_arguments:
            trainer.add_arguments(p.add_argument_group(f"--kind {name}"))


def tokenizer_train_main(args: argparse.Namespace) -> int:
    """Run the trainer that ``--kind`` names, or the one for the config's ``tokenizer.name``.
    The trainer receives ``args`` with ``args.run_config`` set (the validated config, or None)."""
    registry = current().registry
    trainers = registry.components["tokenizer_trainer"]
    args.run_config = load_config(args.config, args.overrides, registry) if args.config else None
    kind = args.kind
    if kind is None:
        if args.run_config is None:
            raise UserError("tokenizer train: give a run CONFIG (its tokenizer.name picks the kind) or --kind "
                            f"({', '.join(sorted(trainers)) or 'none registered'})")
        kind, _ = args.run_config.component("tokenizer")
        if kind not in trainers:
            raise UserError(f"{args.config}: tokenizer.name: '{kind}' has no trainer; pass --kind "
                            f"({', '.join(sorted(trainers)) or 'none registered'})")
    return int(registry.get("tokenizer_trainer", kind).factory(args) or 0)
