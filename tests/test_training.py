"""Local training moves only R and the head, and learns a separable toy task."""

import datasets
import torch

from shared.base_models import build_adapted_model, load_tokenizer
from shared.data.batches import make_loader
from shared.loraxs.config import LoraXSConfig
from shared.training import TrainConfig, evaluate, train


def _toy(n=64):
    texts = [("good great fine " if i % 2 else "bad awful poor ") + f"item {i}" for i in range(n)]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]})


def test_train_changes_only_adapter_state_and_learns(tiny_bert_dir):
    torch.manual_seed(0)  # the head's initialization and dropout: the same whatever ran before
    model, _ = build_adapted_model(tiny_bert_dir, "seq-cls", LoraXSConfig(rank=4), ["a", "b"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    tokenizer = load_tokenizer(tiny_bert_dir)
    loader = make_loader(_toy(), tokenizer, "seq-cls", batch_size=16, shuffle=True)
    before = evaluate(model, make_loader(_toy(), tokenizer, "seq-cls", 32))
    result = train(model, loader, TrainConfig(epochs=15, lr=5e-2, head_lr=5e-2))
    after = evaluate(model, make_loader(_toy(), tokenizer, "seq-cls", 32))
    assert result.steps == 60 and result.examples == 15 * 64
    assert after.loss < before.loss and after.accuracy >= 0.9
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


def test_causal_lm_trains_and_reports_next_token_accuracy(tiny_llama_dir):
    model, _ = build_adapted_model(tiny_llama_dir, "causal-lm", LoraXSConfig(rank=4))
    tokenizer = load_tokenizer(tiny_llama_dir)
    ds = datasets.Dataset.from_dict({"text": ["the cat sat on the mat"] * 32})
    loader = make_loader(ds, tokenizer, "causal-lm", batch_size=8)
    before = evaluate(model, loader)
    train(model, loader, TrainConfig(max_steps=30, lr=5e-2))
    after = evaluate(model, loader)
    assert after.loss < before.loss
    assert 0.0 <= after.accuracy <= 1.0


def test_schedule_equals_transformers_linear_warmup():
    from transformers import get_linear_schedule_with_warmup

    from shared.training import linear_warmup_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    ours_opt, ref_opt = torch.optim.SGD([param], lr=1.0), torch.optim.SGD([param], lr=1.0)
    ours, ref = linear_warmup_schedule(ours_opt, 3, 11), get_linear_schedule_with_warmup(ref_opt, 3, 11)
    for _ in range(11):
        assert abs(ours_opt.param_groups[0]["lr"] - ref_opt.param_groups[0]["lr"]) < 1e-12
        ours_opt.step(), ref_opt.step(), ours.step(), ref.step()
