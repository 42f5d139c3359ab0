"""A byte-level BPE tokenizer trained offline on the dataset's own texts (for the tiny random LM).

Nothing can be downloaded, so the tiny model cannot borrow a pretrained vocabulary. Instead the
tokenizer is trained on the first ``max_texts`` titles and comments the caller yields. Byte-level
BPE never produces an unknown token, so Chinese, English and emoji all round-trip exactly. Kuaishou
comments use bracketed sticker codes such as ``[捂脸]``; the frequent ones are added as whole tokens
so that a sticker is one token rather than a handful of UTF-8 byte pieces.

The trained tokenizer is saved with ``save_pretrained`` under ``<workdir>/tokenizer`` together with
a fingerprint of the settings and the texts used; a later build with the same settings and texts
reloads it instead of training again, and a build with no texts (e.g. a stage that only reloads)
reads what is there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lsvcr.errors import ConfigError

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
FINGERPRINT_FILE = "lsvcr_tokenizer.json"
# A sticker code: one bracketed word of 1-8 non-space characters, e.g. "[捂脸]", "[赞]", "[doge]".
_BRACKET = re.compile(r"\[[^\[\]\s]{1,8}\]")


@dataclass
class BPETokenizerTrainer:
    """Settings for training the tiny model's tokenizer.

    Args:
        max_texts: use at most this many texts (the first ones the caller yields; empty ones skipped).
        min_frequency: a merge must occur this often to enter the vocabulary.
        bracket_min_count: a sticker code (``[捂脸]``) occurring this often becomes one token.
        max_bracket_tokens: keep at most this many sticker tokens (most frequent first).
        model_max_length: the tokenizer's ``model_max_length``.
    """

    max_texts: int = 200_000
    min_frequency: int = 2
    bracket_min_count: int = 3
    max_bracket_tokens: int = 1000
    model_max_length: int = 2048

    def train(self, texts: list[str], vocab_size: int, padding_side: str = "left") -> PreTrainedTokenizerFast:
        """Train on ``texts`` (already capped); deterministic for the same texts and settings."""
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=self.min_frequency,
            special_tokens=[PAD_TOKEN, EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        stickers = self.sticker_tokens(texts)
        tok.add_tokens([AddedToken(s, normalized=False, single_word=False) for s in stickers])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token=PAD_TOKEN,
            eos_token=EOS_TOKEN,
            padding_side=padding_side,
            model_max_length=self.model_max_length,
        )

    def sticker_tokens(self, texts: Iterable[str]) -> list[str]:
        """Frequent bracketed sticker codes, most frequent first (ties broken by the code itself)."""
        counts = Counter(m for t in texts for m in _BRACKET.findall(t))
        frequent = [(-c, s) for s, c in counts.items() if c >= self.bracket_min_count]
        return [s for _, s in sorted(frequent)[: self.max_bracket_tokens]]

    def collect(self, texts: Callable[[], Iterable[str]]) -> list[str]:
        """The first ``max_texts`` non-empty texts the callable yields (``None`` entries skipped)."""
        out: list[str] = []
        for t in texts():
            if t:
                out.append(t)
                if len(out) >= self.max_texts:
                    break
        return out

    def fingerprint(self, texts: list[str], vocab_size: int) -> str:
        h = hashlib.sha256(json.dumps({**asdict(self), "vocab_size": vocab_size}, sort_keys=True).encode())
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()

    def load_or_train(
        self,
        texts: Callable[[], Iterable[str]] | None,
        workdir: Path,
        vocab_size: int,
        padding_side: str = "left",
    ) -> PreTrainedTokenizerFast:
        """Reload ``<workdir>/tokenizer`` if it was trained on the same texts and settings, else train and save.

        With ``texts=None`` the saved tokenizer is required.

        Raises:
            ConfigError: ``texts`` is None and nothing was saved in ``workdir``, or no text is non-empty.
        """
        tok_dir = Path(workdir) / "tokenizer"
        stamp_path = tok_dir / FINGERPRINT_FILE
        if texts is None:
            if not stamp_path.exists():
                raise ConfigError(
                    f"{tok_dir}: no trained tokenizer here, and no texts were given to train one; "
                    "the tiny LLM's tokenizer is trained on the dataset's texts by the first stage that builds it"
                )
            return _load(tok_dir, padding_side)
        corpus = self.collect(texts)
        if not corpus:
            raise ConfigError("cannot train the tiny LLM's tokenizer: the dataset yielded no non-empty text")
        stamp = self.fingerprint(corpus, vocab_size)
        if stamp_path.exists() and json.loads(stamp_path.read_text()).get("fingerprint") == stamp:
            return _load(tok_dir, padding_side)
        tokenizer = self.train(corpus, vocab_size, padding_side)
        tok_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(tok_dir)
        stamp_path.write_text(json.dumps({"fingerprint": stamp, "texts": len(corpus), "vocab_size": vocab_size}))
        return tokenizer


def _load(tok_dir: Path, padding_side: str) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.padding_side = padding_side
    return tokenizer
