"""Embedding tables: batched + length-sorted encoding, row 0, NaN detection, shards, manifest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from lsvcr.data.table_files import TABLES_MANIFEST, load_tables, merge_shards, shard_paths, write_tables_manifest
from lsvcr.data.tokens import encode_texts
from lsvcr.errors import DataError
from lsvcr.models.llm.loader import TinyCausalLM
from lsvcr.models.llm.table_encoder import encode_table
from lsvcr.models.llm.text_encoder import LLMTextEncoder

TEXTS = [
    "今天天气真好[捂脸]",
    "hello world 😂",
    "哈哈哈哈[赞] great video, really a great one, watch it twice!!",
    "猫",
    "",
    "这个视频太搞笑了[捂脸][捂脸] 我笑死了",
    None,
    "dogs",
    "第一次来这里，主播加油，以后天天来看你的视频",
    "ok",
    "[666]",
]
MAX_LEN = 24


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    spec = TinyCausalLM(vocab_size=400, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    return spec.build(lambda: (t for t in TEXTS * 10 if t), tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def encoder(bundle):
    torch.manual_seed(0)
    return LLMTextEncoder(bundle.model, out_dim=16).eval()


def direct(encoder, tokenizer, texts):
    """One forward per item, no padding: the reference the batched table must match."""
    with torch.no_grad():
        pairs = [encoder(**encode_texts(tokenizer, [t], MAX_LEN), return_hidden=True) for t in texts]
    return torch.cat([p[0] for p in pairs]).numpy(), torch.cat([p[1] for p in pairs]).numpy()


def test_table_matches_per_item_encoding(tmp_path, bundle, encoder):
    want, want_hidden = direct(encoder, bundle.tokenizer, TEXTS)
    table = encode_table(
        encoder, bundle.tokenizer, TEXTS, tmp_path / "t.npy", batch_size=4, max_length=MAX_LEN,
        hidden_path=tmp_path / "h.npy", progress=False,
    )
    assert isinstance(table, np.memmap) and table.shape == (len(TEXTS) + 1, 16)
    assert not table[0].any()
    np.testing.assert_allclose(table[1:], want, atol=1e-5)
    hidden = np.load(tmp_path / "h.npy", mmap_mode="r")
    assert hidden.shape == (len(TEXTS) + 1, 32) and not hidden[0].any()
    np.testing.assert_allclose(hidden[1:], want_hidden, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.npy", "t.npy"]  # no temporary files left


def test_arrow_input_float16_and_mode_restored(tmp_path, bundle, encoder):
    encoder.train()
    table = encode_table(
        encoder, bundle.tokenizer, pa.array(TEXTS, pa.string()), tmp_path / "t.npy",
        batch_size=3, max_length=MAX_LEN, dtype="float16", progress=False,
    )
    assert encoder.training
    encoder.eval()
    assert table.dtype == np.float16
    want, _ = direct(encoder, bundle.tokenizer, TEXTS)
    np.testing.assert_allclose(table[1:].astype(np.float32), want, atol=2e-3)


@pytest.mark.parametrize("world", [2, 7])  # 7 ranks for 6 batches: the last rank gets none
def test_shards_merge_to_the_single_process_table(tmp_path, bundle, encoder, world):
    kw = dict(batch_size=2, max_length=MAX_LEN, progress=False)
    tok = bundle.tokenizer
    single = encode_table(encoder, tok, TEXTS, tmp_path / "one.npy", hidden_path=tmp_path / "oneh.npy", **kw)
    sizes = []
    for rank in range(world):
        part = encode_table(
            encoder, tok, TEXTS, tmp_path / "t.npy", shard=(rank, world), hidden_path=tmp_path / "h.npy", **kw
        )
        sizes.append(len(part))
    assert sum(sizes) == len(TEXTS) and max(sizes) < len(TEXTS)
    merged = merge_shards(tmp_path / "t.npy", world)
    assert np.array_equal(merged, single)
    assert np.array_equal(merge_shards(tmp_path / "h.npy", world), np.load(tmp_path / "oneh.npy"))
    assert not any(".shard" in p.name for p in tmp_path.iterdir())


def test_merge_refuses_a_missing_shard(tmp_path, bundle, encoder):
    encode_table(encoder, bundle.tokenizer, TEXTS, tmp_path / "t.npy", batch_size=2, shard=(0, 2), progress=False)
    with pytest.raises(DataError, match="missing embedding shard"):
        merge_shards(tmp_path / "t.npy", 2)
    assert shard_paths(tmp_path / "t.npy", 0, 2)[0].exists()


def test_nonfinite_embedding_names_the_item(tmp_path, bundle, encoder):
    """Poison exactly the batch row holding item 6 (1-based); the error must name it, never zero it."""
    marker = encode_texts(bundle.tokenizer, [TEXTS[5]], MAX_LEN)["input_ids"][0]

    def poison(module, args, kwargs, output):
        ids = kwargs["input_ids"]
        hit = (ids[:, -len(marker):] == marker).all(dim=1)
        output[0][hit] = float("nan")
        return output

    handle = encoder.register_forward_hook(poison, with_kwargs=True)
    try:
        with pytest.raises(DataError) as info:
            encode_table(encoder, bundle.tokenizer, TEXTS, tmp_path / "t.npy", batch_size=4, max_length=MAX_LEN,
                         desc="comments", progress=False)
    finally:
        handle.remove()
    message = str(info.value)
    assert message.startswith("comments: item 6 ") and "这个视频太搞笑了" in message
    assert not list(tmp_path.iterdir())  # neither the table nor its temporary file survives


def test_manifest_records_tables_and_detects_mismatch(tmp_path, bundle, encoder):
    encode_table(encoder, bundle.tokenizer, TEXTS, tmp_path / "video.npy", hidden_path=tmp_path / "video_h.npy",
                 max_length=MAX_LEN, progress=False)
    write_tables_manifest(tmp_path, model_name=bundle.source, checkpoint="ckpt/step-1", max_length=MAX_LEN,
                         tables={"video": tmp_path / "video.npy", "video_hidden": tmp_path / "video_h.npy"},
                         extra={"stage": "embed"})
    manifest, arrays = load_tables(tmp_path)
    assert manifest["model"] == bundle.source and manifest["checkpoint"] == "ckpt/step-1"
    assert manifest["max_length"] == MAX_LEN and manifest["stage"] == "embed"
    assert manifest["tables"]["video"] == {"file": "video.npy", "items": len(TEXTS), "dim": 16, "dtype": "float32"}
    assert arrays["video_hidden"].shape == (len(TEXTS) + 1, 32)
    np.save(tmp_path / "video.npy", np.zeros((3, 16), np.float32))
    with pytest.raises(DataError, match="manifest says"):
        load_tables(tmp_path)
    (tmp_path / TABLES_MANIFEST).unlink()
    with pytest.raises(DataError, match="run stage=embed"):
        load_tables(tmp_path)
