"""``trainframe export --format hf``: a checkpoint as a directory ``transformers`` loads with
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` (no remote code),
and its upload to the Hugging Face Hub.

The directory holds::

    config.json              transformers' config (Arcee, Llama or Qwen3 family: model/hf.py)
    generation_config.json   bos/eos/pad ids
    model.safetensors        the weights under transformers' names
    tokenizer.json           the tokenizer for ``tokenizers`` (same ids as trainframe's)
    tokenizer_config.json    PreTrainedTokenizerFast, special tokens, model_max_length
    special_tokens_map.json
    trainframe.json          trainframe's manifest (config.json is transformers'); layout "hf"
    run_config.yaml          the run's resolved config
    tokenizer/               files trainframe's own tokenizer needs, when not tokenizer.json itself
    README.md                a model card

``trainframe generate``, ``eval`` and ``load_export`` read it like any export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from safetensors.torch import save_file

from trainframe.errors import UserError
from trainframe.fileio import atomic_dir
from trainframe.model.hf import ARCHITECTURES, hf_config, hf_model_type, to_hf_state
from trainframe.protocols import SupportsHfTokenizer

HF_MANIFEST = "trainframe.json"
HF_WEIGHTS = "model.safetensors"


def _hf_tokenizer(tokenizer, name: str) -> tuple[str, dict[str, str]]:
    if not isinstance(tokenizer, SupportsHfTokenizer):
        reason = getattr(tokenizer, "hf_unsupported", None) or (
            f"{type(tokenizer).__name__} has no hf_tokenizer() giving a tokenizer.json (docs/plugins.md)")
        raise UserError(f"--format hf: tokenizer '{name}' has no transformers form: {reason}; "
                        "export with --format trainframe")
    return tokenizer.hf_tokenizer()


def check_exportable(cfg, model, tokenizer, run_dir: Path) -> str:
    """The transformers model_type of this run, or one UserError line saying what does not map."""
    from trainframe.model import ModelConfig

    model_name, _ = cfg.component("model")
    if model_name != "gpt" or not isinstance(getattr(model, "config", None), ModelConfig):
        raise UserError(f"--format hf: {run_dir}: model '{model_name}' is not trainframe's gpt; only gpt "
                        "models map to transformers classes")
    try:
        model_type = hf_model_type(model.config)
    except ValueError as e:
        raise UserError(f"--format hf: {run_dir}: {e}") from None
    _hf_tokenizer(tokenizer, cfg.component("tokenizer")[0])
    return model_type


def _write_tokenizer(tokenizer, name: str, context: int, tmp: Path) -> dict[str, int | None]:
    text, specials = _hf_tokenizer(tokenizer, name)
    (tmp / "tokenizer.json").write_text(text, encoding="utf-8")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context,
        "bos_token": specials.get("bos_token"), "eos_token": specials.get("eos_token"),
        "pad_token": specials.get("pad_token"),
        # trainframe adds no BOS/EOS when encoding and reads "<|eos|>" in a text as text
        "add_bos_token": False, "add_eos_token": False, "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (tmp / "special_tokens_map.json").write_text(json.dumps(
        {k: v for k, v in specials.items() if v is not None}, indent=2) + "\n")
    return {f"{k.removesuffix('_token')}_id": getattr(tokenizer, f"{k.removesuffix('_token')}_id", None)
            for k in ("bos_token", "eos_token", "pad_token")}


def _card(manifest: dict, run_name: str) -> str:
    m, hf = manifest["model"], manifest["hf"]
    return "\n".join([
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [trainframe]", "---", "",
        f"# {run_name}", "",
        (f"A {manifest['parameters']:,}-parameter decoder-only language model trained with trainframe "
         f"(`{manifest['checkpoint']['file']}`, step {manifest['checkpoint']['step']} of the run `{run_name}`), "
         f"in the layout of transformers' `{hf['architecture']}`."), "",
        "| | |", "|---|---|",
        *(f"| {k} | {m[k]} |" for k in ("d_model", "n_layer", "n_head", "n_kv_head", "mlp", "mlp_hidden", "context",
                                        "vocab_size", "qk_norm", "tie_embeddings") if k in m),
        f"| tokenizer | {manifest['tokenizer']['name']} |", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained('THIS_DIR')",
        "model = AutoModelForCausalLM.from_pretrained('THIS_DIR')",
        "ids = tok('To be', return_tensors='pt').input_ids",
        "print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))",
        "```", "",
        "`trainframe generate THIS_DIR` and `trainframe eval THIS_DIR` read it too; `trainframe.json` is "
        "trainframe's manifest, `run_config.yaml` the training run's config.", "",
    ])


def export_hf(run_dir: Path, which: str, out: Path, *, force: bool = False, dtype: str = "float32") -> dict:
    """Write the transformers export of ``run_dir``'s checkpoint ``which`` to ``out``; its manifest."""
    from trainframe.runs import load_run
    from trainframe.export import _check_out, is_export

    run_dir, out = Path(run_dir), Path(out)
    if is_export(run_dir):
        raise UserError(f"{run_dir}: already an export; export reads a run directory")
    _check_out(out, force)
    cfg, tokenizer, model, ckpt_path, loop = load_run(run_dir, which, "cpu")
    checkpoint = {"file": ckpt_path.name, "step": loop.get("step"),
                  "best_val_loss": loop.get("best_val") if loop.get("best_val", float("inf")) < float("inf")
                  else None}
    return write_hf(out, cfg, tokenizer, model, checkpoint, run_dir.resolve().name, source=run_dir, dtype=dtype)


