"""LLM text encoder: mean pooling over real tokens, padding-side independence, MLP head, gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from lsvcr.data.tokens import encode_texts, pad_ids, tokenize_texts
from lsvcr.models.llm.loader import TinyCausalLM
from lsvcr.models.llm.text_encoder import LLMTextEncoder, length_buckets, masked_mean

TEXTS = ["今天天气真好[捂脸]", "hello world 😂", "哈哈哈哈[赞] great video, really a great one!!", "猫"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    spec = TinyCausalLM(vocab_size=400, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    return spec.build(lambda: iter(TEXTS * 10), tmp_path_factory.mktemp("llm"))


@pytest.fixture()
def encoder(bundle):
    torch.manual_seed(0)
    return LLMTextEncoder(bundle.model, out_dim=16).eval()


def test_shapes_and_mlp_layout(bundle, encoder):
    batch = encode_texts(bundle.tokenizer, TEXTS, max_length=32)
    emb, hidden = encoder(**batch, return_hidden=True)
    assert emb.shape == (4, 16) and hidden.shape == (4, 32)
    assert encoder(**batch).shape == (4, 16)
    mlp = encoder.llm_emb_mlp
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features) == (32, 8, 16)
    assert isinstance(mlp[1], torch.nn.GELU)
    assert torch.allclose(emb, mlp(hidden), atol=1e-6)


def test_pooling_is_mean_of_last_hidden_state_over_real_tokens(bundle, encoder):
    """The decoder path equals the full model's final hidden state, averaged over the item's tokens."""
    ids = tokenize_texts(bundle.tokenizer, TEXTS, max_length=32)
    batch = pad_ids(ids, bundle.tokenizer.pad_token_id, "left")
    with torch.no_grad():
        pooled = encoder.pooled(**batch)
        for i, row in enumerate(ids):
            out = bundle.model(input_ids=torch.tensor([row]), output_hidden_states=True)
            assert torch.allclose(pooled[i], out.hidden_states[-1][0].mean(dim=0), atol=1e-5)


def test_left_right_padding_and_batching_agree(bundle, encoder):
    ids = tokenize_texts(bundle.tokenizer, TEXTS, max_length=32)
    pad = bundle.tokenizer.pad_token_id
    assert len({len(r) for r in ids}) > 1, "texts must differ in length for padding to matter"
    with torch.no_grad():
        left = encoder(**pad_ids(ids, pad, "left"))
        right = encoder(**pad_ids(ids, pad, "right"))
        single = torch.cat([encoder(**pad_ids([row], pad)) for row in ids])
    assert torch.allclose(left, right, atol=1e-5)
    assert torch.allclose(left, single, atol=1e-5)


def test_encode_texts_pads_on_tokenizer_side_truncates_and_fills_empty(bundle):
    tok = bundle.tokenizer
    batch = encode_texts(tok, ["hello world 😂", "", None, "猫"], max_length=3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[1] <= 3
    assert tok.padding_side == "left"
    assert mask[:, -1].all()  # left padding: last column is real for every row
    for row in (1, 2):  # empty and None become the single EOS token
        assert mask[row].sum() == 1 and ids[row, -1] == tok.eos_token_id
    assert (ids[mask == 0] == tok.pad_token_id).all()


def test_masked_mean_ignores_nonfinite_pads():
    hidden = torch.tensor([[[1.0, 2.0], [float("nan"), float("inf")], [3.0, 4.0]]])
    mask = torch.tensor([[1, 0, 1]])
    assert torch.equal(masked_mean(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_gradients_reach_llm_and_mlp(bundle):
    torch.manual_seed(0)
    enc = LLMTextEncoder(bundle.model, out_dim=16).train()
    enc(**encode_texts(bundle.tokenizer, TEXTS, 32)).pow(2).sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert grads["llm_emb_mlp.0.weight"].abs().sum() > 0
    assert grads["llm.model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    enc.zero_grad(set_to_none=True)


def test_lora_wrapped_llm_encodes_and_trains_lora(bundle, encoder):
    from peft import get_peft_model

    batch = encode_texts(bundle.tokenizer, TEXTS, 32)
    with torch.no_grad():
        before = encoder(**batch)
    peft_model = get_peft_model(copy.deepcopy(bundle.model), bundle.lora.to_peft())
    wrapped = LLMTextEncoder(peft_model, out_dim=16)
    wrapped.llm_emb_mlp.load_state_dict(encoder.llm_emb_mlp.state_dict())
    with torch.no_grad():
        assert torch.allclose(wrapped.eval()(**batch), before, atol=1e-6)  # LoRA B starts at zero
    wrapped.train()(**batch).sum().backward()
    lora_b = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None for g in lora_b) and any(g.abs().sum() > 0 for g in lora_b)


def test_length_buckets_keep_the_budget_and_cover_every_row_once():
    lengths = torch.tensor([5, 1, 9, 3, 3, 7, 2, 20])
    chunks = length_buckets(lengths, max_tokens=10)
    assert sorted(torch.cat(chunks).tolist()) == list(range(8))
    for rows in chunks:  # within budget, except a row longer than the budget alone
        assert len(rows) * int(lengths[rows].max()) <= 10 or len(rows) == 1
    assert [lengths[c].tolist() for c in chunks] == [[1, 2, 3], [3, 5], [7], [9], [20]]
    assert torch.equal(length_buckets(lengths, None)[0], torch.arange(8))
    with pytest.raises(ValueError, match="max_tokens=0"):
        length_buckets(lengths, 0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_bucketed_pooling_equals_one_padded_batch_with_gradients(bundle, side):
    """Length buckets change only the padding the LM computes on: pooled values and the gradient
    they send back agree with one padded batch."""
    ids = tokenize_texts(bundle.tokenizer, TEXTS * 3, max_length=32)
    batch = pad_ids(ids, bundle.tokenizer.pad_token_id, side)
    torch.manual_seed(0)
    plain = LLMTextEncoder(copy.deepcopy(bundle.model), out_dim=16).eval()  # own copy: grads start empty
    bucketed = copy.deepcopy(plain)
    bucketed.bucket_tokens = 12  # several buckets of these 12 texts
    assert len(length_buckets(batch["attention_mask"].sum(1), 12)) > 2
    a, b = plain(**batch), bucketed(**batch)
    assert torch.allclose(a, b, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), bucketed.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-4), name
