"""Alignment prompts: template files, labels, padding sides, history truncation, template choice."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lsvcr.data.prompts import PromptBuilder, PromptExample, PromptTemplates
from lsvcr.models.llm.tokenizer import BPETokenizerTrainer

CONF = Path(__file__).resolve().parents[2] / "conf" / "prompts"
SHORT = {
    "numbering": "{index}. ",
    "video_item": "{title}; {comment}",
    "comment_item": "{title}; {comments}",
    "comment_join": " | ",
    "no_comment": "none",
    "empty_history": "empty",
    "templates": {
        "rec": ["V:\n{video_history}\nC:\n{comment_history}\nNEXT VIDEO:",
                "C:\n{comment_history}\nV:\n{video_history}\nNEXT VIDEO:"],
        "comm_rank": ["V:\n{video_history}\nC:\n{comment_history}\nWATCHING {target_title} COMMENT:",
                      "C:\n{comment_history}\nV:\n{video_history}\nWATCHING {target_title} COMMENT:"],
    },
}


def example(n_video: int = 3, n_comment: int = 2, task: str = "rec") -> PromptExample:
    return PromptExample(
        task=task,
        video_items=[(f"vid{i:02d} title", f"hot{i:02d}") for i in range(n_video)],
        comment_items=[(f"cv{i:02d} title", [f"mine{i:02d}a", f"mine{i:02d}b"]) for i in range(n_comment)],
        target_title="watching now",
        response="the answer",
    )


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [SHORT["templates"]["rec"][0], SHORT["templates"]["comm_rank"][0], example(20, 20).response, "none empty"]
    corpus += [f"vid{i:02d} title hot{i:02d} cv{i:02d} mine{i:02d}a | mine{i:02d}b {i}. watching now" for i in range(20)]
    return BPETokenizerTrainer(min_frequency=1).train(corpus * 3, vocab_size=400, padding_side="left")


def builder(tok, side: str = "left", max_prompt: int = 512, max_response: int = 16) -> PromptBuilder:
    tok = copy.copy(tok)
    tok.padding_side = side
    return PromptBuilder(SHORT, tok, max_prompt, max_response)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_config_templates_load_and_order_histories_both_ways(lang, tokenizer):
    raw = OmegaConf.to_container(OmegaConf.load(CONF / f"{lang}.yaml"))
    t = PromptTemplates.from_dict(raw)
    assert t.language == lang
    for task in ("rec", "comm_rank"):
        first, second = t.templates[task]
        assert first.index("{video_history}") < first.index("{comment_history}")
        assert second.index("{comment_history}") < second.index("{video_history}")
    pb = PromptBuilder(raw, tokenizer, 4096, 16)
    text = pb.render(example(2, 1, "comm_rank"), 0)
    assert "1. " in text and "2. " in text and "watching now" in text and "mine00a" in text and "hot01" in text
    if lang == "zh":
        assert "推荐" in pb.render(example(), 0) and "评论" in text


def test_template_validation_names_the_key(tokenizer):
    bad = copy.deepcopy(SHORT)
    bad["templates"]["comm_rank"][1] = "C:{comment_history} V:{video_history}"  # no {target_title}
    with pytest.raises(ValueError, match=r"templates\.comm_rank\[1\]"):
        PromptTemplates.from_dict(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        PromptTemplates.from_dict({**SHORT, "extra": 1})
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PromptBuilder(SHORT, tokenizer, max_prompt_tokens=3, max_response_tokens=4)


def test_empty_history_and_missing_comment_phrases(tokenizer):
    pb = builder(tokenizer)
    ex = PromptExample("rec", [("vid00 title", "")], [], "", "x")
    assert pb.render(ex, 0) == "V:\n1. vid00 title; none\nC:\nempty\nNEXT VIDEO:"


@pytest.mark.parametrize("side", ["left", "right"])
def test_labels_mask_prompt_and_padding_and_last_prompt_index(tokenizer, side):
    pb = builder(tokenizer, side)
    examples = [example(1, 0), example(4, 3, "comm_rank")]
    out = pb.build(examples)
    ids, mask, labels, last = out["input_ids"], out["attention_mask"], out["labels"], out["last_prompt_index"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 2
    for i, ex in enumerate(examples):
        prompt = pb.prompt_ids(ex, 0)
        response = pb.response_ids(ex)
        assert response[-1] == tokenizer.eos_token_id
        real = mask[i].bool()
        assert ids[i][real].tolist() == prompt + response
        assert (ids[i][~real] == tokenizer.pad_token_id).all() and (labels[i][~real] == -100).all()
        assert labels[i][real].tolist() == [-100] * len(prompt) + response
        # last_prompt_index: the last prompt token, and the next column is the first response token
        assert ids[i, last[i]].item() == prompt[-1]
        assert labels[i, last[i]].item() == -100 and labels[i, last[i] + 1].item() == response[0]
    short = 0
    if side == "left":
        assert not mask[short, 0] and mask[short, -1]
    else:
        assert mask[short, 0] and not mask[short, -1]


def test_history_truncated_from_oldest_end_keeps_instruction_and_response(tokenizer):
    ex = example(20, 20, "comm_rank")
    full = builder(tokenizer)
    n_full = len(full.prompt_ids(ex, 0))
    budget = n_full // 3
    pb = builder(tokenizer, max_prompt=budget, max_response=16)
    prompt = pb.prompt_ids(ex, 0)
    assert len(prompt) <= budget
    text = tokenizer.decode(prompt)
    assert text.startswith("V:\n1. ") and text.endswith("WATCHING watching now COMMENT:")
    kept_v = [i for i in range(20) if f"vid{i:02d}" in text]
    kept_c = [i for i in range(20) if f"cv{i:02d}" in text]
    # a suffix (most recent items) of each history, both still present, renumbered from 1
    assert kept_v == list(range(20 - len(kept_v), 20)) and kept_c == list(range(20 - len(kept_c), 20))
    assert 0 < len(kept_v) < 20 and 0 < len(kept_c) < 20
    assert f"1. vid{kept_v[0]:02d}" in text and f"1. cv{kept_c[0]:02d}" in text
    # the response is never cut for the history's sake
    out = pb.build([ex])
    labels = out["labels"][0]
    assert labels[labels != -100].tolist() == pb.response_ids(ex)
    # long responses are cut to max_response_tokens (+ EOS)
    long = PromptExample("rec", [], [], "", " ".join(["the answer"] * 30))
    assert len(pb.response_ids(long)) == 17


def test_template_choice_random_in_training_fixed_in_evaluation(tokenizer):
    pb = builder(tokenizer)
    tasks = ["rec", "comm_rank"] * 50
    assert (pb.choose_templates(tasks, None) == 0).all()
    a = pb.choose_templates(tasks, np.random.default_rng(3))
    b = pb.choose_templates(tasks, np.random.default_rng(3))
    assert (a == b).all() and set(a.tolist()) == {0, 1}
    out = pb.build([example(2, 2)] * 8, np.random.default_rng(0))
    rows = {tuple(r[m.bool()].tolist()) for r, m in zip(out["input_ids"], out["attention_mask"])}
    assert len(rows) == 2 and set(out["template"].tolist()) == {0, 1}
