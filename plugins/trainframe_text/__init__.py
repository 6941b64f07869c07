"""Text data: HF datasets and local files, weighted mixtures, token shards, BPE tokenizers."""
