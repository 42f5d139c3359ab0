"""GPU throughput check: the alignment step of a 0.5B-class LLM, and SR fine-tuning and full ranking.

    python experiments/gpu_check.py                     # one CUDA GPU; about 2-3 minutes on an H200
    python experiments/gpu_check.py --seq-len 1024 --micro-batch 8 --peak-tflops 989
    python experiments/gpu_check.py --skip-llm --rank-videos 5000000
    python experiments/gpu_check.py --dry-run           # the same code paths, tiny, on the CPU (no GPU needed)

(a) Alignment: the real :class:`lsvcr.models.align.AlignmentModel` (LM loss on the response, the
LLM text encoder inside the step, the SR and the contrastive losses) on a causal LM built from a
config with Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864,
vocabulary 151936, tied embeddings; random weights, nothing downloaded), bf16 weights, LoRA r 8 on
q/k/v/o/gate/up/down, non-reentrant gradient checkpointing, AdamW, under bf16 autocast as
``hardware=gpu`` runs it. Each step reads ``--micro-batch`` prompts of ``--seq-len`` tokens plus
``--items-per-sample`` item texts of ``--item-len`` tokens per prompt (the text encoder's input).
Printed: step time, tokens/s (every token through the LLM), peak GPU memory and model-FLOPs
utilisation::

    MFU = 6 * N * tokens_per_step / step_seconds / peak_flops

with N = every LLM parameter (frozen and LoRA, embeddings included) and the peak bf16 dense
throughput ``--peak-tflops`` (989 TFLOP/s for an H100/H200 SXM). 6N is the usual training estimate
(2N forward + 4N backward); it counts neither the forward recomputed by gradient checkpointing (+2N
of hardware FLOPs) nor the weight gradients LoRA skips for frozen weights (-2N), nor attention's
sequence-length term, so read MFU as a comparison figure.

(b) Fine-tuning: :class:`lsvcr.models.recommender.Recommender` around :class:`lsvcr.models.sr.lsvcr.LSVCR`
(d 64, 2 layers) with random text tables, batch 512, histories of 50, softmax over all
``--sr-videos`` videos, ID-text term on, AdamW: samples/s in fp32 and under bf16 autocast. Then
full ranking as the evaluator does it (score every video, rank the target, rows chunked to
``2**25`` scores), and with a whole evaluation batch at once: users/s against ``--rank-videos`` videos.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

QWEN2_0_5B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True)
TINY_LM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# --dry-run: every size small enough for a laptop CPU in seconds
DRY_RUN = dict(micro_batch=2, seq_len=32, response_len=4, items_per_sample=3, item_len=8, llm_warmup=1, llm_steps=2,
               sr_batch=16, sr_history=10, sr_videos=1000, sr_comments=2000, sr_warmup=1, sr_steps=2,
               rank_videos=5000, rank_users=64, rank_batch=32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 dense TFLOP/s of one GPU (H100/H200: 989)")
    p.add_argument("--seed", type=int, default=0)
    a = p.add_argument_group("alignment (a)")
    a.add_argument("--skip-llm", action="store_true")
    a.add_argument("--micro-batch", type=int, default=4, help="prompts per step")
    a.add_argument("--seq-len", type=int, default=512, help="tokens per prompt (prompt + response)")
    a.add_argument("--response-len", type=int, default=32, help="response tokens per prompt (the LM loss)")
    a.add_argument("--items-per-sample", type=int, default=20, help="history texts the encoder reads per prompt")
    a.add_argument("--item-len", type=int, default=32, help="tokens per history text")
    a.add_argument("--lora-r", type=int, default=8)
    a.add_argument("--llm-warmup", type=int, default=3)
    a.add_argument("--llm-steps", type=int, default=10)
    s = p.add_argument_group("fine-tuning and full ranking (b)")
    s.add_argument("--skip-sr", action="store_true")
    s.add_argument("--sr-batch", type=int, default=512)
    s.add_argument("--sr-history", type=int, default=50)
    s.add_argument("--sr-videos", type=int, default=100_000)
    s.add_argument("--sr-comments", type=int, default=1_000_000)
    s.add_argument("--sr-warmup", type=int, default=5)
    s.add_argument("--sr-steps", type=int, default=30)
    s.add_argument("--rank-videos", type=int, default=1_000_000)
    s.add_argument("--rank-users", type=int, default=20_480)
    s.add_argument("--rank-batch", type=int, default=1024, help="users per evaluation batch (eval.batch_size)")
    args = p.parse_args(argv)
    if args.dry_run:
        for key, value in DRY_RUN.items():
            setattr(args, key, value)
    return args


def _device(args: argparse.Namespace) -> torch.device:
    if args.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). Run it on a GPU machine, "
                 "or pass --dry-run to check the script on the CPU.")
    return torch.device("cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _timed_steps(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step of ``step()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / max(steps, 1)


def _randint(g: torch.Generator, low: int, high: int, *shape: int) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=g)


def synthetic_history(g: torch.Generator, batch: int, length: int, videos: int, comments: int, per_slot: int = 2):
    """A :class:`HistoryBatch` of full histories: ``per_slot`` comments under every comment-history video."""
    from lsvcr.data.batch import HistoryBatch

    slots = torch.arange(batch * length).repeat_interleave(per_slot)
    return HistoryBatch(v_video=_randint(g, 1, videos + 1, batch, length), v_comment=_randint(g, 1, comments + 1, batch, length),
                        c_video=_randint(g, 1, videos + 1, batch, length),
                        c_comment=_randint(g, 1, comments + 1, len(slots)), c_slot=slots,
                        target=_randint(g, 1, videos + 1, batch))


# ---------------------------------------------------------------- (a) alignment step


def build_alignment(args: argparse.Namespace, device: torch.device):
    """The alignment model on a random Qwen2-0.5B-shaped LLM (tiny with --dry-run), LoRA, checkpointing."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    from lsvcr.models.align import AlignmentModel
    from lsvcr.models.llm.loader import LoraSettings

    shape = TINY_LM if args.dry_run else QWEN2_0_5B
    config = Qwen2Config(**shape, pad_token_id=0, eos_token_id=1, bos_token_id=None, use_cache=False)
    torch.manual_seed(args.seed)
    with device:  # initialise on the GPU: a 0.5B random init takes seconds there, a minute on the CPU
        llm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    lora = LoraSettings(r=args.lora_r, alpha=32, dropout=0.1, target_modules=LORA_MODULES)
    llm = get_peft_model(llm, lora.to_peft())
    model = AlignmentModel(llm, None, {"num_videos": 1}, gradient_checkpointing=True).to(device)
    return model, config


