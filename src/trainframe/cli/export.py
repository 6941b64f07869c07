"""``trainframe export RUN_DIR --out DIR``: a checkpoint as an export directory (trainframe's layout,
or transformers' with ``--format hf``, optionally pushed to the Hub)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from trainframe.errors import UserError
from trainframe.export import DTYPES, export_run, export_size_line
from trainframe.hf_export import HF_WEIGHTS, check_repo_id, export_hf, push_to_hub


def export_args(p) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory")
    p.add_argument("--out", type=Path, help="the export directory to write (required unless --push-to-hub)")
    p.add_argument("--format", choices=["trainframe", "hf"], default="trainframe",
                   help="trainframe: trainframe's layout (default); hf: a directory transformers loads with "
                        "AutoModelForCausalLM.from_pretrained (Arcee, Llama or Qwen3 class, docs/export.md)")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None,
                   help="--format hf: also upload the export to this Hugging Face Hub model repository (created "
                        "if missing; your `hf auth login` token); without --out it is written to a temporary dir")
    p.add_argument("--private", action="store_true", help="--push-to-hub: create the repository private")
    p.add_argument("--checkpoint", default="latest", help="best, latest or a step number (default: latest)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="dtype of model.safetensors (default float32: the exact trained weights)")
    p.add_argument("--force", action="store_true", help="replace --out when it holds a previous export")


def export_main(args) -> int:
    if args.push_to_hub and args.format != "hf":
        raise UserError("--push-to-hub: uploads transformers exports; add --format hf")
    if args.out is None and not args.push_to_hub:
        raise UserError("--out: required (the export directory to write), unless --push-to-hub uploads it")
    if args.format == "hf":
        return _export_hf(args)
    manifest = export_run(args.run_dir, args.checkpoint, args.out, force=args.force, dtype=args.dtype)
    print(f"exported {args.run_dir} ({manifest['checkpoint']['file']}, step {manifest['checkpoint']['step']}) "
          f"to {args.out}")
    print(export_size_line(manifest))
    return 0


def _export_hf(args) -> int:
    """``--format hf``: write the transformers export, upload it with ``--push-to-hub``."""
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)
    if args.out is None:  # upload only: write into a temporary directory
        with tempfile.TemporaryDirectory(prefix="trainframe-hf-") as tmp:
            manifest = export_hf(args.run_dir, args.checkpoint, Path(tmp) / "export", dtype=args.dtype)
            url = push_to_hub(Path(tmp) / "export", args.push_to_hub, args.private)
    else:
        manifest = export_hf(args.run_dir, args.checkpoint, args.out, force=args.force, dtype=args.dtype)
        print(f"exported {args.run_dir} ({manifest['checkpoint']['file']}, step {manifest['checkpoint']['step']}) "
              f"to {args.out} as {manifest['hf']['architecture']} ({args.dtype}, "
              f"{manifest['files'][HF_WEIGHTS] / 1e6:.2f} MB)")
        url = push_to_hub(args.out, args.push_to_hub, args.private) if args.push_to_hub else None
    if url:
        print(f"uploaded to {args.push_to_hub}: {url}")
    return 0
