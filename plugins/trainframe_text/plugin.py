"""Registers the ``text`` dataset, the ``bpe`` tokenizer and its trainer, and the ``data`` commands."""

import trainframe

from .bench import bench_args, bench_main
from .bpe import BpeConfig, build_bpe, train_args, train_main
from .dataset import TextDataConfig, build_text
from .prepare import prepare_args, prepare_main


@trainframe.hookimpl
def trainframe_register(registry):
    registry.add("dataset", "text", build_text, TextDataConfig,
                 help="weighted mixture of HF datasets and local files, from shards `data prepare` writes")
    registry.add("tokenizer", "bpe", build_bpe, BpeConfig, help="byte-level BPE from a tokenizer.json")
    registry.add_tokenizer_trainer("bpe", train_main, train_args,
                                   help="byte-level BPE on a config's data.sources (CONFIG --vocab-size N)")
    registry.add_command("data prepare", prepare_main, prepare_args,
                         help="tokenize a config's text sources into shards (parallel, resumable)")
    registry.add_command("data bench", bench_main, bench_args,
                         help="tokens/s the training-time loader delivers from prepared shards")
