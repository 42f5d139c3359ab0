"""Alignment losses against hand-computed values, and the alignment model on a tiny world:
optimisation, gradient paths, gradient checkpointing, checkpoint round trip and key checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from lsvcr.data.align_batch import AlignCollator, AugmentConfig, align_items
from lsvcr.data.builder import write_dataset
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.prompts import PromptBuilder
from lsvcr.data.samples import SplitConfig
from lsvcr.data.store import PreparedDataset
from lsvcr.data.synthetic import SyntheticConfig, generate
from lsvcr.losses.align import (
    AlignmentLoss,
    alignment_losses,
    global_mean,
    masked_behaviour_contrast,
    response_lm_loss,
)
from lsvcr.models.align import AlignmentModel, load_alignment, load_sr_for_finetune, save_alignment
from lsvcr.models.llm.text_encoder import Standardizer
from lsvcr.models.sr.lsvcr import LSVCR, SRReadouts

from conftest import TEST_TEMPLATES, spawn_workers

TEMPLATES = TEST_TEMPLATES
SR = dict(llm_emb_size=16, hidden_size=16, num_heads=2, inner_size=32, max_position=8)
LOSS = AlignmentLoss()  # the objective the alignment stage passes into the model's forward


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------- losses, hand-computed


def test_global_mean_single_process():
    assert global_mean(torch.tensor(6.0), 3).item() == 2.0
    assert global_mean(torch.tensor(0.0), 0).item() == 0.0


def test_response_lm_loss_hand_computed():
    # vocab 2, identity head: position t's hidden state is its logits and predicts label t+1
    hidden = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)], [math.log(4), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[-100, -100, 1, 0]])
    want = (math.log(4 / 3) + math.log(5 / 4)) / 2
    assert response_lm_loss(hidden, labels, lambda h: h).item() == pytest.approx(want, rel=1e-6)


def test_masked_behaviour_contrast_hand_computed():
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    anchor, pos, neg = torch.tensor([e0, e1, e0]), torch.tensor([e0, e0, e1]), torch.tensor([e1, e1, e0])
    mask = torch.tensor([True, True, False])
    want = (softplus(-2.0) + softplus(2.0)) / 2  # temperature 0.5: logits (2, 0) and (0, 2); row 2 left out
    assert masked_behaviour_contrast(anchor, pos, neg, mask, 0.5).item() == pytest.approx(want, rel=1e-6)
    assert masked_behaviour_contrast(anchor, pos, neg, torch.zeros(3, dtype=torch.bool), 0.5).item() == 0.0


@pytest.mark.parametrize("has", [(True, False), (False, True)])
def test_alignment_losses_hand_computed(has):
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    t = lambda *rows: torch.tensor(rows)  # noqa: E731
    # sample 0 is rec (repr = video_pool), sample 1 comm_rank (repr = comment_query); temperature 1
    readouts = SRReadouts(video_pool=t(e0, [3.0, 3.0]), video_query=t([5.0, 1.0], e0),
                          comment_pool=t(e1, [1.0, -1.0]), comment_query=t([2.0, 7.0], e1))
    llm = t(e0, e0)
    out = alignment_losses(llm, readouts, t(e0, e1), torch.tensor([0, 1]), torch.tensor(has), 1.0)
    # sr = (e0, e1); rec: logits (1, 0) and (0, 1), positives on the diagonal
    assert out["rec_loss"].item() == pytest.approx(softplus(-1.0), rel=1e-6)
    sr_to_llm = math.log(2)  # each sr row sees two equal llm keys
    llm_to_sr = (softplus(-1.0) + softplus(1.0)) / 2
    assert out["llm_sr_loss"].item() == pytest.approx((sr_to_llm + llm_to_sr) / 2, rel=1e-6)
    # rec row: e0 vs video_pool e0 (pos) and comment_pool e1 (neg); comm row: e0 vs
    # comment_query e1 (pos) and video_query e0 (neg); only rows with a comment history count
    want = softplus(-1.0) if has[0] else softplus(1.0)
    assert out["behaviour_loss"].item() == pytest.approx(want, rel=1e-6)
    assert out["contrast_loss"].item() == pytest.approx(want + out["llm_sr_loss"].item(), rel=1e-6)
    # diagnostics: each sr row retrieves its own key; against two equal llm keys every row ties (a miss);
    # the sr rows are orthogonal, the llm rows identical (collapsed)
    assert (out["rec_top1"].item(), out["llm_sr_top1"].item()) == (1.0, 0.0)
    assert out["sr_cosine"].item() == pytest.approx(0.0, abs=1e-7) and out["llm_cosine"].item() == pytest.approx(1.0)


# ---------------------------------------------------------------- 2 processes, unequal shards

SIZES = (3, 2)


def _full_inputs():
    """Every loss input of 5 samples; rank 1's rows have no comment history at all."""
    g = torch.Generator().manual_seed(2)
    n = sum(SIZES)
    vecs = [torch.randn(n, 4, generator=g, dtype=torch.float64) for _ in range(6)]
    hidden = torch.randn(n, 5, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 0, 1, 2], [-100, 2, 1, 0, 0], [-100, -100, -100, 1, -100],
                           [-100, -100, 2, 2, -100], [-100, -100, -100, -100, 0]])
    task, has = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([True, True, False, False, False])
    return vecs, hidden, labels, task, has