def synthetic_align_batch(args: argparse.Namespace, vocab: int, g: torch.Generator):
    """An :class:`AlignBatch` of the requested sizes: full-length prompts, half rec and half comm_rank."""
    from lsvcr.data.align_batch import AlignBatch

    b, t, r = args.micro_batch, args.seq_len, args.response_len
    n = b * args.items_per_sample
    labels = _randint(g, 2, vocab, b, t)
    labels[:, : t - r] = -100
    history = synthetic_history(g, b, min(args.items_per_sample // 2 or 1, 50), n, n)
    return AlignBatch(input_ids=_randint(g, 2, vocab, b, t), attention_mask=torch.ones(b, t, dtype=torch.long),
                      labels=labels, last_prompt_index=torch.full((b,), t - r - 1),
                      item_ids=_randint(g, 2, vocab, n, args.item_len),
                      item_mask=torch.ones(n, args.item_len, dtype=torch.long), item_keys=torch.arange(1, n + 1),
                      history=history,
                      target_row=_randint(g, 1, n + 1, b), task=torch.arange(b) % 2)


def alignment_check(args: argparse.Namespace, device: torch.device) -> dict:
    from lsvcr.losses.align import AlignmentLoss

    model, config = build_alignment(args, device)
    llm_params = sum(p.numel() for p in model.llm.parameters())
    embedding = config.vocab_size * config.hidden_size  # tied: counted once
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=0.0)
    batch = synthetic_align_batch(args, config.vocab_size, torch.Generator().manual_seed(args.seed)).to(device)
    model.train()
    objective = AlignmentLoss()
    losses = []

    def step() -> None:
        with _autocast(device, True):
            out = model(batch, objective)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out["loss"].detach())

    _reset_peak(device)
    seconds = _timed_steps(step, args.llm_warmup, args.llm_steps, device)
    tokens = args.micro_batch * args.seq_len + args.micro_batch * args.items_per_sample * args.item_len
    flops = 6 * llm_params * tokens / seconds
    return {"llm_params": llm_params, "llm_params_non_embedding": llm_params - embedding,
            "trainable_params": trainable, "tokens_per_step": tokens,
            "prompt_tokens_per_step": args.micro_batch * args.seq_len, "step_s": seconds,
            "tokens_per_s": tokens / seconds, "peak_gpu_gib": _peak_gib(device),
            "model_tflops_per_s": flops / 1e12, "mfu": flops / (args.peak_tflops * 1e12),
            "loss_first_last": [losses[0].item(), losses[-1].item()]}


# ---------------------------------------------------------------- (b) fine-tuning and full ranking


def build_recommender(num_videos: int, num_comments: int, device: torch.device, seed: int):
    """LSVCR (the config's defaults: d 64, 2 layers) with random ``[*, 256]`` text tables (row 0 = padding)."""
    from lsvcr.models.recommender import Recommender
    from lsvcr.models.sr.lsvcr import LSVCR

    torch.manual_seed(seed)
    with device:
        video, comment = torch.randn(num_videos + 1, 256), torch.randn(num_comments + 1, 256)
        video[0], comment[0] = 0, 0
        return Recommender(LSVCR(num_videos=num_videos, llm_emb_size=256), video, comment, None)


