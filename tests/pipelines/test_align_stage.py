"""stage=align on the real CLI: the loss falls, the checkpoint layout, the held-out evaluation (its
files, steps and collapse warning; training unchanged by it), exact resume, and the hand-over to
stage=embed and stage=finetune (init_from)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from conftest import REPO, TINY, run_cli
from lsvcr.errors import ConfigError
from lsvcr.losses.align import DIAGNOSTIC_KEYS, LOSS_KEYS
from lsvcr.models.sr.lsvcr import LSVCR
from lsvcr.pipelines.handover import load_aligned_sr

pytestmark = pytest.mark.slow
# a narrower tiny LM than the preset's: faster, and its hidden size (128) differs from the tables' 256
COMMON = [*TINY, "embed.max_length=16", "model.llm.hidden_size=128", "model.llm.intermediate_size=256"]
# 8 optimizer steps of 16 samples (2 micro-batches of 8): in-batch InfoNCE over 8 is steady enough for
# the loss to fall within a few steps at a high learning rate; English prompts are shorter
ALIGN = ["stage=align", *COMMON, "prompts=en", "align.max_prompt_tokens=512", "align.micro_batch_size=8",
         "align.grad_accum=2", "align.max_steps=8", "align.lr=3e-3", "align.log_every=2", "align.save_every=4"]
# held-out evaluation before step 1, at step 4 and at the end, on 3 val batches of 8; every val cosine
# exceeds -1, so each evaluation warns about both representations
EVAL = ["align.eval_samples=24", "align.eval_every=4", "align.eval_initial=true"]
COLLAPSE_LOW = "align.collapse_cosine=-1"
VAL_KEYS = (*LOSS_KEYS, *DIAGNOSTIC_KEYS)
ENV = {"OMP_NUM_THREADS": "1"}  # torch threads oversubscribe the shared cores otherwise


def cli(args: list[str], out: Path, run: Path):
    r = run_cli([*args, f"hydra.run.dir={run}"], out, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout + r.stderr  # the log goes to stdout, warnings and progress bars to stderr


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """One tiny `lsvcr stage=align` run: (output dir, run dir)."""
    out = tmp_path_factory.mktemp("align")
    cli([*ALIGN, *EVAL, COLLAPSE_LOW], out, out / "align_run")
    return out, out / "align_run"


def _evals(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "align_eval.jsonl").read_text().splitlines()]


def test_total_loss_falls_and_every_part_is_logged(aligned):
    _, run = aligned
    losses = json.loads((run / "losses.json").read_text())
    assert [e["step"] for e in losses] == [2, 4, 6, 8]
    for e in losses:
        assert {"loss", "lm_loss", "rec_loss", "contrast_loss", "behaviour_loss", "llm_sr_loss", "lr"} <= set(e)
        assert e["loss"] == pytest.approx(e["lm_loss"] + e["rec_loss"] + 0.5 * e["contrast_loss"], rel=1e-4)
        assert 0 <= e["rec_top1"] <= 1 and 0 <= e["llm_sr_top1"] <= 1  # diagnostics logged with the losses
        assert -1 <= e["sr_cosine"] <= 1 and -1 <= e["llm_cosine"] <= 1
    assert losses[-1]["loss"] < losses[0]["loss"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "train/loss" in m] == [2, 4, 6, 8]
    summary = json.loads((run / "align.json").read_text())
    assert summary["steps"] == 8 and summary["steps_per_second"] > 0 and summary["peak_rss_mb"] > 0


def test_heldout_evaluation_is_logged_at_its_steps(aligned):
    _, run = aligned
    evals = _evals(run)
    assert [e["step"] for e in evals] == [0, 4, 8]
    for e in evals:
        assert e["samples"] == 24 and set(VAL_KEYS) <= set(e)
        assert e["rec_top1_chance"] == e["llm_sr_top1_chance"] == 1 / 8  # 8 in-batch candidates
        assert e["loss"] == pytest.approx(e["lm_loss"] + e["rec_loss"] + 0.5 * e["contrast_loss"], rel=1e-4)
    assert evals[-1]["loss"] < evals[0]["loss"]  # the trained model does better on samples it never saw
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in logged if "val/loss" in m]
    assert [m["step"] for m in val] == [0, 4, 8]
    assert all(m[f"val/{k}"] == e[k] for m, e in zip(val, evals) for k in (*VAL_KEYS, "rec_top1_chance"))
    table = (run / "align_eval.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 0", "| 4", "| 8"]
    assert f"| {evals[-1]['loss']:.4f} |" in rows[-1]
    summary = json.loads((run / "align.json").read_text())
    assert summary["val"] == evals[-1] and summary["evaluations"] == 3 and summary["eval_seconds"] > 0
    text = (run / "main.log").read_text()
    assert text.count("val at step ") == 3 and "val at step 4/8 (24 samples): loss " in text
    assert "held-out evaluation (val split, 24 samples):" in text and rows[-1] in text  # the table in the log


def test_collapse_warning_names_metric_value_and_step(aligned):
    _, run = aligned
    text, evals = (run / "main.log").read_text(), _evals(run)
    for e in evals:
        for k in ("llm_cosine", "sr_cosine"):
            assert f"collapse: val {k} {e[k]:.4f} > align.collapse_cosine=-1.0 at step {e['step']}" in text
    summary = json.loads((run / "align.json").read_text())
    assert summary["collapse_cosine"] == -1.0
    assert summary["collapse"] == [{"step": e["step"], "metric": k, "value": e[k]}
                                   for e in evals for k in ("llm_cosine", "sr_cosine")]


def test_evaluation_does_not_change_training(aligned):
    out, run = aligned
    plain = out / "no_eval"
    text = cli([*ALIGN, "align.eval_samples=0"], out, plain)
    assert "val at step" not in text and not (plain / "align_eval.jsonl").exists()
    assert json.loads((plain / "losses.json").read_text()) == json.loads((run / "losses.json").read_text())
    a, b = (load_file(d / "align" / "modules.safetensors") for d in (run, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((plain / "align.json").read_text())["val"] is None


def test_loss_warmup_trains_on_its_ramp_and_evaluates_and_saves_the_final_values(aligned):
    """align.loss_warmup_steps=16 (longer than the 8-step run, so it ends mid-ramp): each logged step
    records the temperature and contrast weight it trained with; the held-out evaluations and the
    checkpoints use the final ones (0.07, 0.5), so step 0 is the plain run's."""
    from lsvcr.losses.warmup import LossWarmup

    out, run = aligned
    warm = out / "warmup"
    text = cli([*ALIGN, *EVAL, "align.loss_warmup_steps=16", "align.temperature_start=1.0",
                "align.contrast_warmup=true"], out, warm)
    assert "loss warm-up over 16 optimizer steps: temperature 1 -> 0.07, contrast weight 0 -> 0.5" in text
    ramp = LossWarmup(16, 0.07, 0.5, temperature_start=1.0, contrast_from_zero=True)
    losses = json.loads((warm / "losses.json").read_text())
    for e in losses:  # a window's last micro-batches belong to its step, trained with the ramp's values after step - 1
        t, w = ramp.at(e["step"] - 1)
        assert (e["temperature"], e["contrast_weight"]) == (round(t, 6), round(w, 6))
    assert losses != json.loads((run / "losses.json").read_text())
    evals, plain = _evals(warm), _evals(run)
    assert evals[0] == plain[0]  # evaluated before any step, with the final values: the plain run's step 0
    for e in evals:
        assert e["loss"] == pytest.approx(e["lm_loss"] + e["rec_loss"] + 0.5 * e["contrast_loss"], rel=1e-4)
    for ckpt in (warm / "align_step4", warm / "align"):
        meta = json.loads((ckpt / "alignment.json").read_text())
        assert (meta["temperature"], meta["contrast_weight"]) == (0.07, 0.5)