def _total(vecs, hidden, labels, task, has) -> torch.Tensor:
    llm, vp, vq, cp, cq, key = vecs
    out = alignment_losses(llm, SRReadouts(vp, vq, cp, cq), key, task, has, 0.5)
    return out["rec_loss"] + out["contrast_loss"] + response_lm_loss(hidden, labels, lambda h: h)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        vecs, hidden, labels, task, has = _full_inputs()
        rows = slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))
        vecs = [v[rows].clone().requires_grad_() for v in vecs]
        hidden = hidden[rows].clone().requires_grad_()
        loss = _total(vecs, hidden, labels[rows], task[rows], has[rows])
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        llm, vp, vq, cp, cq, key = vecs
        out = alignment_losses(llm, SRReadouts(vp, vq, cp, cq), key, task[rows], has[rows], 0.5)
        diagnostics = {k: out[k].clone() for k in ("rec_top1", "sr_cosine", "llm_cosine")}
        for v in diagnostics.values():
            dist.all_reduce(v)
        torch.save({"mean_loss": total / world, "grads": [v.grad for v in vecs] + [hidden.grad],
                    "cosines": [out["sr_cosine"], out["llm_cosine"]],  # this rank's own value
                    **{k: v / world for k, v in diagnostics.items()}}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_alignment_losses_match_single_process(tmp_path):
    world = len(SIZES)
    spawn_workers(_worker, (world, str(tmp_path / "init"), str(tmp_path)), world)
    vecs, hidden, labels, task, has = _full_inputs()
    leaves = [v.requires_grad_() for v in vecs] + [hidden.requires_grad_()]
    single = _total(vecs, hidden, labels, task, has)
    single.backward()
    for rank in range(world):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))
        assert out["mean_loss"].item() == pytest.approx(single.item(), abs=1e-9)
        # the in-batch accuracy over unequal shards, averaged over ranks, is the one-process share;
        # the collapse cosines are those of all ranks' rows, on every rank
        llm, vp, vq, cp, cq, key = vecs
        want = alignment_losses(llm, SRReadouts(vp, vq, cp, cq), key, task, has, 0.5)
        for k in ("rec_top1", "sr_cosine", "llm_cosine"):
            assert out[k].item() == pytest.approx(want[k].item(), abs=1e-12), k
        assert [c.item() for c in out["cosines"]] == pytest.approx([want["sr_cosine"].item(),
                                                                    want["llm_cosine"].item()], abs=1e-12)
        for got, leaf in zip(out["grads"], leaves):  # DDP divides the sum over ranks by world
            assert (got / world - leaf.grad[rows]).abs().max() < 1e-9


# ---------------------------------------------------------------- the model on a tiny world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    raw, _ = generate(SyntheticConfig(num_users=30, num_videos=40, seed=3, mechanisms=False))
    root = tmp_path_factory.mktemp("align_model")
    ds = PreparedDataset(write_dataset(raw, root / "ds", SplitConfig("loo")))
    return ds, root / "llm"


