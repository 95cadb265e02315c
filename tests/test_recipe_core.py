"""The numpy recipe core and its PyTorch backend: the head, AdamW and batches against torch's own,
the cached top blocks against the whole model, the anytime budget, and no torch in the core."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from shared.base_models import build_adapted_model, load_tokenizer
from shared.linear_probe import refit
from shared.loraxs.config import LoraXSConfig
from shared.personal_training import hf_tokenize
from shared.recipe.adamw import AdamW, clip_by_global_norm, warmup_linear
from shared.recipe.config import PersonalTrainingConfig
from shared.recipe.data import Examples, make_batches, split_validation
from shared.recipe.head import fit_head
from shared.recipe.recipe import run_recipe
from shared.recipe.torch_backend import TorchBackend, params_from_model


def _objective(weight, bias, x, y, l2):
    """The head's objective on raw features, written out independently."""
    f = x.astype(np.float64)
    scale = np.sqrt(((f - f.mean(0)) ** 2).mean())
    z = f @ weight.astype(np.float64).T + bias
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + l2 * ((weight.astype(np.float64) * scale) ** 2).sum()


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_numpy_head_reaches_torch_lbfgs_objective(l2):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = (rng.normal(size=(3, 24))[y] + rng.normal(size=(120, 24))).astype(np.float32)
    ours = fit_head(x, y, 3, l2)
    theirs = refit(torch.from_numpy(x), torch.from_numpy(y), 3, l2)
    assert (
        _objective(ours.weight, ours.bias, x, y, l2)
        <= _objective(theirs.weight.numpy(), theirs.bias.numpy(), x, y, l2) + 1e-6
    )


def test_numpy_adamw_with_warmup_and_clipping_matches_torch():
    rng = np.random.default_rng(1)
    start = {"a": rng.normal(size=(2, 3, 3)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) * 3 for k, v in start.items()} for _ in range(6)]
    ours = {k: v.copy() for k, v in start.items()}
    optimizer = AdamW(ours, {"a": 1e-2, "b": 1e-3})
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in start.items()}
    reference = torch.optim.AdamW(
        [{"params": [tensors["a"]], "lr": 1e-2}, {"params": [tensors["b"]], "lr": 1e-3}], weight_decay=0.0
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, lambda s: warmup_linear(s, 2, 6))
    for step, grad in enumerate(grads):
        g = {k: v.copy() for k, v in grad.items()}
        clip_by_global_norm(g, 1.0)
        optimizer.step(ours, g, warmup_linear(step, 2, 6))
        for k, t in tensors.items():
            t.grad = torch.from_numpy(grad[k].copy())
        torch.nn.utils.clip_grad_norm_(list(tensors.values()), 1.0)
        reference.step()
        schedule.step()
    for k in start:
        np.testing.assert_allclose(ours[k], tensors[k].detach().numpy(), atol=1e-6)


def test_buckets_cover_every_text_once_padded_to_their_longest():
    ids = [np.arange(1, n + 1, dtype=np.int64) for n in (3, 9, 1, 5, 7, 2, 8, 4, 6, 10)]
    examples = Examples(ids, np.arange(10) % 2)
    batches = make_batches(examples, list(range(10)), 3, 0, np.random.default_rng(0))
    assert sorted(int(i) for b in batches for i in b["example_index"]) == list(range(10))
    assert len(batches) == 4
    for batch in batches:
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == lengths.max()
        assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
        assert (batch["labels"] == batch["example_index"] % 2).all()
    again = make_batches(examples, list(range(10)), 3, 0, np.random.default_rng(0))
    assert [b["example_index"].tolist() for b in again] == [b["example_index"].tolist() for b in batches]


def test_validation_split_is_stratified_and_disjoint():
    labels = [i % 3 for i in range(50)]
    fit, val = split_validation(labels, 0.2, 7, stratify=True)
    assert not set(fit) & set(val) and sorted(fit + val) == list(range(50))
    assert {labels[i] for i in val} == {0, 1, 2}


def _model(tiny_bert_dir):
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"], pooling="mean")
    return model


def _batch(tiny_bert_dir, texts):
    ids = hf_tokenize(load_tokenizer(tiny_bert_dir))(texts, 32)
    return make_batches(Examples(ids, np.arange(len(texts)) % 2), list(range(len(texts))), len(texts), 0)[0]


def test_cached_top_block_matches_the_whole_model(tiny_bert_dir):
    """Training only the top block through cached hidden states gives the whole model's
    features and the same gradients for that block's R (the lower R get none)."""
    model = _model(tiny_bert_dir)
    batch = _batch(tiny_bert_dir, ["a short one", "a much longer text than the first one here", "mid text"])
    params = params_from_model(model)
    params["lora_R"] += np.random.default_rng(0).normal(size=params["lora_R"].shape).astype(np.float32) * 0.1
    whole, top = TorchBackend(model), TorchBackend(model, train_blocks=1)
    assert top.trainable_layers.any() and not top.trainable_layers.all()
    np.testing.assert_allclose(top.features(batch, params), whole.features(batch, params), atol=1e-5)
    np.testing.assert_allclose(top.features(batch, params), whole.features(batch, params), atol=1e-5)  # cached
    loss_w, grads_w = whole.loss_and_grads(batch, params)
    loss_t, grads_t = top.loss_and_grads(batch, params)
    assert loss_t == pytest.approx(loss_w, abs=1e-5)
    on = top.trainable_layers
    np.testing.assert_allclose(grads_t["lora_R"][on], grads_w["lora_R"][on], atol=1e-5)
    assert not grads_t["lora_R"][~on].any()
    np.testing.assert_allclose(grads_t["head_weight"], grads_w["head_weight"], atol=1e-5)