def test_checkpoint_layout(aligned):
    _, run = aligned
    for ckpt in (run / "align", run / "align_step4"):
        names = {p.name for p in ckpt.iterdir()}
        assert {"lora", "modules.safetensors", "tokenizer", "alignment.json", "config.yaml",
                "trainer_state.json", "trainer.pt"} <= names
        assert (ckpt / "lora" / "adapter_model.safetensors").exists()
        assert (ckpt / "tokenizer" / "tokenizer.json").exists()
    assert json.loads((run / "align" / "trainer_state.json").read_text())["step"] == 8
    state = load_file(run / "align" / "modules.safetensors")
    assert {k.split(".")[0] for k in state} == {"sr", "llm_emb_mlp", "contrast_adapter"}
    assert not any(k.startswith("sr.id_embedding") for k in state)  # alignment has no ID embeddings


def test_resumed_run_matches_uninterrupted(aligned):
    out, run = aligned
    resumed = out / "resumed"
    # a collapse threshold no cosine exceeds: no warning (the threshold does not touch training)
    text = cli([*ALIGN, *EVAL, "align.collapse_cosine=1.0", f"align.resume={run / 'align_step4'}"], out, resumed)
    assert f"resumed {run / 'align_step4'} at step 4 of 8" in text
    want, got = (json.loads((d / "losses.json").read_text()) for d in (run, resumed))
    assert [e["step"] for e in got] == [2, 4, 6, 8]
    assert got == want  # steps 6 and 8 recomputed after the resume: the same values
    # evaluations 0 and 4 come from the checkpoint, 8 is recomputed on the same weights
    assert _evals(resumed) == _evals(run) and text.count("val at step ") == 1
    assert "collapse:" not in text and json.loads((resumed / "align.json").read_text())["collapse"] == []
    a, b = (load_file(d / "align" / "modules.safetensors") for d in (run, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_embed_and_finetune_start_from_the_alignment(aligned):
    out, run = aligned
    cli(["stage=embed", *COMMON], out, out / "embed_base")
    cli(["stage=embed", *COMMON, f"init_from={run}"], out, out / "embed_aligned")
    base, tuned = (json.loads((out / d / "embed.json").read_text()) for d in ("embed_base", "embed_aligned"))
    assert base["tables_dir"] != tuned["tables_dir"]
    manifest = json.loads((Path(tuned["tables_dir"]) / "embed_manifest.json").read_text())
    assert manifest["checkpoint"] == str(run.resolve())
    for table in ("videos.npy", "comments.npy"):
        a, b = np.load(Path(base["tables_dir"]) / table), np.load(Path(tuned["tables_dir"]) / table)
        assert a.shape == b.shape and np.isfinite(b).all() and not np.allclose(a, b)
    # epochs=0: the selected weights are exactly what the hand-over loaded
    text = cli(["stage=finetune", "task=rec", "model/sr=lsvcr", *COMMON, f"init_from={run}",
                "finetune.epochs=0"], out, out / "finetune")
    assert "text tables: reusing" in text and "starts from the aligned SR" in text
    loaded = load_file(out / "finetune" / "best" / "model.safetensors")
    aligned_state = load_file(run / "align" / "modules.safetensors")
    shared = [k for k in aligned_state if k.startswith("sr.")]
    assert shared and all(torch.equal(loaded[k], aligned_state[k]) for k in shared)
    assert set(loaded) - set(aligned_state) == {"sr.id_embedding.weight", "sr.gate"}  # fresh ID embeddings only
    assert json.loads((out / "finetune" / "metrics.json").read_text())["results"]["test"]["full"]["count"] > 0


def _cfg(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["model/sr=lsvcr", *COMMON, *overrides])


def test_init_from_errors_name_the_setting(aligned, tmp_path):
    _, run = aligned
    cfg = _cfg()
    with pytest.raises(ConfigError, match=rf"init_from={tmp_path}: no alignment checkpoint"):
        load_aligned_sr(cfg, LSVCR(200), tmp_path, None)
    with pytest.raises(ConfigError, match=r"init_from=.*does not fit model/sr=lsvcr"):
        load_aligned_sr(_cfg("model.sr.hidden_size=32"), LSVCR(200, hidden_size=32), run, None)
    # a table of raw hidden states (wider than the SR's input) goes through the aligned llm_emb_mlp
    hidden = json.loads((run / "align" / "alignment.json").read_text())["llm_hidden_size"]
    assert load_aligned_sr(cfg, LSVCR(200), run, table_width=256) is None
    projection = load_aligned_sr(cfg, LSVCR(200, max_position=60), run, table_width=hidden)
    assert projection(torch.zeros(3, hidden)).shape == (3, 256)


def test_standardized_alignment_hands_its_statistics_to_embed_and_finetune(aligned):
    """align.standardize: the fitted statistics are saved with the checkpoint; stage=embed of the
    aligned LLM writes llm_emb_mlp(standardised pooled state), and the hand-over of a table of raw
    pooled states standardises them the same way before the aligned llm_emb_mlp."""
    out, _ = aligned
    run = out / "align_std"
    text = cli([*ALIGN, "align.max_steps=2", "align.save_every=null", "align.standardize=16",
                "align.eval_samples=0"], out, run)
    assert "align.standardize=16: statistics of 16 samples' prompts and" in text
    assert json.loads((run / "align" / "alignment.json").read_text())["standardize"] is True
    state = load_file(run / "align" / "modules.safetensors")
    assert {k.split(".")[0] for k in state} == {"sr", "llm_emb_mlp", "contrast_adapter", "text_norm", "prompt_norm"}
    mean, std = state["text_norm.mean"].double(), state["text_norm.std"].double()
    cli(["stage=embed", *COMMON, f"init_from={run}", "embed.hidden_table=true"], out, out / "embed_std")
    tables = Path(json.loads((out / "embed_std" / "embed.json").read_text())["tables_dir"])
    raw = torch.from_numpy(np.load(tables / "videos_hidden.npy")[1:]).double()
    # statistics of the training samples' texts describe the whole title table: standardised, its
    # features are centred and of unit spread (roughly: the samples' texts are a subset, weighted by use)
    z = (raw - mean) / std
    assert z.mean(dim=0).abs().mean() < 0.5 and 0.5 < z.std(dim=0).mean() < 1.5
    assert not torch.allclose(std, torch.ones_like(std), atol=1e-2)  # fitted, not the identity
    mlp = {k.removeprefix("llm_emb_mlp."): v for k, v in state.items() if k.startswith("llm_emb_mlp.")}
    expected = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(
        z.float(), mlp["0.weight"], mlp["0.bias"])), mlp["2.weight"], mlp["2.bias"])
    torch.testing.assert_close(torch.from_numpy(np.load(tables / "videos.npy")[1:]), expected, rtol=1e-4, atol=1e-5)
    projection = load_aligned_sr(_cfg(), LSVCR(200, max_position=60), run, table_width=raw.shape[1])
    torch.testing.assert_close(projection(raw.float()), expected, rtol=1e-4, atol=1e-5)


def test_align_needs_the_lsvcr_sr(tmp_path):
    r = run_cli(["stage=align", "model/sr=sasrec", *COMMON], tmp_path, env=ENV)
    assert r.returncode == 2 and "model/sr=sasrec" in r.stderr
