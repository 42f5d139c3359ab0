"""LLM builders: the tiny random LM and its dataset-trained tokenizer, the from_pretrained path, presets."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoTokenizer, LlamaForCausalLM, Qwen2ForCausalLM

from lsvcr.errors import ConfigError
from lsvcr.models.llm.loader import LLMBundle, LoraSettings, PretrainedCausalLM, TinyCausalLM
from lsvcr.models.llm.tokenizer import BPETokenizerTrainer

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model" / "llm"
LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CORPUS = [
    "今天天气真好[捂脸][捂脸]",
    "hello world, this is a funny video 😂",
    "哈哈哈哈[赞][赞] great video!!",
    "这个视频太搞笑了[捂脸]",
    "猫咪和狗狗一起玩 cats and dogs",
    "[666] 主播好厉害",
] * 10


def tiny(**kw) -> TinyCausalLM:
    args = dict(vocab_size=400, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    return TinyCausalLM(**{**args, **kw})


def texts_fn(texts=CORPUS):
    return lambda: iter(texts)


def test_tokenizer_round_trips_chinese_english_emoji_and_stickers():
    tok = BPETokenizerTrainer(bracket_min_count=3).train(CORPUS, vocab_size=400)
    assert tok.tokenize("[捂脸]")[0] == "[捂脸]" and len(tok.tokenize("[捂脸]")) == 1
    assert len(tok.tokenize("[赞]")) == 1
    for text in CORPUS[:6] + ["没见过的新词 🤖 unseen words", "  spaces\tand\nlines "]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id


def test_tokenizer_is_deterministic_and_reloads_from_workdir(tmp_path):
    a = tiny().build(texts_fn(), tmp_path / "a").tokenizer
    b = tiny().build(texts_fn(), tmp_path / "b").tokenizer
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    assert reloaded.backend_tokenizer.to_str() == a.backend_tokenizer.to_str()
    assert reloaded(CORPUS[:6])["input_ids"] == a(CORPUS[:6])["input_ids"]
    assert reloaded.padding_side == "left" and reloaded.pad_token == a.pad_token


def test_tokenizer_cache_follows_texts(tmp_path):
    first = tiny().build(texts_fn(), tmp_path).tokenizer
    again = tiny().build(None, tmp_path).tokenizer  # a later stage reloads without texts
    assert again.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()
    other = tiny().build(texts_fn(["完全不同的文本 other words only"] * 20), tmp_path).tokenizer
    assert other.backend_tokenizer.to_str() != first.backend_tokenizer.to_str()
    with pytest.raises(ConfigError, match="no trained tokenizer"):
        tiny().build(None, tmp_path / "empty")


def test_tokenizer_uses_at_most_max_texts(tmp_path):
    trainer = BPETokenizerTrainer(max_texts=3)
    assert trainer.collect(texts_fn(["", None, "a", "b", "c", "d"])) == ["a", "b", "c"]


@pytest.mark.parametrize("arch,cls", [("llama", LlamaForCausalLM), ("qwen2", Qwen2ForCausalLM)])
def test_tiny_model_is_seeded(tmp_path, arch, cls):
    a = tiny(arch=arch).build(texts_fn(), tmp_path)
    b = tiny(arch=arch).build(texts_fn(), tmp_path)
    c = tiny(arch=arch, seed=1).build(texts_fn(), tmp_path)
    assert isinstance(a.model, cls) and not a.model.training
    assert a.model.get_input_embeddings().num_embeddings == len(a.tokenizer)
    assert a.hidden_size == 32
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_from_pretrained_matches_saved_model(tmp_path):
    built = tiny().build(texts_fn(), tmp_path / "work")
    built.model.save_pretrained(tmp_path / "ckpt")
    built.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = PretrainedCausalLM(str(tmp_path / "ckpt"), dtype="float32", padding_side="right").build()
    assert isinstance(loaded, LLMBundle) and loaded.source == str(tmp_path / "ckpt")
    batch = loaded.tokenizer(CORPUS[:4], padding=True, return_tensors="pt")
    assert loaded.tokenizer.padding_side == "right"
    assert batch["input_ids"].tolist() == built.tokenizer(CORPUS[:4], padding=True, padding_side="right")["input_ids"]
    with torch.no_grad():
        want = built.model(**batch).logits
        got = loaded.model(**batch).logits
    assert torch.allclose(got, want, atol=1e-6)


def test_from_pretrained_adds_missing_pad_token(tmp_path):
    built = tiny().build(texts_fn(), tmp_path / "work")
    built.tokenizer.pad_token = None
    built.model.config.pad_token_id = None
    built.model.save_pretrained(tmp_path / "ckpt")
    built.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = PretrainedCausalLM(str(tmp_path / "ckpt"), dtype="float32").build()
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.model.config.pad_token_id == loaded.tokenizer.eos_token_id


@pytest.mark.parametrize("value", ["/nonexistent/llm/dir", "./no/such/dir", "no-such-org/no-such-model"])
def test_missing_checkpoint_gives_one_clear_error(monkeypatch, tmp_path, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        PretrainedCausalLM(value).build()
    message = str(info.value)
    assert "model.llm.name_or_path" in message and value in message
    assert len(message.splitlines()) == 1
    assert info.value.__cause__ is None


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="model.llm.dtype"):
        PretrainedCausalLM("x", dtype="float64")
    with pytest.raises(ConfigError, match="padding_side"):
        tiny(padding_side="middle")
    with pytest.raises(ConfigError, match="arch"):
        tiny(arch="gpt2")
    with pytest.raises(ConfigError, match="model.llm.dtype"):
        tiny(dtype="auto")


EXPECTED_TARGETS = {
    "tiny": LLAMA_MODULES,
    "hf": LLAMA_MODULES,
    "smollm2_135m": LLAMA_MODULES,
    "gemma3_270m": LLAMA_MODULES,
    "qwen2_5_0_5b": LLAMA_MODULES,
    "qwen2_5_1_5b": LLAMA_MODULES,
    "qwen2_5_7b": LLAMA_MODULES,
    "chatglm3_6b": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


@pytest.mark.parametrize("preset", sorted(EXPECTED_TARGETS))
def test_presets_instantiate_without_loading_anything(preset):
    # presets of fetched models read ${paths.assets_dir}: give them the root node they resolve against
    cfg = OmegaConf.create({"paths": {"assets_dir": "/outputs/assets"}, "llm": OmegaConf.load(PRESETS / f"{preset}.yaml")}).llm
    if preset == "hf":
        assert OmegaConf.is_missing(cfg, "name_or_path")
        cfg.name_or_path = "/models/some-llm"
    spec = instantiate(cfg)
    assert isinstance(spec, TinyCausalLM if preset == "tiny" else PretrainedCausalLM)
    assert spec.name == preset
    assert isinstance(spec.lora, LoraSettings)
    assert (spec.lora.r, spec.lora.alpha, spec.lora.dropout) == (8, 32, 0.1)
    assert spec.lora.target_modules == EXPECTED_TARGETS[preset]
    if preset == "tiny":
        assert isinstance(spec.tokenizer, BPETokenizerTrainer) and spec.tokenizer.max_texts == 50000
    else:
        assert spec.trust_remote_code is (preset == "chatglm3_6b")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lora_targets_exist_in_tiny_model(tmp_path, arch):
    from peft import get_peft_model

    bundle = tiny(arch=arch, lora=OmegaConf.load(PRESETS / "tiny.yaml").lora).build(texts_fn(), tmp_path)
    peft_model = get_peft_model(bundle.model, bundle.lora.to_peft())
    wrapped = {name.rsplit(".", 1)[-1] for name, mod in peft_model.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == set(LLAMA_MODULES)