def make_bundle(world, **spec_kw):
    """The tiny causal LM of these tests; ``spec_kw`` are further :class:`TinyCausalLM` fields (e.g. ``lora``)."""
    from lsvcr.models.llm.loader import TinyCausalLM  # here, so the spawned workers above never import transformers

    ds, workdir = world
    spec = TinyCausalLM(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1,
                        **spec_kw)
    return spec.build(lambda: iter(ds.video_titles().to_pylist() + ds.comment_texts().to_pylist()), workdir)


def make_model(world, seed=0, **kw) -> AlignmentModel:
    torch.manual_seed(seed)
    return AlignmentModel.from_bundle(make_bundle(world), {"num_videos": world[0].num_videos, **SR}, **kw)


def collator_and_items(world) -> tuple[AlignCollator, np.ndarray]:
    """An evaluation collator and 6 sample rows (3 rec, then 3 comm_rank)."""
    ds, _ = world
    bundle = make_bundle(world)
    pb = PromptBuilder(TEMPLATES, bundle.tokenizer, max_prompt_tokens=96, max_response_tokens=16)
    col = AlignCollator(ds, HistoryGatherer(ds, 4, 4), pb, text_max_length=24, aug=AugmentConfig(), train=False)
    items = align_items(ds, ["rec", "comm_rank"])
    rng = np.random.default_rng(0)
    return col, np.concatenate([rng.choice(items[items[:, 0] == t], 3, replace=False) for t in (0, 1)])


@pytest.fixture(scope="module")
def batch(world):
    col, items = collator_and_items(world)
    return col(items)


def eval_losses(model, batch) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return {k: v.item() for k, v in model(batch, LOSS).items()}


def train_steps(model, batch, steps: int, lr: float = 1e-2) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(batch, LOSS)["loss"].backward()
        opt.step()


def test_optimisation_reduces_total_loss(world, batch):
    model = make_model(world)
    before = eval_losses(model, batch)
    assert batch.has_comment_history.any() and set(batch.task.tolist()) == {0, 1}
    assert all(math.isfinite(v) for v in before.values())
    assert before["loss"] == pytest.approx(before["lm_loss"] + before["rec_loss"] + 0.5 * before["contrast_loss"], rel=1e-5)
    train_steps(model, batch, 4)
    after = eval_losses(model, batch)
    assert after["loss"] < before["loss"] - 0.3
    assert after["rec_loss"] < before["rec_loss"] and after["contrast_loss"] < before["contrast_loss"]


def test_sr_gradients_reach_lora_through_the_text_encoder(world, batch):
    model = make_model(world).train()
    model(batch, LOSS)["rec_loss"].backward()  # the LLM reaches rec_loss only through the item texts
    lora = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and any(g is not None and g.abs().sum() > 0 for g in lora)
    assert model.contrast_adapter.weight.grad is None
    assert model.llm_emb_mlp[0].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(world, batch):
    grads = []
    for gc in (False, True):
        model = make_model(world, gradient_checkpointing=gc).train()
        assert model.llm.get_base_model().is_activation_checkpointing == gc
        torch.manual_seed(7)
        model(batch, LOSS)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    # LoRA A gets no gradient while B is zero; B, the SR and the MLPs do
    assert any("lora_B" in n and g.abs().sum() > 0 for n, g in grads[0].items())
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


def test_save_load_round_trip_and_finetune_export(world, batch, tmp_path):
    model = make_model(world)
    train_steps(model, batch, 2)  # LoRA B leaves zero, so the adapter matters
    want = eval_losses(model, batch)
    out = save_alignment(model, tmp_path / "align")
    assert {p.name for p in out.iterdir()} >= {"lora", "modules.safetensors", "tokenizer", "alignment.json"}
    loaded = load_alignment(out, make_bundle(world))
    assert eval_losses(loaded, batch) == pytest.approx(want, rel=1e-5)
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "lora_" in n)
    resumed = load_alignment(out, make_bundle(world), trainable=True)
    assert any(p.requires_grad for n, p in resumed.named_parameters() if "lora_" in n)
    sr_state, mlp_state, norm_state = load_sr_for_finetune(out)
    assert norm_state is None  # align.standardize was off
    finetune_sr = LSVCR(world[0].num_videos, **SR, use_ids=True)
    finetune_sr.load_aligned(sr_state)
    assert torch.equal(finetune_sr.adapter.weight, model.sr.adapter.weight)
    assert mlp_state.keys() == model.llm_emb_mlp.state_dict().keys()