def finetune_check(args: argparse.Namespace, device: torch.device, bf16: bool) -> dict:
    from lsvcr.data.batch import RecBatch
    from lsvcr.losses.recommend import FinetuneLoss, rec_task_loss

    model = build_recommender(args.sr_videos, args.sr_comments, device, args.seed).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-5)
    g = torch.Generator().manual_seed(args.seed)
    batches = [RecBatch(synthetic_history(g, args.sr_batch, args.sr_history, args.sr_videos, args.sr_comments)).to(device)
               for _ in range(4)]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    loss_fn = FinetuneLoss(rec_task_loss, 0.1, 99)  # the stage's defaults (finetune.id_text_loss_weight, id_text_negatives)
    count = [0]

    def step() -> None:
        with _autocast(device, bf16):
            out = model(batches[count[0] % len(batches)], loss_fn, generator=generator)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        count[0] += 1

    _reset_peak(device)
    seconds = _timed_steps(step, args.sr_warmup, args.sr_steps, device)
    return {"precision": "bf16" if bf16 else "fp32", "videos": args.sr_videos, "batch": args.sr_batch,
            "history": args.sr_history, "step_s": seconds, "samples_per_s": args.sr_batch / seconds,
            "peak_gpu_gib": _peak_gib(device)}


@torch.inference_mode()
def ranking_check(args: argparse.Namespace, device: torch.device) -> dict:
    """Users/s of the evaluator's full-ranking rec path (score every video, pessimistic rank of the
    target; rows chunked so one chunk holds at most ``2**25`` scores), and of the same with the
    whole batch in one chunk."""
    from lsvcr.metrics.evaluator import VideoRanking
    from lsvcr.metrics.ranking import ranks_single

    model = build_recommender(args.rank_videos, args.sr_comments, device, args.seed).eval()
    _sync(device)
    t0 = time.perf_counter()
    model.all_videos()  # every video's representation, once per evaluation (cached in eval mode)
    _sync(device)
    table_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(args.seed)
    histories = [synthetic_history(g, args.rank_batch, args.sr_history, args.rank_videos, args.sr_comments).to(device)
                 for _ in range(2)]
    ranking = VideoRanking()  # the evaluator's own full ranking of one batch
    batches = max(1, args.rank_users // args.rank_batch)
    out = {"videos": args.rank_videos, "video_table_s": table_s}
    for label, chunk in (("evaluator_chunks", None), ("one_chunk", args.rank_batch)):
        count = [0]

        def batch() -> None:
            h = histories[count[0] % 2]
            if chunk is None:
                ranking.ranks(model, h, None, None, device)
            else:
                scores = model.score_videos(h, None).float()
                valid = torch.ones_like(scores, dtype=torch.bool)
                valid[:, 0] = False
                ranks_single(scores, h.target, valid)
            count[0] += 1

        _reset_peak(device)
        seconds = _timed_steps(batch, 1, batches, device)
        out[label] = {"users_per_s": args.rank_batch / seconds, "peak_gpu_gib": _peak_gib(device)}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = _device(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    results: dict = {"device": name, "dry_run": args.dry_run}
    t0 = time.perf_counter()
    if not args.skip_llm:
        results["alignment"] = a = alignment_check(args, device)
        print(f"(a) alignment, {a['llm_params'] / 1e6:.0f}M-parameter LLM ({a['trainable_params'] / 1e6:.2f}M trained), "
              f"{args.micro_batch} x {args.seq_len} prompt tokens + {args.micro_batch * args.items_per_sample} x "
              f"{args.item_len} item tokens per step: {a['step_s'] * 1e3:.1f} ms/step, {a['tokens_per_s']:,.0f} tokens/s, "
              f"peak {a['peak_gpu_gib'] or 0:.2f} GiB, {a['model_tflops_per_s']:.1f} model TFLOP/s, "
              f"MFU {100 * a['mfu']:.1f}% of {args.peak_tflops:g} (6 * N * tokens)", flush=True)
    if not args.skip_sr:
        results["finetune"] = []
        for bf16 in (False, True):
            f = finetune_check(args, device, bf16)
            results["finetune"].append(f)
            print(f"(b) fine-tuning {f['precision']}, batch {f['batch']} x history {f['history']}, softmax over "
                  f"{f['videos']:,} videos: {f['step_s'] * 1e3:.1f} ms/step, {f['samples_per_s']:,.0f} samples/s, "
                  f"peak {f['peak_gpu_gib'] or 0:.2f} GiB", flush=True)
        results["ranking"] = r = ranking_check(args, device)
        for label, what in (("evaluator_chunks", "evaluator's row chunks"), ("one_chunk", "whole batch at once")):
            print(f"(b) full ranking over {r['videos']:,} videos, {what}: {r[label]['users_per_s']:,.0f} users/s "
                  f"(video table {r['video_table_s']:.2f}s once), peak {r[label]['peak_gpu_gib'] or 0:.2f} GiB",
                  flush=True)
    results["total_s"] = time.perf_counter() - t0
    print(json.dumps(results, default=float))
    return results


if __name__ == "__main__":
    main()
