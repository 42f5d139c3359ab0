"""The held-out evaluation of stage=align (lsvcr.pipelines.align_eval) in one process: its values are
the model's own losses on the deterministic val batches, it leaves training mode and the random
number generators as they were, the collapse warning, the table and the config checks. The CLI runs
(logging, steps, resume, training unchanged) are in test_align_stage.py, 2 ranks in
test_align_distributed.py and test_deepspeed.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import REPO, TEST_TEMPLATES, run_cli
from hydra import compose, initialize_config_dir

from lsvcr.data.align_batch import AlignCollator, AugmentConfig, align_items
from lsvcr.data.builder import write_dataset
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.prompts import PromptBuilder
from lsvcr.data.samples import SplitConfig
from lsvcr.data.store import PreparedDataset
from lsvcr.data.synthetic import SyntheticConfig, generate
from lsvcr.errors import ConfigError
from lsvcr.losses.align import DIAGNOSTIC_KEYS, LOSS_KEYS, AlignmentLoss
from lsvcr.models.align import AlignmentModel
from lsvcr.pipelines import align_eval
from lsvcr.pipelines.align_engine import AccelerateEngine, Plan
from lsvcr.utils.loggers import JsonlLogger

KEYS = (*LOSS_KEYS, *DIAGNOSTIC_KEYS)
LOSS = AlignmentLoss()  # the objective the engine passes into the model's forward
TASKS = ["rec", "comm_rank"]
MICRO, SAMPLES = 4, 18  # 18 val samples asked for: 4 batches of 4 are evaluated
# SR and LoRA dropout stay on (0.1): a forward in train mode would not give the hand-computed values
SR = dict(llm_emb_size=16, hidden_size=16, num_heads=2, inner_size=32, max_position=8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    raw, _ = generate(SyntheticConfig(num_users=30, num_videos=40, seed=3, mechanisms=False))
    root = tmp_path_factory.mktemp("align_eval")
    return PreparedDataset(write_dataset(raw, root / "ds", SplitConfig("loo"))), root / "llm"


@pytest.fixture(scope="module")
def bundle(world):
    from lsvcr.models.llm.loader import TinyCausalLM

    ds, workdir = world
    spec = TinyCausalLM(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1)
    return spec.build(lambda: iter(ds.video_titles().to_pylist() + ds.comment_texts().to_pylist()), workdir)


def collator(ds, bundle, train: bool) -> AlignCollator:
    """An alignment collator over the val split; augmentation always on where it applies (p = 1)."""
    pb = PromptBuilder(TEST_TEMPLATES, bundle.tokenizer, max_prompt_tokens=96, max_response_tokens=16)
    return AlignCollator(ds, HistoryGatherer(ds, 4, 4), pb, text_max_length=24, split="val", train=train,
                         aug=AugmentConfig(sample_prob=1.0, item_prob=1.0), max_position=SR["max_position"])


def cfg_of(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["stage=align", *overrides])


@pytest.fixture(scope="module")
def setup(world, bundle):
    """(engine, held-out set, the bare model) for one process, the model in train mode."""
    ds, _ = world
    torch.manual_seed(0)
    model = AlignmentModel.from_bundle(bundle, {"num_videos": ds.num_videos, **SR})
    engine = AccelerateEngine(cfg_of(), Plan(MICRO, 1, 1, 100, 100, 100), model)
    items = align_eval.heldout_items(align_items(ds, TASKS, "val"), SAMPLES, MICRO, seed=0)
    heldout = align_eval.HeldOut(items, collator(ds, bundle, train=False), MICRO, world=1, rank=0)
    engine.model.train()
    return engine, heldout, model


def test_heldout_items_are_a_fixed_seeded_subset_of_the_val_split(world):
    ds, _ = world
    val = align_items(ds, TASKS, "val")
    items = align_eval.heldout_items(val, SAMPLES, MICRO, seed=0)
    assert len(items) == 16 and set(items[:, 0]) == {0, 1}  # whole batches; both tasks mixed in
    rows = {tuple(r) for r in val}
    assert all(tuple(r) in rows for r in items) and len({tuple(r) for r in items}) == 16
    assert np.array_equal(items, align_eval.heldout_items(val, SAMPLES, MICRO, seed=0))  # deterministic
    assert not np.array_equal(items, align_eval.heldout_items(val, SAMPLES, MICRO, seed=1))
    assert len(align_eval.heldout_items(val, 10**6, MICRO, seed=0)) == len(val) // MICRO * MICRO


def test_evaluation_equals_the_models_losses_on_the_val_batches(setup, world, bundle):
    engine, heldout, model = setup
    rng = torch.get_rng_state()
    got = align_eval.evaluate(engine, heldout)
    assert torch.equal(torch.get_rng_state(), rng)  # training's random draws are untouched
    assert model.training and all(m.training for m in model.modules())  # back in train mode
    # by hand: a fresh evaluation collator on the same items, the bare model in eval mode
    ds, _ = world
    hand = collator(ds, bundle, train=False)
    sums = dict.fromkeys(KEYS, 0.0)
    model.eval()
    with torch.no_grad():
        for b in range(len(heldout.items) // MICRO):
            out = model(hand(heldout.items[b * MICRO:(b + 1) * MICRO]), LOSS)
            for k in KEYS:
                sums[k] += float(out[k])
    model.train()
    want = {k: v / 4 for k, v in sums.items()}
    assert {k: got[k] for k in KEYS} == want  # every key, exactly
    assert got["rec_top1_chance"] == got["llm_sr_top1_chance"] == 1 / MICRO
    assert got == align_eval.evaluate(engine, heldout)  # the same batches every time
    # not vacuous: in train mode (dropout) or on augmented views the same items give other losses
    with torch.no_grad():
        train_mode = model(hand(heldout.items[:MICRO]), LOSS)["loss"].item()
        augmented = model(collator(ds, bundle, train=True)(heldout.items[:MICRO]), LOSS)["loss"].item()
        model.eval()
        first = model(hand(heldout.items[:MICRO]), LOSS)["loss"].item()
        model.train()
    assert train_mode != first and augmented != first


def test_record_logs_and_warns_on_collapse(setup, tmp_path, caplog):
    engine, heldout, _ = setup
    values = align_eval.evaluate(engine, heldout)
    logger = JsonlLogger()
    logger.start(tmp_path, {})

    def record(step: int, threshold: float):
        settings = align_eval.EvalSettings(SAMPLES, 2, False, threshold)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lsvcr"):
            entry = align_eval.record(values, step, 10, heldout, settings, tmp_path, logger)
        return entry, [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    entry, warnings = record(2, -1.0)
    assert entry["step"] == 2 and entry["samples"] == 16 and entry["llm_cosine"] == round(values["llm_cosine"], 6)
    assert [w.split(" ")[2] for w in warnings] == ["llm_cosine", "sr_cosine"]
    assert f"val llm_cosine {entry['llm_cosine']:.4f} > align.collapse_cosine=-1.0 at step 2" in warnings[0]
    assert align_eval.collapses(entry, -1.0) == [{"step": 2, "metric": k, "value": entry[k]}
                                                for k in ("llm_cosine", "sr_cosine")]
    entry4, warnings = record(4, 1.0)
    assert warnings == [] and align_eval.collapses(entry4, 1.0) == [] and align_eval.collapses(entry4, None) == []
    assert any(f"val at step 4/10 (16 samples): loss {entry['loss']:.4f}" in r.getMessage() for r in caplog.records)
    lines = [json.loads(x) for x in (tmp_path / align_eval.EVAL_FILE).read_text().splitlines()]
    assert lines == [entry, entry4]
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [2, 4]
    assert {f"val/{k}" for k in (*KEYS, "rec_top1_chance", "llm_sr_top1_chance", "samples")} == set(logged[0]) - {"step"}
    table = align_eval.eval_table(lines).splitlines()
    assert table[0].startswith("| step | samples | loss |") and len(table) == 4
    assert table[2].startswith(f"| 2 | 16 | {entry['loss']:.4f} |") and table[2].endswith("| 0.2500 |")


@pytest.mark.parametrize("override, match", [
    ("align.eval_every=0", r"align\.eval_every=0: expected a number of optimizer steps >= 1"),
    ("align.eval_every=-2", r"align\.eval_every=-2"),
    ("align.eval_samples=-1", r"align\.eval_samples=-1: expected a number of val samples >= 0"),
    ("align.collapse_cosine=1.5", r"align\.collapse_cosine=1\.5: expected a cosine in \[-1, 1\]"),
    ("align.eval_initial=3", r"align\.eval_initial=3: expected true or false"),
])
def test_bad_eval_keys_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        align_eval.eval_settings(cfg_of(override).align)


def test_eval_schedule_without_samples_is_refused_and_defaults_are_end_only():
    with pytest.raises(ConfigError, match=r"align\.eval_every=5.*align\.eval_samples=0"):
        align_eval.eval_settings(cfg_of("align.eval_samples=0", "align.eval_every=5").align)
    assert align_eval.eval_settings(cfg_of("align.eval_samples=null").align).samples == 0
    assert align_eval.eval_settings(cfg_of().align) == align_eval.EvalSettings(256, None, False, 0.95)


@pytest.mark.parametrize("override, message", [
    ("align.eval_every=0", "align.eval_every=0"),
    ("align.text_bucket_tokens=0", "align.text_bucket_tokens=0: expected a positive token budget or null"),
    ("align.standardize=1", "align.standardize=1: expected a number of training samples >= 2 or null"),
    ("align.lora_lr_scale=-0.5", "align.lora_lr_scale=-0.5: expected a number >= 0"),
    ("align.llm_stop_gradient=2", "align.llm_stop_gradient=2: expected true or false"),
    ("align.loss_warmup_steps=5", "align.loss_warmup_steps=5: nothing to warm up"),
])
def test_cli_refuses_a_bad_align_key_before_any_work(tmp_path, override, message):
    r = run_cli(["stage=align", override], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "data").exists()  # nothing prepared


@pytest.mark.parametrize("overrides, match", [
    (["align.loss_warmup_steps=0", "align.contrast_warmup=true"], r"align\.loss_warmup_steps=0: expected a number"),
    (["align.loss_warmup_steps=4"], r"align\.loss_warmup_steps=4: nothing to warm up"),
    (["align.temperature_start=1.0"], r"need align\.loss_warmup_steps=N"),
    (["align.contrast_warmup=true"], r"need align\.loss_warmup_steps=N"),
    (["align.loss_warmup_steps=4", "align.temperature_start=-1"],
     r"align\.temperature_start=-1: expected a temperature > 0"),
    (["align.loss_warmup_steps=4", "align.contrast_warmup=yes"], r"align\.contrast_warmup=yes: expected true or false"),
])
def test_bad_loss_warmup_keys_are_config_errors(overrides, match):
    from lsvcr.pipelines.align import _loss_warmup

    with pytest.raises(ConfigError, match=match):
        _loss_warmup(cfg_of(*overrides))
    assert _loss_warmup(cfg_of()) is None  # the paper's fixed values
    w = _loss_warmup(cfg_of("align.loss_warmup_steps=4", "align.temperature_start=1.0"))
    assert (w.steps, w.temperature, w.temperature_start) == (4, 0.07, 1.0)
    assert (w.contrast_weight, w.contrast_from_zero) == (0.5, False)
