"""The small-folder recipe: pooling that matches the model, the closed-form head, the validation
split, the token length, early stopping, and never ending worse than the start on validation."""

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from shared.base_models import build_adapted_model, load_tokenizer, model_pooling
from shared.data.batches import make_loader
from shared.errors import LoraXSError
from shared.linear_probe import fit_linear_head, head_inputs, log_loss
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import adapter_state
from shared.personal_training import (
    PersonalTrainingConfig,
    choose_max_length,
    personal_training,
    split_validation,
    validation_score,
)
from shared.pooled_classifier import PooledClassifier
from shared.training import EvalResult, TrainConfig, train


def _toy(n=80, classes=2):
    words = ["good great fine", "bad awful poor", "odd strange weird"][:classes]
    texts = [f"{words[i % classes]} item {i}" for i in range(n)]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % classes for i in range(n)]})


def _sentence_transformers_folder(tiny_bert_dir, tmp_path, mode):
    """The tiny BERT with a sentence-transformers pooling config beside it."""
    folder = tmp_path / f"st-{mode}"
    folder.mkdir()
    for item in Path(tiny_bert_dir).iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": mode == "mean", "pooling_mode_cls_token": mode == "cls"})
    )
    return str(folder)


def test_pooling_is_read_from_the_sentence_transformers_config(tiny_bert_dir, tmp_path):
    assert model_pooling("default") == "mean"  # the packaged all-MiniLM-L6-v2
    assert model_pooling(tiny_bert_dir) == "pooler"  # a plain BERT folder
    assert model_pooling(_sentence_transformers_folder(tiny_bert_dir, tmp_path, "cls")) == "cls"
    assert model_pooling(str(tmp_path / "missing")) == "pooler"


def test_mean_pooled_classifier_matches_an_independent_masked_mean(tiny_bert_dir, tmp_path):
    folder = _sentence_transformers_folder(tiny_bert_dir, tmp_path, "mean")
    model, _ = build_adapted_model(folder, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    assert isinstance(model, PooledClassifier) and model.pooling == "mean"
    plain, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    # the same adapted layers and adapter keys as Hugging Face's classifier: files stay compatible
    lora_names = lambda m: [n for n, _ in m.named_buffers() if "lora" in n]
    assert lora_names(model) == lora_names(plain) and set(adapter_state(model)) == set(adapter_state(plain))
    tokenizer = load_tokenizer(folder)
    batch = tokenizer(["a short one", "a somewhat longer text than the first"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state  # (B, T, H)
        expected = torch.stack([hidden[i, batch["attention_mask"][i].bool()].mean(0) for i in range(2)])
        assert torch.allclose(model.sentence_features(**batch), expected, atol=1e-6)
        # padding does not change a text's logits
        alone = tokenizer(["a short one"], return_tensors="pt")
        assert torch.allclose(model(**alone).logits[0], model(**batch).logits[0], atol=1e-5)


def test_validation_split_is_stratified_seeded_and_disjoint():
    data = _toy(90, classes=3)
    fit, val = split_validation(data, 0.2, seed=3, stratify=True)
    again, _ = split_validation(data, 0.2, seed=3, stratify=True)
    assert fit["text"] == again["text"]
    assert not set(fit["text"]) & set(val["text"]) and len(fit) + len(val) == 90
    assert Counter(val["label"]) == {0: 6, 1: 6, 2: 6}


def test_max_length_follows_the_folder_and_the_model_limit(tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    short = ["two words"] * 20
    long = [" ".join(["word"] * 400)] * 20
    assert choose_max_length(short, tokenizer, PersonalTrainingConfig()) == 32  # the floor
    assert choose_max_length(long, tokenizer, PersonalTrainingConfig()) == 256  # the cap
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    assert choose_max_length(long, tokenizer, PersonalTrainingConfig(), model) == 128  # its positions
    assert choose_max_length(long, tokenizer, PersonalTrainingConfig(max_length=1000), model) == 128


def test_closed_form_head_separates_separable_features():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=generator) * 3
    labels = torch.arange(150) % 3
    features = centers[labels] + torch.randn(150, 16, generator=generator) * 0.5
    head, score = fit_linear_head((features[:100], labels[:100]), (features[100:], labels[100:]), 3)
    assert score == 1.0
    assert head.weight.shape == (3, 16) and head.bias.shape == (3,)
    assert ((features[100:] @ head.weight.T + head.bias).argmax(-1) == labels[100:]).all()


def test_log_loss_is_the_mean_cross_entropy_of_the_head():
    weight, bias = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 0.5])
    features, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, 0])
    logits = features @ weight.T + bias
    expected = -sum(torch.log_softmax(logits[i], -1)[labels[i]] for i in range(3)) / 3
    assert log_loss(weight, bias, features, labels) == pytest.approx(float(expected))
    assert log_loss(weight, bias, features[:0], labels[:0]) == 0.0


