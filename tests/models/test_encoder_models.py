"""Encoder-only text models (BERT, all-MiniLM-L6-v2): valid text encoders for stage=embed (mean of the
last hidden state over the attention mask, as sentence-transformers pools), refused by stage=align.
The encoder is a tiny random BERT built in code with a BPE tokenizer trained offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, run_cli
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lsvcr.data.tokens import encode_texts
from lsvcr.errors import ConfigError
from lsvcr.models.llm.loader import PretrainedEncoder, TinyEncoder
from lsvcr.models.llm.text_encoder import LLMTextEncoder

TEXTS = ["a man plays a guitar", "the cat sleeps on the sofa", "今天天气真好[捂脸]", "", "ok", "dogs and cats and birds"]
PRESETS = REPO / "conf" / "model" / "llm"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    spec = TinyEncoder(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    return spec.build(lambda: (t for t in TEXTS * 10 if t), tmp_path_factory.mktemp("enc"))


def sentence_transformers_mean(model, batch):
    """sentence-transformers' Pooling(mean): sum(h * mask) / sum(mask) over the last hidden state."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def test_tiny_encoder_is_a_bare_bert_and_not_causal(bundle):
    assert type(bundle.model).__name__ == "BertModel" and bundle.causal is False
    assert bundle.hidden_size == 32 and bundle.tokenizer.padding_side == "right"
    assert bundle.model.config.vocab_size == len(bundle.tokenizer) and not bundle.model.training


def test_pooling_is_the_masked_mean_of_the_last_hidden_state(bundle):
    encoder = LLMTextEncoder(bundle.model, out_dim=8).eval()
    batch = encode_texts(bundle.tokenizer, TEXTS, 16)
    assert batch["attention_mask"][:, 0].all()  # right padding, as sentence-transformers
    with torch.no_grad():
        emb, pooled = encoder(**batch, return_hidden=True)
    torch.testing.assert_close(pooled, sentence_transformers_mean(bundle.model, batch))
    assert emb.shape == (len(TEXTS), 8) and torch.isfinite(emb).all()
    with torch.no_grad():  # one text alone (no padding) pools to the same row as in its batch
        alone = encoder.pooled(**encode_texts(bundle.tokenizer, [TEXTS[1]], 16))
    torch.testing.assert_close(alone[0], pooled[1], atol=1e-5, rtol=1e-5)


def test_pretrained_encoder_loads_a_directory_with_automodel(bundle, tmp_path):
    bundle.model.save_pretrained(tmp_path / "bert")
    bundle.tokenizer.save_pretrained(tmp_path / "bert")
    loaded = PretrainedEncoder(str(tmp_path / "bert"), name="mine").build()
    assert type(loaded.model).__name__ == "BertModel" and loaded.causal is False and loaded.name == "mine"
    batch = encode_texts(loaded.tokenizer, TEXTS, 16)
    torch.testing.assert_close(sentence_transformers_mean(loaded.model, batch),
                               sentence_transformers_mean(bundle.model, batch))
    with pytest.raises(ConfigError, match="encoder-only model"):
        PretrainedEncoder(str(tmp_path)).build()  # no checkpoint there


@pytest.mark.parametrize("preset", ["minilm_l6_v2", "tiny_encoder"])
def test_encoder_presets_instantiate_without_loading_anything(preset):
    cfg = OmegaConf.create({"paths": {"assets_dir": "/outputs/assets"}, "llm": OmegaConf.load(PRESETS / f"{preset}.yaml")}).llm
    spec = instantiate(cfg)
    assert spec.causal is False and spec.name == preset and spec.padding_side == "right"
    if preset == "minilm_l6_v2":
        assert isinstance(spec, PretrainedEncoder) and spec.name_or_path == "/outputs/assets/minilm-l6-v2"
        assert spec.dtype == torch.float32


ARGS = ["model/llm=tiny_encoder", *TINY, "data.num_videos=60", "data.num_topics=8", "embed.max_length=16"]


@pytest.mark.slow
def test_stage_embed_with_an_encoder_writes_complete_tables(tmp_path):
    r = run_cli(["stage=embed", *ARGS, "embed.hidden_table=true"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    [root] = list((tmp_path / "data").glob("synthetic-*"))
    [tables] = list((root / "embeddings").glob("tiny_encoder-*"))
    manifest = json.loads((tables / "embed_manifest.json").read_text())
    assert manifest["model"] == "tiny_encoder" and manifest["hidden_size"] == 64
    assert manifest["source"].startswith("random init (bert")
    for stem in ("videos", "comments"):
        table, hidden = np.load(tables / f"{stem}.npy"), np.load(tables / f"{stem}_hidden.npy")
        assert table.shape[1] == 256 and hidden.shape == (table.shape[0], 64)
        assert np.isfinite(table).all() and not table[0].any() and np.abs(table[1:]).sum(axis=1).min() > 0
        assert len(np.unique(hidden[1:].round(5), axis=0)) > len(hidden) // 2


@pytest.mark.slow
def test_stage_align_refuses_an_encoder_before_any_work(tmp_path):
    r = run_cli(["stage=align", *ARGS], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "encoder-only" in r.stderr and "stage=align" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists()  # refused before the dataset was prepared
