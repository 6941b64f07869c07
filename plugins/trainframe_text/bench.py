"""``trainframe data bench``: tokens per second the training-time loader delivers (CPU side)."""

from __future__ import annotations

import sys
import time

from trainframe.errors import UserError

H100_100M_TOKENS_PER_S = 450_000  # what the 100M model consumes on one H100 (bf16, compiled)


def bench_args(p) -> None:
    p.add_argument("config", help="a run config with a prepared `text` dataset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the run config")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default 16)")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: the config's model.context)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long to draw batches (default 3)")


def bench_main(args) -> int:
    from trainframe.config import load_config
    from trainframe.engine.build import build_tokenizer
    from trainframe.plugins import current

    from .dataset import build_text

    if args.batch_size < 1 or (args.context is not None and args.context < 1) or args.seconds <= 0:
        raise UserError("--batch-size, --context, --seconds: expected positive numbers")
    plugins = current()
    cfg = load_config(args.config, args.overrides, plugins.registry)
    name, data_cfg = cfg.component("data")
    if name != "text":
        raise UserError(f"{args.config}: data.name: `data bench` reads `text` datasets, got '{name}'")
    _, model_cfg = cfg.component("model")
    context = args.context or getattr(model_cfg, "context", None)
    if context is None:
        raise UserError(f"--context: {args.config} gives no model.context; pass --context N")
    tokenizer = build_tokenizer(cfg, plugins)
    t0 = time.perf_counter()
    data = build_text(data_cfg, tokenizer=tokenizer, context=context, seed=cfg.seed)
    open_s = time.perf_counter() - t0
    data.next_batch(args.batch_size)  # first touch of the memmaps
    batches, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.seconds:
        data.next_batch(args.batch_size)
        batches += 1
    rate = batches * args.batch_size * context / elapsed
    print(f"opened {len(data.sources)} sources in {open_s:.2f}s; `datasets` imported: "
          f"{'yes' if 'datasets' in sys.modules else 'no'}")
    print(f"loader: {rate:,.0f} tokens/s ({batches:,} batches of {args.batch_size} x {context} in {elapsed:.1f}s, "
          f"one process); {rate / H100_100M_TOKENS_PER_S:.1f}x the ~450k tokens/s the 100M model trains at on an H100")
    return 0