def test_select_on_must_be_loss_or_accuracy():
    with pytest.raises(LoraXSError, match="select-on"):
        PersonalTrainingConfig(select_on="f1")


def test_head_inputs_are_what_the_head_sees(tiny_bert_dir):
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    tokenizer = load_tokenizer(tiny_bert_dir)
    loader = make_loader(_toy(8), tokenizer, "seq-cls", 4)
    features, labels = head_inputs(model, loader)
    with torch.no_grad():
        logits = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in loader])
    assert torch.allclose(model.classifier(features), logits, atol=1e-5)
    assert labels.tolist() == _toy(8)["label"]


def test_training_stops_early_after_patience_epochs(tiny_bert_dir):
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    loader = make_loader(_toy(32), load_tokenizer(tiny_bert_dir), "seq-cls", 8, shuffle=True)
    calls = []
    result = train(
        model, loader, TrainConfig(epochs=10, lr=1e-3), after_epoch=lambda step: calls.append(step) or len(calls) == 3
    )
    assert calls == [4, 8, 12] and result.steps == 12


@pytest.mark.parametrize("select_on", ["loss", "accuracy"])
@pytest.mark.parametrize("lr", [5e-3, 3.0])
def test_recipe_never_ends_below_its_start_on_validation(tiny_bert_dir, lr, select_on):
    """Whatever the learning rate (3.0 wrecks training), the kept state scores on validation (in
    the measure it was chosen by) at least what the start did, and is exactly the start when no
    epoch beat it."""
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    tokenizer = load_tokenizer(tiny_bert_dir)
    # float32 passes: the scores below are recomputed by the float32 model (bf16 passes agree only to ~1e-2)
    config = PersonalTrainingConfig(lr=lr, epochs=3, refit_head=False, seed=1, select_on=select_on, bf16=False)
    data = _toy(60)
    result = personal_training(model, data, tokenizer, "seq-cls", config)
    _, val = split_validation(data, config.val_fraction, config.seed, stratify=True)
    assert result.measure == select_on
    score = validation_score(model, make_loader(val, tokenizer, "seq-cls", 64, result.max_length), "cpu", select_on)
    assert score >= result.best_score - 1e-6 and result.best_score >= result.start_score
    assert score == pytest.approx(result.lam_scores.get(result.lam, result.best_score), abs=1e-5)
    assert result.frozen_head_score is not None and result.start_accuracy >= result.frozen_head_score
    if select_on == "loss":  # chosen on loss, the kept adapter still holds the start's validation accuracy
        assert result.kept_accuracy >= result.start_accuracy - 1e-6
    assert 0.0 <= result.kept_accuracy <= 1.0
    if not result.improved:
        assert result.best_epoch == 0
    assert len(result.history) <= 3 and result.num_fit + result.num_val == 60
    assert all(torch.isfinite(v).all() for v in adapter_state(model).values())


@pytest.mark.parametrize("keep_accuracy", [True, False])
def test_on_loss_an_epoch_that_lowers_validation_accuracy_is_not_kept(tiny_bert_dir, monkeypatch, keep_accuracy):
    """Scripted validation results (loss, accuracy): the start, then three epochs. Epochs 1 and
    3 lower the loss but lose accuracy; only epoch 2 both lowers the loss and holds accuracy."""
    import shared.personal_training as recipe_module

    script = iter([(0.70, 0.70), (0.60, 0.60), (0.65, 0.75), (0.50, 0.65)])
    last = [EvalResult(0.0, 0.0, 12)]

    def scripted(*_args, **_kwargs):
        item = next(script, None)  # after the epochs: the kept state's accuracy, the last one scored
        if item is not None:
            last[0] = EvalResult(item[0], item[1], 12)
        return last[0]

    monkeypatch.setattr(recipe_module, "evaluate", scripted)
    monkeypatch.setattr(recipe_module, "linear_head", lambda _model: None)  # no closed-form head
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    config = PersonalTrainingConfig(epochs=3, patience=3, interpolate=False, keep_accuracy=keep_accuracy)
    result = personal_training(model, _toy(60), load_tokenizer(tiny_bert_dir), "seq-cls", config)
    assert result.history == pytest.approx([-0.60, -0.65, -0.50])
    if keep_accuracy:
        assert result.best_epoch == 2 and result.held_back == [1, 3]
        assert result.best_score == pytest.approx(-0.65)
    else:
        assert result.best_epoch == 3 and result.held_back == []
