"""GGUF -> a float Hugging Face directory, and the checks that a converted model works.

transformers reads GGUF files through the optional ``gguf`` package (``pip install -e ".[gguf]"``)
and de-quantises every block to float; the quantisation config is then dropped, so the saved
directory is an ordinary checkpoint that ``from_pretrained`` loads without the GGUF file.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections import Counter
from pathlib import Path

from lsvcr.assets.wheels import AssetError

INSTALL_HINT = 'pip install -e ".[gguf]"  (or: pip install "gguf>=0.10")'
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "Water boils at one hundred degrees Celsius at sea level.",
)
# (anchor, paraphrase, unrelated): a working sentence encoder puts the paraphrase closer
SIMILARITY_TRIPLES = (
    ("A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch.", "Interest rates were raised by the bank."),
    ("How do I bake bread at home?", "What is a good recipe for homemade bread?", "The train leaves at noon."),
)


def require_gguf() -> None:
    """Raise :class:`AssetError` with the install command when the ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise AssetError(f"the `gguf` package is not installed; transformers needs it to read GGUF files: {INSTALL_HINT}")


def gguf_summary(path: Path) -> dict:
    """Tensor types (``{"Q4_1": 210, ...}``), the declared file type and a few architecture fields."""
    require_gguf()
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    types = Counter(t.tensor_type.name for t in reader.tensors)
    by_tensor = {t.name: t.tensor_type.name for t in reader.tensors}
    return {"tensor_types": dict(types.most_common()), "file_type": field("general.file_type"),
            "architecture": field("general.architecture"), "name": field("general.name"),
            "embedding_type": by_tensor.get("token_embd.weight"),
            "projection_type": by_tensor.get("blk.0.attn_q.weight")}


def convert_gguf(gguf_path: Path, out: Path, dtype: str = "float32") -> None:
    """Load the GGUF with transformers (de-quantising it) and ``save_pretrained`` model + tokenizer to ``out``."""
    require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    extra = {}
    try:  # transformers >= 5 can keep GGUF blocks packed; ask for plain dense weights
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(gguf_file=name, dequantize=True)
    except ImportError:  # older transformers always de-quantise GGUF files
        pass
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype), **extra)
    # The weights are plain tensors now: drop the quantizer (save_pretrained refuses GGUF-quantised
    # models) and its config (the next from_pretrained would look for the GGUF file again).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    packed = [n for n, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise AssetError(f"{gguf_path}: transformers left {len(packed)} weights packed (e.g. {packed[0]}); "
                         "upgrade transformers")
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def lm_loss(model, tokenizer, texts) -> float:
    """Mean next-token cross-entropy over the tokens of ``texts`` (each scored on its own)."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            loss = model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def check_causal_lm(path: Path, max_new_tokens: int = 16) -> dict:
    """Reload ``path``: LM loss on English sentences vs a random model of the same shape, a greedy reply."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = "The capital of France is"
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:  # a base model: a plain continuation
        ids = tokenizer(prompt, return_tensors="pt")
    t0 = time.perf_counter()
    with torch.inference_mode():
        gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    reply = tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    gen_s = time.perf_counter() - t0
    loss = lm_loss(model, tokenizer, SENTENCES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_model = AutoModelForCausalLM.from_config(model.config).eval()
    random_loss = lm_loss(random_model, tokenizer, SENTENCES)
    return {"lm_loss": round(loss, 3), "lm_loss_random_same_shape": round(random_loss, 3),
            "ln_vocab": round(math.log(len(tokenizer)), 3), "reply": reply, "generate_s": round(gen_s, 2),
            "parameters": sum(p.numel() for p in model.parameters())}


def check_sentence_encoder(path: Path) -> dict:
    """Mean-pooled embeddings (AutoModel + AutoTokenizer): cosine(anchor, paraphrase) vs (anchor, unrelated)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lsvcr.models.llm.text_encoder import masked_mean

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    texts = [t for triple in SIMILARITY_TRIPLES for t in triple]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        emb = masked_mean(model(**batch).last_hidden_state, batch["attention_mask"])
    emb = torch.nn.functional.normalize(emb, dim=-1).view(len(SIMILARITY_TRIPLES), 3, -1)
    para = (emb[:, 0] * emb[:, 1]).sum(-1)
    other = (emb[:, 0] * emb[:, 2]).sum(-1)
    return {"cosine_paraphrase": [round(float(x), 3) for x in para],
            "cosine_unrelated": [round(float(x), 3) for x in other],
            "paraphrase_closer": bool((para > other).all()), "dim": int(emb.shape[-1]),
            "parameters": sum(p.numel() for p in model.parameters())}
