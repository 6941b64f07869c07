"""``trainframe export``: one checkpoint of a run as a self-contained directory, and its loader.

An export directory holds::

    config.json                 format, architecture (model section with every field), preset, sizes
    model.safetensors           the model's weights (tied weights stored once, see metadata "tied")
    model.ternary.safetensors   BitLinear models only: 2-bit packed ternary weights + float32 scales
    run_config.yaml             the run's resolved config (for `trainframe eval`'s dataset)
    tokenizer/                  whatever files the tokenizer needs (none for the byte tokenizer)
    README.md                   what it is and how to use it

``load_export`` rebuilds (run config, tokenizer, model) from it; with ``packed=True`` the BitLinear
weights come from the packed file instead and the forward pass gives identical outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from trainframe.config import load_raw, resolve
from trainframe.errors import UserError
from trainframe.fileio import atomic_dir
from trainframe.protocols import SupportsSave
from trainframe.model.bitlinear import (
    BitLinear,
    dequantize,
    pack_ternary,
    ternarize,
    unpack_ternary,
)

FORMAT = "trainframe-export"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
TERNARY = "model.ternary.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_export(path: Path) -> bool:
    return _read_manifest(path) is not None


def _read_manifest(path: Path) -> dict | None:
    """The manifest: config.json of a trainframe-layout export, trainframe.json of a transformers
    one (``--format hf``: config.json is transformers' there)."""
    for name in ("config.json", "trainframe.json"):
        try:
            data = json.loads((Path(path) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return data
    return None


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


# ------------------------------------------------------------------------------------ writing
def _unique_tensors(state: dict, dtype: torch.dtype, skip=()) -> tuple[dict, dict]:
    """(name -> tensor, alias -> name) with tensors that share storage (tied weights) stored once:
    safetensors refuses shared tensors."""
    tensors, tied, seen = {}, {}, {}
    for name, t in state.items():
        if name in skip:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
    return tensors, tied


def _ternary_state(model, dtype: torch.dtype) -> tuple[dict, dict, dict]:
    """Packed BitLinear weights plus every other tensor; (tensors, metadata, size figures)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}
    tensors, tied = _unique_tensors(model.state_dict(), dtype, skip={f"{n}.weight" for n in layers})
    shapes, n_weights, packed_bytes = {}, 0, 0
    for name, layer in layers.items():
        t, scale = ternarize(layer.weight, layer.group_size)
        tensors[f"{name}.ternary"] = pack_ternary(t)
        tensors[f"{name}.scale"] = scale.contiguous()
        shapes[name] = list(t.shape)
        n_weights += t.numel()
        packed_bytes += tensors[f"{name}.ternary"].numel() + scale.numel() * 4
    meta = {"format": FORMAT, "tied": json.dumps(tied), "ternary_shapes": json.dumps(shapes)}
    sizes = {"layers": len(layers), "weights": n_weights, "packed_bytes": packed_bytes,
             "bf16_bytes": 2 * n_weights, "bits_per_weight": 8 * packed_bytes / max(n_weights, 1)}
    return tensors, meta, sizes


def _export_tokenizer(tokenizer, section: dict, out: Path) -> tuple[dict, list[str]]:
    """The tokenizer section pointing at files copied under ``out/tokenizer``, and those keys.

    A tokenizer with ``save(directory) -> {config key: file name}`` writes its own files; otherwise
    every config value naming an existing file (a vocabulary, a tokenizer.json) is copied.
    """
    section = dict(section)
    tok_dir = out / "tokenizer"
    tok_dir.mkdir()
    if isinstance(tokenizer, SupportsSave):
        files = tokenizer.save(tok_dir) or {}
    else:
        files = {}
        for key, value in section.items():
            if key != "name" and isinstance(value, str) and Path(value).is_file():
                shutil.copy2(value, tok_dir / Path(value).name)
                files[key] = Path(value).name
    for key, name in files.items():
        section[key] = f"tokenizer/{name}"
    if not any(tok_dir.iterdir()):
        tok_dir.rmdir()
    return section, sorted(files)


def _check_out(out: Path, force: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    if not is_export(out):
        raise UserError(f"--out: {out} is not empty and is not a trainframe export; choose another directory")
    if not force:
        raise UserError(f"--out: {out} already holds an export; add --force to replace it")


def _readme(manifest: dict, run_name: str) -> str:
    m = manifest["model"]
    lines = [
        f"# {run_name}",
        "",
        (f"A `{manifest['architecture']}` language model exported by trainframe from `{manifest['checkpoint']['file']}` "
        f"(step {manifest['checkpoint']['step']}) of the run `{run_name}`."),
        "",
        "| | |", "|---|---|",
        f"| preset | {manifest['preset'] or 'none'} |",
        f"| parameters | {manifest['parameters']:,} |",
    ]
    for key in ("d_model", "n_layer", "n_head", "context", "vocab_size", "mlp"):
        if key in m:
            lines.append(f"| {key} | {m[key]} |")
    if m.get("bitlinear"):
        group = m.get("bitlinear_group_size")
        lines.append(f"| BitLinear | ternary block linears, scale per {f'{group} inputs' if group else 'output row'} |")
    lines.append(f"| tokenizer | {manifest['tokenizer']['name']} |")
    if manifest["checkpoint"].get("best_val_loss") is not None:
        lines.append(f"| best val loss in the run | {manifest['checkpoint']['best_val_loss']:.4f} |")
    lines += ["", "## Files", "", (f"- `{WEIGHTS}`: weights in {manifest['dtype']}"
              f" ({_mb(manifest['files'][WEIGHTS])})")]
    if TERNARY in manifest["files"]:
        t = manifest["ternary"]
        lines.append(f"- `{TERNARY}`: the {t['layers']} BitLinear matrices packed to 2 bits per weight plus "
                     f"float32 scales ({t['bits_per_weight']:.2f} bits per weight, {_mb(t['packed_bytes'])} against "
                     f"{_mb(t['bf16_bytes'])} in bf16); other tensors as in `{WEIGHTS}` "
                     f"({_mb(manifest['files'][TERNARY])} in all)")
    lines += [
        "- `config.json`: architecture and sizes; `run_config.yaml`: the training run's config",
        "- `tokenizer/`: tokenizer files, when the tokenizer needs any",
        "",
        "## Use",
        "",
        "```bash",
        "trainframe generate THIS_DIR --prompt 'Once upon a time' --max-tokens 100",
        "trainframe eval THIS_DIR                 # loss, perplexity, bits per character on the run's val split",
        "```",
        "",
        "```python",
        "from trainframe.export import load_export",
        "cfg, tokenizer, model = load_export('THIS_DIR')              # packed=True: from the ternary file",
        "```",
        "",
    ]
    return "\n".join(lines)


def export_run(run_dir: Path, which: str, out: Path, *, force: bool = False, dtype: str = "float32") -> dict:
    """Write an export of ``run_dir``'s checkpoint ``which`` to ``out``; returns its config.json."""
    from trainframe.runs import load_run

    run_dir, out = Path(run_dir), Path(out)
    if is_export(run_dir):
        raise UserError(f"{run_dir}: already an export; export reads a run directory")
    _check_out(out, force)
    cfg, tokenizer, model, ckpt_path, loop = load_run(run_dir, which, "cpu")
    torch_dtype = DTYPES[dtype]
    # About what the files take (tied weights counted twice; a ternary copy adds less than this).
    size = sum(t.numel() for t in model.state_dict().values()) * torch_dtype.itemsize
    with atomic_dir(out, "the export", size) as tmp:
        tensors, tied = _unique_tensors(model.state_dict(), torch_dtype)
        save_file(tensors, tmp / WEIGHTS, metadata={"format": FORMAT, "tied": json.dumps(tied)})
        files = {WEIGHTS: (tmp / WEIGHTS).stat().st_size}
        model_name, model_cfg = cfg.component("model")
        if hasattr(getattr(model, "config", None), "model_dump"):
            model_cfg = model.config  # gpt's: vocab_size filled from the tokenizer
        fields = model_cfg.model_dump(mode="json")
        fields = without_init_from(fields)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "architecture": model_name, "preset": fields.get("preset"), "model": fields,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": dtype,
            "checkpoint": {"file": ckpt_path.name, "step": loop.get("step"),
                           "best_val_loss": loop.get("best_val") if loop.get("best_val", float("inf")) < float("inf")
                           else None},
        }
        if any(isinstance(m, BitLinear) for m in model.modules()):
            packed, meta, sizes = _ternary_state(model, torch_dtype)
            save_file(packed, tmp / TERNARY, metadata=meta)
            files[TERNARY] = (tmp / TERNARY).stat().st_size
            manifest["ternary"] = sizes
        manifest["bf16_bytes"] = 2 * manifest["parameters"]
        manifest["files"] = files
        run_config = export_run_config(cfg, fields)
        run_config["tokenizer"], manifest["tokenizer_files"] = _export_tokenizer(tokenizer, run_config["tokenizer"], tmp)
        manifest["tokenizer"] = run_config["tokenizer"]
        (tmp / "run_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        (tmp / "config.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(manifest, run_dir.resolve().name))
        mode = 0o666 & ~_umask()  # safetensors writes owner-only files; an export is meant to be shared
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(mode)
    return manifest


def without_init_from(fields: dict) -> dict:
    """Model fields without ``init_from``: an export holds its weights, so it never reads the
    checkpoint a run started from (which may be gone)."""
    return {**fields, "init_from": None} if fields.get("init_from") else fields


def export_run_config(cfg, fields: dict) -> dict:
    """The run's config for run_config.yaml, its model section the resolved one when the run
    started from ``init_from`` (whose shape came from that checkpoint's config.json)."""
    run_config = cfg.to_dict()
    if (run_config.get("model") or {}).get("init_from"):
        run_config["model"] = {"name": cfg.component("model")[0], **fields}
    return run_config


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------ loading
def load_export(path: Path, device: str = "cpu", packed: bool = False):
    """(run config, tokenizer, model in eval mode) from an export directory."""
    from trainframe.engine.build import build_tokenizer, pick_device
    from trainframe.plugins import current

    path = Path(path)
    manifest = _read_manifest(path)
    if manifest is None:
        raise UserError(f"{path}: not an export directory (no trainframe config.json)")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: export format {manifest['format_version']} is newer than this trainframe reads "
                        f"({FORMAT_VERSION}); upgrade trainframe")
    plugins = current()
    source = path / "run_config.yaml"
    data, origins = load_raw(source)
    for key in manifest.get("tokenizer_files", []):  # files inside the export, wherever it now lives
        data["tokenizer"][key] = str(path.resolve() / manifest["tokenizer"][key])
    cfg = resolve(data, plugins.registry, origins, str(source))
    tokenizer = build_tokenizer(cfg, plugins)
    component = plugins.registry.get("model", manifest["architecture"])
    try:
        model = component.factory(component.config.model_validate(manifest["model"]),
                                  vocab_size=tokenizer.vocab_size())
    except ValueError as e:
        raise UserError(f"{path}/config.json: model: {e}") from None
    if manifest.get("layout") == "hf":  # transformers' names (trainframe export --format hf)
        from trainframe.model.hf import load_hf_weights

        if packed:
            raise UserError(f"--packed: {path} is a transformers export; packed ternary weights are only in "
                            "exports of BitLinear models in the trainframe layout")
        load_hf_weights(model, path, _read_safetensors(path / WEIGHTS)[0], where=str(path / WEIGHTS))
    elif packed:
        _load_packed(model, path)
    else:
        _load_weights(model, path / WEIGHTS)
    return cfg, tokenizer, model.to(pick_device(device)).eval()


def _read_safetensors(file: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(file)), meta
    except FileNotFoundError:
        raise UserError(f"{file}: missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file}: unreadable safetensors file ({str(e).splitlines()[0][:120]})") from None


def _load_weights(model, file: Path) -> None:
    tensors, meta = _read_safetensors(file)
    for alias, name in json.loads(meta.get("tied", "{}")).items():
        tensors[alias] = tensors[name]
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise UserError(f"{file}: weights do not fit the model in config.json ({str(e).splitlines()[1].strip()})") from None


def _load_packed(model, path: Path) -> None:
    file = path / TERNARY
    if not file.exists():
        raise UserError(f"{path}: no {TERNARY} (only BitLinear models have packed ternary weights)")
    tensors, meta = _read_safetensors(file)
    shapes = json.loads(meta.get("ternary_shapes", "{}"))
    state = {k: v for k, v in tensors.items() if not k.endswith((".ternary", ".scale"))}
    for alias, name in json.loads(meta.get("tied", "{}")).items():
        state[alias] = state[name]
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}
    if set(layers) != set(shapes):
        raise UserError(f"{file}: packed layers do not match the model in config.json")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {f"{n}.weight" for n in layers}:
        raise UserError(f"{file}: tensors do not fit the model in config.json")
    with torch.no_grad():
        for name, layer in layers.items():
            t = unpack_ternary(tensors[f"{name}.ternary"], tuple(shapes[name]))
            layer.weight.copy_(dequantize(t, tensors[f"{name}.scale"]))
            layer.prequantized = True


def export_size_line(manifest: dict) -> str:
    line = (f"{WEIGHTS}: {_mb(manifest['files'][WEIGHTS])} ({manifest['dtype']}); "
            f"the same model in bf16: {_mb(manifest['bf16_bytes'])}")
    if "ternary" in manifest:
        t = manifest["ternary"]
        line += (f"\n{TERNARY}: {_mb(manifest['files'][TERNARY])}; its {t['layers']} BitLinear matrices take "
                 f"{_mb(t['packed_bytes'])} ({t['bits_per_weight']:.2f} bits/weight) against {_mb(t['bf16_bytes'])} "
                 f"in bf16 ({t['bf16_bytes'] / t['packed_bytes']:.1f}x smaller)")
    return line