def _toy(n=60):
    words = ["good great fine", "bad awful poor"]
    return [f"{words[i % 2]} item {i}" for i in range(n)], [i % 2 for i in range(n)]


def test_a_spent_budget_keeps_the_validated_start(tiny_bert_dir):
    model = _model(tiny_bert_dir)
    texts, labels = _toy()
    tokenizer = load_tokenizer(tiny_bert_dir)
    result = run_recipe(
        TorchBackend(model),
        hf_tokenize(tokenizer),
        tokenizer.pad_token_id,
        texts,
        labels,
        2,
        params_from_model(model),
        PersonalTrainingConfig(epochs=3),
        deadline=time.monotonic(),
    )
    assert result.stopped_on_time and result.training.steps == 0 and result.best_epoch == 0
    assert result.best_score == result.start_score


def test_recipe_core_imports_no_torch():
    code = (
        "import sys; import shared.recipe.recipe, shared.recipe.backend, shared.interpolation; "
        "bad = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_head_fit_around_an_offset_is_at_its_optimum():
    """fit_head(..., offset) zeroes the gradient of the penalised loss of features @ W.T + b + offset."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    x = (rng.normal(size=(3, 8))[y] + rng.normal(size=(90, 8))).astype(np.float32)
    offset = rng.normal(size=(90, 3)) * 2
    l2 = 1e-2
    head = fit_head(x, y, 3, l2, offset)
    f = x.astype(np.float64)
    scale = np.sqrt(((f - f.mean(0)) ** 2).mean())
    z = f @ head.weight.astype(np.float64).T + head.bias + offset
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(3)[y]  # (N, C)
    grad_w = residual.T @ f / len(y) + 2 * l2 * scale**2 * head.weight
    assert np.abs(grad_w).max() < 1e-3 and np.abs(residual.mean(0)).max() < 1e-4
    plain = fit_head(x, y, 3, l2)
    assert not np.allclose(plain.weight, head.weight, atol=1e-3)  # the offset changed the answer


class _RecordingBackend(TorchBackend):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.offsets = []

    def loss_and_grads(self, batch, params, logit_offset=None):
        self.offsets.append((batch["example_index"].copy(), None if logit_offset is None else logit_offset.copy()))
        return super().loss_and_grads(batch, params, logit_offset)


def test_joint_training_adds_each_texts_offset_to_every_loss_and_head_fit(tiny_bert_dir):
    from shared.recipe.recipe import LogitOffsets

    model = _model(tiny_bert_dir)
    texts, labels = _toy()
    tokenizer = load_tokenizer(tiny_bert_dir)
    seen = {}

    def source(fit_ids, y_fit, val_ids, y_val, encoder_val):
        seen["shapes"] = (len(fit_ids), len(val_ids), encoder_val.shape)
        fit = np.stack([np.where(y_fit == 0, 1.5, -1.5), np.zeros(len(y_fit))], 1).astype(np.float32)  # (N_fit, C)
        val = np.stack([np.where(y_val == 0, 1.5, -1.5), np.zeros(len(y_val))], 1).astype(np.float32)
        seen["fit"] = {tuple(ids.tolist()): row for ids, row in zip(fit_ids, fit)}
        return LogitOffsets(fit, val, info="part")

    backend = _RecordingBackend(model)
    result = run_recipe(
        backend,
        hf_tokenize(tokenizer),
        tokenizer.pad_token_id,
        texts,
        labels,
        2,
        params_from_model(model),
        PersonalTrainingConfig(epochs=1, batch_size=8),
        lexical_offsets=source,
    )
    n_val = result.num_val
    assert seen["shapes"] == (result.num_fit, n_val, (n_val, 2))
    assert result.offsets is not None and result.offsets.info == "part"
    assert backend.offsets and all(offset is not None for _, offset in backend.offsets)
    encoded = hf_tokenize(tokenizer)(texts, result.max_length)
    for index, offset in backend.offsets:  # each text's own offset, whatever its batch position
        for i, row in zip(index, offset):
            np.testing.assert_array_equal(row, seen["fit"][tuple(np.asarray(encoded[i]).tolist())])
    # the kept head was refitted on fit + validation around their offsets
    fit, val = result.views["fit"], result.views["val"]
    assert result.head_l2 is not None
    expected = fit_head(
        np.vstack([fit.features, val.features]),
        np.r_[fit.labels, val.labels],
        2,
        result.head_l2,
        np.vstack([result.offsets.fit, result.offsets.val]),
    )
    np.testing.assert_allclose(result.params["head_weight"], expected.weight, atol=1e-5)