def test_llm_stop_gradient_keeps_the_contrast_losses_off_the_llm_side(world, batch):
    plain, stopped = make_quiet_model(world).train(), make_quiet_model(world, llm_stop_gradient=True).train()
    train_steps(plain, batch, 1)  # LoRA B leaves zero, so LoRA A has gradients to lose
    stopped.load_state_dict(plain.state_dict())
    loss, grads = _loss_and_grads(plain, batch)
    stopped_loss, stopped_grads = _loss_and_grads(stopped, batch)
    assert stopped_loss == pytest.approx(loss, rel=1e-6)  # the same forward
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("contrast_adapter."))
    assert all(not g.any() for n, g in stopped_grads.items() if n.startswith("contrast_adapter."))
    for n, g in grads.items():  # the SR side learns exactly as before
        if n.startswith("sr."):
            torch.testing.assert_close(stopped_grads[n], g, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(stopped_grads[n], g) for n, g in grads.items() if "lora_" in n)


# ---------------------------------------------------------------- align.standardize


def test_standardizer_fits_from_moments_summed_over_chunks():
    torch.manual_seed(0)
    x = torch.randn(300, 6) * torch.tensor([0.3, 1.0, 2.0, 0.5, 1.0, 0.0]) + torch.tensor([27.0, -3, 0, 10, 0, 4])
    norm = Standardizer(6)
    assert torch.equal(norm(x), x)  # the identity until fitted
    norm.fit(sum(Standardizer.moments(part) for part in x.split(70)))  # e.g. batches, or processes' shares
    torch.testing.assert_close(norm.mean, x.mean(dim=0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(norm.std[:5], x.std(dim=0, unbiased=False)[:5], rtol=1e-4, atol=1e-5)
    assert norm.std[5] == norm.eps  # a constant feature: floored, not a division by zero
    z = norm(x)
    torch.testing.assert_close(z.mean(dim=0), torch.zeros(6), rtol=0, atol=1e-4)
    torch.testing.assert_close(z.std(dim=0, unbiased=False)[:5], torch.ones(5), rtol=0, atol=1e-4)
    half = norm(x.bfloat16())  # float32 arithmetic, the input's precision out
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="at least 2 rows"):
        norm.fit(Standardizer.moments(x[:1]))


def test_standardized_model_fits_saves_and_hands_over_its_statistics(world, batch, tmp_path):
    plain, model = make_model(world), make_model(world, standardize=True)
    assert plain.prompt_norm is None and plain.text_encoder.text_norm is None
    assert eval_losses(model, batch) == pytest.approx(eval_losses(plain, batch), rel=1e-6)  # identity before fit
    with pytest.raises(ValueError, match="without standardize"):
        plain.fit_standardizers(torch.zeros(2, 65, dtype=torch.float64))
    model.eval()
    moments = model.standardizer_moments(batch)
    # the texts are counted per read, so batches of 3 samples sum to the batch of 6 (which holds a text
    # two samples share once): the statistics do not depend on micro-batches or processes
    col, items = collator_and_items(world)
    halves = [model.standardizer_moments(col(part)) for part in (items[[0, 3, 4]], items[[1, 2, 5]])]
    torch.testing.assert_close(halves[0] + halves[1], moments, rtol=1e-9, atol=1e-6)
    assert moments[1, -1] > batch.item_ids.shape[0]  # more reads than distinct texts
    assert moments[0, -1] == batch.batch_size  # one last-prompt state per sample
    model.fit_standardizers(moments)
    pooled = model.text_encoder.pooled(batch.item_ids, batch.item_mask)
    text_norm = model.text_encoder.text_norm
    assert not torch.allclose(text_norm.mean, pooled.mean(dim=0), atol=1e-4)  # weighted by reads
    # the SR reads llm_emb_mlp of the standardised states
    torch.testing.assert_close(model.text_encoder.project(pooled),
                               model.llm_emb_mlp((pooled - text_norm.mean) / text_norm.std))
    want = eval_losses(model, batch)
    assert want != pytest.approx(eval_losses(plain, batch), rel=1e-4)
    out = save_alignment(model, tmp_path / "align")
    loaded = load_alignment(out, make_bundle(world))
    assert loaded.standardize and eval_losses(loaded, batch) == pytest.approx(want, rel=1e-5)
    assert torch.equal(loaded.prompt_norm.std, model.prompt_norm.std)
    _, _, norm_state = load_sr_for_finetune(out)
    assert torch.equal(norm_state["mean"], text_norm.mean) and torch.equal(norm_state["std"], text_norm.std)
    state = load_file(out / "modules.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("prompt_norm.")}, out / "modules.safetensors")
    with pytest.raises(ValueError, match="text_norm. without"):
        load_sr_for_finetune(out)


def test_load_rejects_keys_that_do_not_fit(world, batch, tmp_path):
    out = save_alignment(make_model(world), tmp_path / "align")
    modules = out / "modules.safetensors"
    good = load_file(modules)
    save_file({**good, "sr.unknown.weight": torch.zeros(2)}, modules)
    with pytest.raises(ValueError, match=r"unexpected \['sr.unknown.weight'\]"):
        load_alignment(out, make_bundle(world))
    save_file({**good, "decoder.weight": torch.zeros(2)}, modules)
    with pytest.raises(ValueError, match="decoder.weight"):
        load_sr_for_finetune(out)
    save_file({k: v for k, v in good.items() if k != "contrast_adapter.bias"}, modules)
    with pytest.raises(ValueError, match=r"missing \['contrast_adapter.bias'\]"):
        load_alignment(out, make_bundle(world))
    save_file(good, modules)
    adapter = out / "lora" / "adapter_model.safetensors"
    lora = load_file(adapter)
    save_file({**lora, "base_model.model.extra.lora_A.weight": torch.zeros(2)}, adapter)
    with pytest.raises(ValueError, match="adapter does not fit"):
        load_alignment(out, make_bundle(world))


# ---------------------------------------------------------------- align.text_table_refresh


def make_quiet_model(world, **kw) -> AlignmentModel:
    """:func:`make_model` without dropout anywhere (LoRA's and the SR's): train mode is then deterministic."""
    bundle = make_bundle(world, lora={"dropout": 0.0})
    torch.manual_seed(0)
    sr = {"num_videos": world[0].num_videos, **SR, "dropout": 0.0, "attn_dropout": 0.0}
    return AlignmentModel.from_bundle(bundle, sr, **kw)


def _loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the SR's random positions (the batch carries none)
    loss = model(batch, LOSS)["loss"]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_text_table_at_refresh_1_is_the_live_step_without_lora_gradients_through_the_texts(world, batch,
                                                                                          monkeypatch):
    # the live step's LoRA A/B are non-zero after one optimizer step, so the LLM's output moves with them
    live, tabled = make_quiet_model(world).train(), make_quiet_model(world, text_table_refresh=1).train()
    train_steps(live, batch, 1)
    tabled.load_state_dict(live.state_dict())
    tabled.text_table.at_step(0)
    loss, grads = _loss_and_grads(tabled, batch)
    assert len(tabled.text_table) == batch.item_keys.numel() == tabled.text_table.computed
    # the paper's step with the item texts' pooled states detached: the same loss and every gradient
    encoder = live.text_encoder
    pooled = encoder.pooled
    monkeypatch.setattr(encoder, "pooled", lambda ids, mask: pooled(ids, mask).detach())
    want_loss, want = _loss_and_grads(live, batch)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert grads.keys() == want.keys()
    for n in grads:
        assert torch.allclose(grads[n], want[n], atol=1e-6), n
    assert any("lora_B" in n and g.abs().sum() > 0 for n, g in grads.items())  # from the prompt side
    monkeypatch.undo()
    _, through_texts = _loss_and_grads(live, batch)
    assert any(not torch.allclose(through_texts[n], want[n], atol=1e-6) for n in want if "lora" in n)


def _rec_loss(model, batch) -> float:
    """The SR-side loss (the table's rows, the SR and llm_emb_mlp; no prompt), random positions seeded."""
    torch.manual_seed(7)
    with torch.no_grad():
        return model(batch, LOSS)["rec_loss"].item()


def test_text_table_rows_are_computed_once_per_window_and_evaluation_encodes_live(world, batch):
    model = make_quiet_model(world, text_table_refresh=2).train()
    table = model.text_table
    evaluated = _rec_loss(model.eval(), batch)
    assert len(table) == 0  # evaluation encodes live and leaves the table alone
    table.at_step(0)
    first = _rec_loss(model.train(), batch)
    n = batch.item_keys.numel()
    assert table.computed == n and set(table.rows) == set(batch.item_keys.tolist())
    with torch.no_grad():  # move the LLM: the table's rows are now stale
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    table.at_step(1)  # the same window: nothing is recomputed, the SR reads the stale rows
    assert _rec_loss(model, batch) == first and table.computed == n
    # evaluation encodes live: it sees the moved LLM
    assert _rec_loss(model.eval(), batch) != pytest.approx(evaluated, rel=1e-4) and table.computed == n
    model.train()
    table.at_step(2)  # a new window: every row is the current LLM's
    assert len(table) == 0
    fresh = _rec_loss(model, batch)
    assert table.computed == 2 * n and fresh != pytest.approx(first, rel=1e-4)


def test_text_table_checkpoint_round_trip_and_errors(tmp_path):
    from lsvcr.models.llm.text_table import PooledTextTable

    table = PooledTextTable(3)
    table.at_step(4)  # window 1
    table.add(torch.tensor([7, 2, 7]), torch.arange(9.0).view(3, 3))
    assert sorted(table.rows) == [2, 7] and torch.equal(table.rows[7], torch.tensor([0.0, 1.0, 2.0]))  # first kept
    assert table.missing(torch.tensor([2, 5, 7, 9])).tolist() == [1, 3]
    table.save(tmp_path)
    back = PooledTextTable(3)
    back.load(tmp_path)
    assert back.window == 1 and back.computed == 2 and back.rows.keys() == table.rows.keys()
    assert all(torch.equal(back.rows[k], table.rows[k]) for k in table.rows)
    back.at_step(5)
    assert len(back) == 2  # still window 1
    back.at_step(6)
    assert len(back) == 0
    with pytest.raises(ValueError, match=r"written with align\.text_table_refresh=3, this run has 4"):
        PooledTextTable(4).load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no text table"):
        PooledTextTable(3).load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="refresh=0"):
        PooledTextTable(0)


def _exchange_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from lsvcr.models.llm.text_table import PooledTextTable

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # rank 0 computed keys 3 and 5, rank 1 nothing, rank 2 keys 5 (again) and 8
        mine = {0: [3, 5], 1: [], 2: [5, 8]}[rank]
        keys = torch.tensor(mine, dtype=torch.long)
        pooled = torch.stack([torch.full((2,), 10.0 * k + rank) for k in mine]) if mine else torch.zeros(0, 2)
        table = PooledTextTable(1)
        table.add(*PooledTextTable.exchange(keys, pooled))
        torch.save({k: v for k, v in table.rows.items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_text_table_exchange_gives_every_process_the_same_rows(tmp_path):
    spawn_workers(_exchange_worker, (3, str(tmp_path / "init"), str(tmp_path)), 3)
    tables = [torch.load(tmp_path / f"rank{r}.pt") for r in range(3)]
    # every key once, the lowest rank's row where two computed it
    want = {3: torch.tensor([30.0, 30.0]), 5: torch.tensor([50.0, 50.0]), 8: torch.tensor([82.0, 82.0])}
    for t in tables:
        assert t.keys() == want.keys() and all(torch.equal(t[k], want[k]) for k in want)


def test_lora_input_dropout_is_the_cheap_cpu_dropout(world):
    from lsvcr.models.sr.layers import Dropout

    model = make_model(world)
    drops = [d for m in model.llm.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
             for d in m.lora_dropout.values()]
    assert len(drops) == 7 and all(type(d) is Dropout and d.p == 0.1 for d in drops)  # 7 targets x 1 layer
    y = drops[0].train()(torch.ones(200_000))  # inverted dropout: p of the entries zeroed, the rest x 1/(1-p)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    assert torch.equal(drops[0].eval()(torch.ones(5)), torch.ones(5))