def write_hf(out: Path, cfg, tokenizer, model, checkpoint: dict, run_name: str, *, source: Path,
             dtype: str = "float32") -> dict:
    """The transformers export of a loaded (config, tokenizer, model), written whole into ``out``
    (``atomic_dir``); ``checkpoint``: file, step, best_val_loss of the weights. Its manifest."""
    from trainframe.export import DTYPES, FORMAT, FORMAT_VERSION, _export_tokenizer, _umask, export_run_config, \
        without_init_from

    model_type = check_exportable(cfg, model, tokenizer, source)
    mcfg = model.config
    fields = without_init_from(mcfg.model_dump(mode="json"))
    torch_dtype = DTYPES[dtype]
    tensors = {k: t.detach().to("cpu", torch_dtype).contiguous().clone()
               for k, t in to_hf_state(model.state_dict(), mcfg).items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_dir(out, "the export", size) as tmp:
        save_file(tensors, tmp / HF_WEIGHTS, metadata={"format": "pt"})
        ids = _write_tokenizer(tokenizer, cfg.component("tokenizer")[0], mcfg.context, tmp)
        config = hf_config(mcfg, dtype=dtype, **ids)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
        parameters = sum(p.numel() for p in model.parameters())
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "layout": "hf",
            "hf": {"architecture": ARCHITECTURES[model_type], "model_type": model_type},
            "architecture": cfg.component("model")[0], "preset": mcfg.preset, "model": fields,
            "parameters": parameters, "dtype": dtype, "checkpoint": checkpoint, "bf16_bytes": 2 * parameters,
            "files": {HF_WEIGHTS: (tmp / HF_WEIGHTS).stat().st_size},
        }
        run_config = export_run_config(cfg, fields)
        run_config["tokenizer"], manifest["tokenizer_files"] = _export_tokenizer(tokenizer, run_config["tokenizer"], tmp)
        _share_tokenizer_json(run_config["tokenizer"], tmp)
        manifest["tokenizer"] = run_config["tokenizer"]
        (tmp / "run_config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        (tmp / HF_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "README.md").write_text(_card(manifest, run_name))
        mode = 0o666 & ~_umask()
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(mode)
    return manifest


def _share_tokenizer_json(section: dict, tmp: Path) -> None:
    """A copied tokenizer file identical to the top-level tokenizer.json (a BPE's) is dropped and
    the config points at the top-level one: one file, read by transformers and trainframe alike."""
    shared = tmp / "tokenizer.json"
    for key, value in list(section.items()):
        if isinstance(value, str) and value.startswith("tokenizer/"):
            copy = tmp / value
            if copy.is_file() and copy.read_bytes() == shared.read_bytes():
                copy.unlink()
                section[key] = "tokenizer.json"
    folder = tmp / "tokenizer"
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


# ------------------------------------------------------------------------------------ the Hub
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_repo_id(repo: str) -> None:
    if not _REPO_ID.match(repo) or len(repo) > 96:
        raise UserError(f"--push-to-hub: expected a Hub repository id OWNER/NAME (letters, digits, '-', '_', '.'), "
                        f"got '{repo}'")


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload ``folder`` to the model repository ``repo`` (created if missing); its URL. Any failure
    (no huggingface_hub, no network, no token, no permission) is one UserError line."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UserError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="Upload trainframe export")
    except Exception as e:  # noqa: BLE001 - network, auth and HTTP errors of huggingface_hub and its client
        raise UserError(f"--push-to-hub {repo}: upload failed: {_first_line(e)}") from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"
