"""A tiny GGUF written with the `gguf` package, for the GGUF conversion tests."""

from __future__ import annotations

from pathlib import Path


def write_tiny_llama_gguf(path: Path, gguf) -> None:
    """A 1-layer Llama GGUF (hidden 64, Q8_0 projections, byte-level BPE tokenizer of 300 tokens)."""
    import numpy as np

    rng = np.random.default_rng(0)
    hidden, inter, vocab, heads, kv = 64, 128, 300, 4, 2
    q8 = gguf.GGMLQuantizationType.Q8_0
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hidden // heads)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    special = ["<unk>", "<|im_start|>", "<|im_end|>"]
    plain = [chr(c) for c in range(ord("!"), ord("!") + vocab - len(special) - 1)] + ["ab"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(special + plain)
    w.add_token_types([3] * len(special) + [1] * len(plain))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)

    def quantised(name, shape):
        weights = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(weights, q8), raw_dtype=q8)

    quantised("token_embd.weight", (vocab, hidden))
    for name in ("attn_norm", "ffn_norm"):
        w.add_tensor(f"blk.0.{name}.weight", np.ones(hidden, np.float32))
    for name, shape in {"attn_q": (hidden, hidden), "attn_k": (hidden * kv // heads, hidden),
                        "attn_v": (hidden * kv // heads, hidden), "attn_output": (hidden, hidden),
                        "ffn_gate": (inter, hidden), "ffn_up": (inter, hidden), "ffn_down": (hidden, inter)}.items():
        quantised(f"blk.0.{name}.weight", shape)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
