"""Alignment prompts (DESIGN section 4): render a user's two histories as text and tokenise them.

A prompt is the task's template with ``{video_history}`` (a numbered list "title; hot comment"),
``{comment_history}`` (a numbered list "title; the user's comments") and, for ``comm_rank``,
``{target_title}`` (the video being watched) filled in. The response is the target title (rec) or
one positive comment (comm_rank), followed by EOS. Templates live in ``conf/prompts/{zh,en}.yaml``.

Tokenised rows are ``prompt tokens + response tokens + EOS``; labels are -100 on the prompt and on
padding, so the LM loss sees response tokens only. A prompt longer than ``max_prompt_tokens`` loses
history items from the oldest end (of whichever history currently costs more tokens, so neither
history is wiped out first); the instruction and the response are never cut for history's sake.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lsvcr.data.tokens import pad_ids

TASK_FIELDS = {
    "rec": {"video_history", "comment_history"},
    "comm_rank": {"video_history", "comment_history", "target_title"},
}
_ITEM_FIELDS = {"numbering": {"index"}, "video_item": {"title", "comment"}, "comment_item": {"title", "comments"}}
_PLAIN = ("comment_join", "no_comment", "empty_history")
_KNOWN = {"language", "templates", *_ITEM_FIELDS, *_PLAIN}


def _fields(template: str, where: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"prompts.{where}: malformed template ({e}); write literal braces as '{{{{' and '}}}}'") from None


@dataclass
class PromptExample:
    """One sample's texts, both histories oldest first.

    Attributes:
        task: ``"rec"`` or ``"comm_rank"``.
        video_items: ``(title, hot comment)`` per video-history item (comment ``""`` = none).
        comment_items: ``(title, [the user's comments])`` per comment-history item.
        target_title: the video being watched (comm_rank; ignored by rec templates).
        response: the target title (rec) or one positive comment (comm_rank).
    """

    task: str
    video_items: Sequence[tuple[str, str]]
    comment_items: Sequence[tuple[str, Sequence[str]]]
    target_title: str
    response: str


@dataclass
class PromptTemplates:
    """The validated contents of a ``conf/prompts/*.yaml`` file."""

    templates: dict[str, list[str]]
    numbering: str
    video_item: str
    comment_item: str
    comment_join: str
    no_comment: str
    empty_history: str
    language: str = ""

    @classmethod
    def from_dict(cls, d: Mapping) -> "PromptTemplates":
        """Check keys and placeholders; raises ``ValueError`` naming the offending key."""
        d = dict(d)
        unknown, missing = set(d) - _KNOWN, (_KNOWN - {"language"}) - set(d)
        if unknown or missing:
            raise ValueError(f"prompts: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        for key, allowed in _ITEM_FIELDS.items():
            found = _fields(str(d[key]), key)
            if not found <= allowed:
                raise ValueError(f"prompts.{key}: placeholders {sorted(found)}, allowed {sorted(allowed)}")
        templates = {task: [str(t) for t in d["templates"].get(task, [])] for task in TASK_FIELDS}
        for task, required in TASK_FIELDS.items():
            if not templates[task]:
                raise ValueError(f"prompts.templates.{task}: give at least one template")
            for i, t in enumerate(templates[task]):
                found = _fields(t, f"templates.{task}[{i}]")
                if found != required:
                    raise ValueError(
                        f"prompts.templates.{task}[{i}]: placeholders {sorted(found)}, expected {sorted(required)}"
                    )
        plain = {k: str(d[k]) for k in _PLAIN}
        items = {k: str(d[k]) for k in _ITEM_FIELDS}
        return cls(templates=templates, language=str(d.get("language", "")), **plain, **items)


class PromptBuilder:
    """Renders :class:`PromptExample` s and tokenises them for the LM loss.

    Args:
        templates: the contents of a ``conf/prompts/*.yaml`` file (or :class:`PromptTemplates`).
        tokenizer: the LLM's tokenizer (needs ``eos_token_id`` and ``pad_token_id``); rows are
            padded on its ``padding_side``.
        max_prompt_tokens: prompt budget, special tokens included; history is dropped to fit.
        max_response_tokens: response budget before the EOS token.
    """

    def __init__(self, templates: Mapping | PromptTemplates, tokenizer, max_prompt_tokens: int, max_response_tokens: int):
        self.t = templates if isinstance(templates, PromptTemplates) else PromptTemplates.from_dict(templates)
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("PromptBuilder needs a tokenizer with an EOS and a pad token")
        self.tokenizer = tokenizer
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_response_tokens = int(max_response_tokens)
        for task, temps in self.t.templates.items():
            for i in range(len(temps)):
                # The bare instruction must leave room for history, or every prompt is cut.
                n = len(self._tokens(self.render(PromptExample(task, [], [], "", ""), i)))
                if n >= self.max_prompt_tokens:
                    raise ValueError(
                        f"prompts.templates.{task}[{i}] alone takes {n} tokens; max_prompt_tokens={self.max_prompt_tokens} "
                        "leaves no room for the histories"
                    )

    def num_templates(self, task: str) -> int:
        return len(self.t.templates[task])

    # ---------------------------------------------------------------- rendering

    def _video_line(self, title: str, comment: str) -> str:
        return self.t.video_item.format(title=title or "", comment=comment or self.t.no_comment)

    def _comment_line(self, title: str, comments: Sequence[str]) -> str:
        text = self.t.comment_join.join(c for c in comments if c) or self.t.no_comment
        return self.t.comment_item.format(title=title or "", comments=text)

    def _numbered(self, lines: Sequence[str]) -> str:
        if not lines:
            return self.t.empty_history
        return "\n".join(self.t.numbering.format(index=i + 1) + line for i, line in enumerate(lines))

    def _fill(self, task: str, template: int, v_lines: Sequence[str], c_lines: Sequence[str], target_title: str) -> str:
        values = {"video_history": self._numbered(v_lines), "comment_history": self._numbered(c_lines)}
        if task == "comm_rank":
            values["target_title"] = target_title or ""
        return self.t.templates[task][template].format(**values)

    def render(
        self, ex: PromptExample, template: int, keep_video: int | None = None, keep_comment: int | None = None
    ) -> str:
        """The prompt text with the most recent ``keep_*`` items of each history (all by default)."""
        v = [self._video_line(t, c) for t, c in ex.video_items]
        c = [self._comment_line(t, cs) for t, cs in ex.comment_items]
        kv = len(v) if keep_video is None else keep_video
        kc = len(c) if keep_comment is None else keep_comment
        return self._fill(ex.task, template, v[len(v) - kv :], c[len(c) - kc :], ex.target_title)

    # ---------------------------------------------------------------- tokenising

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def prompt_ids(self, ex: PromptExample, template: int) -> list[int]:
        """Prompt token ids within ``max_prompt_tokens``, dropping history items oldest first."""
        v = [self._video_line(t, c) for t, c in ex.video_items]
        c = [self._comment_line(t, cs) for t, cs in ex.comment_items]
        ids = self._tokens(self._fill(ex.task, template, v, c, ex.target_title))
        if len(ids) <= self.max_prompt_tokens:
            return ids
        # Per-item token costs (line + newline) guide how many to drop; re-tokenising checks it.
        lines = v + c
        costs = [len(r) + 1 for r in self.tokenizer(lines, add_special_tokens=False)["input_ids"]] if lines else []
        cost_v, cost_c = costs[: len(v)], costs[len(v) :]
        kv, kc, sum_v, sum_c = len(v), len(c), sum(cost_v), sum(cost_c)
        while len(ids) > self.max_prompt_tokens and kv + kc > 0:
            excess = len(ids) - self.max_prompt_tokens
            while excess > 0 and kv + kc > 0:
                # drop the oldest item of the history that currently costs more tokens
                if kc == 0 or (kv > 0 and sum_v >= sum_c):
                    cost, kv = cost_v[len(v) - kv], kv - 1
                    sum_v -= cost
                else:
                    cost, kc = cost_c[len(c) - kc], kc - 1
                    sum_c -= cost
                excess -= cost
            ids = self._tokens(self._fill(ex.task, template, v[len(v) - kv :], c[len(c) - kc :], ex.target_title))
        # Only an instruction whose target title is longer than the budget gets here: keep its end,
        # which holds the question and the last prompt token.
        return ids[-self.max_prompt_tokens :]

    def response_ids(self, ex: PromptExample) -> list[int]:
        """Response tokens (no special tokens), cut to ``max_response_tokens``, then EOS."""
        ids = list(self.tokenizer(ex.response or "", add_special_tokens=False)["input_ids"])
        return ids[: self.max_response_tokens] + [self.tokenizer.eos_token_id]

    def choose_templates(self, tasks: Sequence[str], rng: np.random.Generator | np.ndarray | None) -> np.ndarray:
        """Template index per example: uniform with ``rng`` (training: a generator, or one uniform
        in [0, 1) per example), 0 without (evaluation)."""
        if rng is None:
            return np.zeros(len(tasks), np.int64)
        counts = np.array([self.num_templates(t) for t in tasks], np.int64)
        uniform = rng.random(len(tasks)) if isinstance(rng, np.random.Generator) else np.asarray(rng, np.float64)
        return np.floor(uniform * counts).astype(np.int64)

    def build(self, examples: Sequence[PromptExample], rng: np.random.Generator | np.ndarray | None = None
              ) -> dict[str, torch.Tensor]:
        """Tokenise and pad a batch (B = ``len(examples)``, T = longest row); ``rng`` chooses the
        templates (:meth:`choose_templates`).

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]`` (labels -100 except on the
            response and its EOS); ``last_prompt_index [B]``, the column of each row's last prompt
            token (its hidden state is the LLM user representation); ``template [B]``.
        """
        template = self.choose_templates([ex.task for ex in examples], rng)
        prompts = [self.prompt_ids(ex, int(t)) for ex, t in zip(examples, template)]
        responses = [self.response_ids(ex) for ex in examples]
        side = getattr(self.tokenizer, "padding_side", "right")
        rows = [p + r for p, r in zip(prompts, responses)]
        out = pad_ids(rows, self.tokenizer.pad_token_id, side)
        out["labels"] = pad_ids([[-100] * len(p) + r for p, r in zip(prompts, responses)], -100, side)["input_ids"]
        width = out["input_ids"].shape[1]
        length = torch.tensor([len(r) for r in rows], dtype=torch.long)
        offset = width - length if side == "left" else torch.zeros_like(length)
        out["last_prompt_index"] = offset + torch.tensor([len(p) for p in prompts], dtype=torch.long) - 1
        out["template"] = torch.from_numpy(template)
        return out
