"""Alignment throughput and peak memory: model/llm=tiny and model/llm=smollm2_135m through the real stage.

    python experiments/bench_align.py                                   # tiny; smollm2 when its directory exists
    python experiments/bench_align.py --threads 1                       # one thread (steadier on a busy machine)
    python experiments/bench_align.py --smollm2-dir /models/smollm2-135m --models smollm2_135m
    python experiments/bench_align.py --hardware gpu --micro-batch 4 --grad-accum 4 --steps 10 \\
        --prompt-tokens 768 --history 50 --text-tokens 64                # the stage's defaults, on a GPU
    python experiments/bench_align.py --extra align.augment.sample_prob=0   # more overrides for every run

Each model runs ``lsvcr stage=align`` (``python -m lsvcr.main`` of this checkout, in a subprocess)
on the embedded default world for ``--warmup + --steps`` optimizer steps with ``align.log_every=1``.
Steps/s is timed between the log lines of step ``--warmup`` and the last step (``main.log``
timestamps), so model loading, data preparation and the first steps are left out; samples/s is that
times the samples per step. Tokens/s counts the prompt+response tokens and the batch-local text
tokens (both without padding) of exactly the timed micro-batches, rebuilt afterwards from the run's
saved config by the stage's own batch code. Peak RSS (and peak CUDA memory on a GPU) is the stage's
figure from ``<run>/align.json``: the process's peak, model loading included.

The defaults are small so that SmolLM2 finishes a few steps on a laptop CPU: micro-batch 2 x 1,
histories of 3 items, texts of 16 tokens, prompts of at most 512 (+16 response) tokens (the tiny
LM's tokenizer, trained on the world's texts, needs 340 tokens for the English template alone;
SmolLM2's needs ~110 and its prompts come to ~370 with 3-item histories). ``model/llm=smollm2_135m`` needs a local
model directory (``--smollm2-dir``, default ``outputs/assets/smollm2-135m``, made by
``lsvcr-assets fetch smollm2-135m``); it is skipped with a message when missing. On the CPU it
runs in float32 without gradient checkpointing (``--smollm2-dtype``; bfloat16 is about 2x slower on
CPUs without native bf16), on a GPU in bfloat16 with gradient checkpointing and ``--hardware``'s
precision.

Model FLOP/s and its share of the machine. The script times this machine's float32 matmul rate
itself, in the same run with the same threads, before and after the stage runs (``torch.mm`` at
``[4096, H] @ [H, 4H]`` and ``2048^3``; the best of both, so the share is conservative). The
model's useful FLOPs of a timed step are counted from the rebuilt batches, per real token (padding
counts for nothing), with the base LLM frozen and LoRA's own arithmetic left out (under 1%):

* linear layers: ``4 x P`` per real prompt, response or text token (forward ``2P`` + the backward
  pass into the activations ``2P``; frozen weights get no weight gradient), ``P`` = the LLM's
  linear-layer weights without the input embeddings and the LM head;
* attention: a causal row of ``L`` real tokens costs ``2 x L^2 x A`` per layer forward
  (``QK^T`` and ``AV`` over ``L(L+1)/2`` pairs, ``A`` = heads x head dim), 3x that with backward;
* LM head: ``4 x V x H`` per response token (it runs only where there is a label).

``--extra align.text_bucket_tokens=2048`` times the length-bucketed text pass; ``--variants``
runs several override sets one after the other in one invocation (``--variants "" \
"align.text_bucket_tokens=2048"``), so their figures share the same matmul rate.

The machine's load average is printed first: on a shared machine, repeat runs when it is high.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^\[(?P<ts>[\d-]+ [\d:,]+)\]\[lsvcr\]\[INFO\] - step (?P<step>\d+)/(?P<total>\d+):")


def step_times(log_text: str) -> dict[int, float]:
    """``{step: unix time}`` of the stage's ``step k/N:`` log lines."""
    out = {}
    for line in log_text.splitlines():
        m = STEP_LINE.match(line)
        if m:
            out[int(m["step"])] = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return out


def overrides(args, model: str) -> list[str]:
    o = [
        "stage=align", "prompts=en", f"hardware={args.hardware}", f"model/llm={model}",
        f"align.micro_batch_size={args.micro_batch}", f"align.grad_accum={args.grad_accum}",
        f"align.max_steps={args.warmup + args.steps}", "align.log_every=1", "align.save_every=null",
        f"align.max_prompt_tokens={args.prompt_tokens}", f"align.max_response_tokens={args.response_tokens}",
        f"data.max_phis_len={args.history}", f"data.max_chis_len={args.history}",
        f"embed.max_length={args.text_tokens}", "align.eval_samples=0",
    ]
    if model == "smollm2_135m":
        dtype = args.smollm2_dtype or ("bfloat16" if args.hardware != "cpu" else "float32")
        o += [f"model.llm.name_or_path={Path(args.smollm2_dir).resolve()}", f"model.llm.dtype={dtype}",
              f"model.llm.gradient_checkpointing={str(args.hardware != 'cpu').lower()}"]
    return o + list(args.extra)


def run_stage(args, model: str, run_dir: Path, variant: list[str]) -> dict:
    """One ``stage=align`` run; its summary, step times and wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=f"{REPO}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "lsvcr.main", *overrides(args, model), *variant, f"hydra.run.dir={run_dir}"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print((done.stdout + done.stderr)[-3000:], file=sys.stderr)
        raise SystemExit(f"stage=align with model/llm={model} failed (exit code {done.returncode})")
    summary = json.loads((run_dir / "align.json").read_text())
    return {"summary": summary, "times": step_times((run_dir / "main.log").read_text()), "wall": wall}


@dataclass
class TimedWork:
    """Real (unpadded) tokens of the timed micro-batches, and the per-row lengths the LLM ran on.

    With ``align.text_table_refresh`` the SR's texts run without gradients, and only those the
    table lacked (the stage's table, replayed from step 0): ``table_text_tokens`` of them, each
    costing a forward pass alone; the others cost nothing."""

    table: bool = False  # align.text_table_refresh was set
    prompt_tokens: int = 0
    response_tokens: int = 0
    text_tokens: int = 0  # every SR-side text of the micro-batches (what the paper's step encodes)
    table_text_tokens: int = 0  # of those, encoded without gradients by the table
    rows: list[int] = field(default_factory=list)  # real length of every row run with gradients
    table_rows: list[int] = field(default_factory=list)  # ... and of every row run without

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.text_tokens


def timed_tokens(run_dir: Path, warmup: int, steps: int) -> TimedWork:
    """The timed micro-batches' real tokens, rebuilt with the stage's batch code from the run's
    saved config and tokenizer."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from lsvcr.data.align_batch import AlignSamples
    from lsvcr.models.llm.text_table import PooledTextTable
    from lsvcr.pipelines.align_data import AlignEpoch, collator
    from lsvcr.pipelines.align_engine import Plan
    from lsvcr.pipelines.common import load_dataset
    from lsvcr.tasks import build_task

    ckpt = run_dir / "align"
    cfg = OmegaConf.load(ckpt / "config.yaml")
    plan = Plan(**json.loads((run_dir / "align.json").read_text())["plan"])
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer", padding_side=cfg.model.llm.padding_side)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = load_dataset(cfg)
    tasks = list(build_task(cfg.task).sample_sets)
    epoch = AlignEpoch(AlignSamples(ds, tasks).items, collator(cfg, ds, tokenizer), plan, 0, int(cfg.seed), 0)
    refresh = cfg.align.get("text_table_refresh")
    table = PooledTextTable(int(refresh)) if refresh else None
    work = TimedWork(table=table is not None)
    start = warmup * plan.grad_accum
    for b in range(0 if table else start, (warmup + steps) * plan.grad_accum):
        batch = epoch[b]
        lengths = batch.item_mask.sum(1)
        new = None
        if table is not None:  # the stage's table: which rows this micro-batch computes
            table.at_step(b // plan.grad_accum)
            new = table.missing(batch.item_keys)
            table.add(batch.item_keys[new], torch.zeros(len(new), 1))
        if b < start:
            continue
        work.prompt_tokens += int(batch.attention_mask.sum())
        work.response_tokens += int((batch.labels[:, 1:] != -100).sum())
        work.text_tokens += int(lengths.sum())
        work.rows += batch.attention_mask.sum(1).tolist()
        if new is None:
            work.rows += lengths.tolist()
        else:
            work.table_text_tokens += int(lengths[new].sum())
            work.table_rows += lengths[new].tolist()
    return work


@dataclass
class LLMShape:
    linear_params: int  # linear-layer weights without the input embeddings and the LM head
    attn_width: int  # heads x head dim
    layers: int
    vocab: int
    hidden: int


def llm_shape(run_dir: Path) -> LLMShape:
    """The run's LLM, built on the meta device from its config (no weights read)."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = OmegaConf.load(run_dir / "align" / "config.yaml")
    llm = cfg.model.llm
    if llm.get("name_or_path"):
        config = AutoConfig.from_pretrained(llm.name_or_path)
    else:  # model/llm=tiny: its dimensions are in the config, its vocabulary is the saved tokenizer's
        from transformers import AutoTokenizer, LlamaConfig

        vocab = len(AutoTokenizer.from_pretrained(run_dir / "align" / "tokenizer"))
        config = LlamaConfig(vocab_size=vocab, hidden_size=llm.hidden_size, num_hidden_layers=llm.num_layers,
                             num_attention_heads=llm.num_heads, intermediate_size=llm.intermediate_size,
                             num_key_value_heads=llm.num_kv_heads or llm.num_heads)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m is not head)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return LLMShape(linear, text.num_attention_heads * head_dim, text.num_hidden_layers, text.vocab_size,
                    text.hidden_size)


def model_flops(work: TimedWork, shape: LLMShape) -> dict[str, float]:
    """FLOPs of the timed steps by part (the formula in the module docstring): the arithmetic the
    model needs, padding left out; texts a table encodes count one forward pass (2P, attention 1x)."""
    grad_tokens = work.prompt_tokens + (0 if work.table else work.text_tokens)
    attn = 2.0 * shape.attn_width * shape.layers
    return {
        "linear": 4.0 * shape.linear_params * grad_tokens + 2.0 * shape.linear_params * work.table_text_tokens,
        "attention": attn * (3.0 * sum(float(n) ** 2 for n in work.rows)
                             + sum(float(n) ** 2 for n in work.table_rows)),
        "lm_head": 4.0 * shape.vocab * shape.hidden * work.response_tokens,
    }


def matmul_rate(hidden: int, threads: int, seconds: float = 3.0) -> float:
    """This machine's float32 ``torch.mm`` FLOP/s: the best of two shapes (one like the LLM's MLP)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in ((4096, hidden, 4 * hidden), (2048, 2048, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2.0 * m * k * n * reps / (time.perf_counter() - t0))
    return best


def report(model: str, args, r: dict, work: TimedWork | None, flops: dict | None, rate: float | None,
           note: str = "") -> None:
    s, times = r["summary"], r["times"]
    first, last = args.warmup, args.warmup + args.steps
    seconds = times[last] - times[first]
    steps_s = args.steps / seconds
    per_step = s["plan"]["micro_batch_size"] * s["plan"]["grad_accum"] * s["plan"]["world"]
    line = (f"align {model}{r['label']}: {steps_s:.3f} steps/s, {steps_s * per_step:.2f} samples/s ({args.steps} "
            f"steps of {per_step} samples in {seconds:.1f}s after {args.warmup} warm-up")
    if work is not None:
        line += (f"; {work.tokens / seconds:.0f} tokens/s: {work.prompt_tokens} prompt+response "
                 f"({work.response_tokens} response) + {work.text_tokens} text tokens")
        if work.table:
            line += f", {work.table_text_tokens} of them encoded by the text table"
    line += f"); peak RSS {s['peak_rss_mb']:.0f} MB"
    if s.get("peak_cuda_mb") is not None:
        line += f", peak CUDA {s['peak_cuda_mb']:.0f} MB"
    line += f"; whole run {r['wall']:.0f}s, final loss {s['final']['loss']:.4f}{note}"
    print(line, flush=True)
    if flops is not None:
        total = sum(flops.values())
        parts = ", ".join(f"{k} {v / total:.0%}" for k, v in flops.items())
        line = f"  model FLOP/s {total / seconds / 1e9:.1f} G ({parts})"
        if rate:
            line += f" = {total / seconds / rate:.1%} of the measured matmul rate {rate / 1e9:.1f} GFLOP/s"
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2_135m"], choices=["tiny", "smollm2_135m"])
    ap.add_argument("--smollm2-dir", default=str(REPO / "outputs" / "assets" / "smollm2-135m"))
    ap.add_argument("--smollm2-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: float32 on the CPU, bfloat16 otherwise")
    ap.add_argument("--hardware", default="cpu", help="a conf/hardware entry (cpu, gpu, ...)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first (at least 1)")
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=512, help="align.max_prompt_tokens")
    ap.add_argument("--response-tokens", type=int, default=16, help="align.max_response_tokens")
    ap.add_argument("--history", type=int, default=3, help="data.max_phis_len and data.max_chis_len")
    ap.add_argument("--text-tokens", type=int, default=16, help="embed.max_length: tokens per history text")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--no-tokens", action="store_true", help="skip rebuilding the timed batches to count tokens")
    ap.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="override sets (each one quoted string, '' = none) run one after the other for every model")
    ap.add_argument("--no-matmul", action="store_true", help="skip timing the matmul rate (no FLOP share)")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1 (steps are timed from the warm-up's last log line)")
    sys.path.insert(0, str(REPO))  # count tokens with this checkout's lsvcr, whatever copy is installed
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench_align_"))
    variants = [v.split() for v in args.variants] if args.variants else [[]]
    rate = None
    if not args.no_tokens and not args.no_matmul and args.hardware == "cpu":
        rate = matmul_rate(576, args.threads)
        print(f"float32 matmul rate before the runs: {rate / 1e9:.1f} GFLOP/s", flush=True)
    results = []
    for model in args.models:
        if model == "smollm2_135m" and not (Path(args.smollm2_dir) / "config.json").is_file():
            print(f"align {model}: skipped, no model directory at {args.smollm2_dir} (make it with "
                  "`lsvcr-assets fetch smollm2-135m`, or pass --smollm2-dir)", flush=True)
            continue
        for i, variant in enumerate(variants):
            run_dir = root / f"{model}-{i}"
            r = run_stage(args, model, run_dir, variant)
            r["label"] = f" [{' '.join(variant)}]" if variant else ""
            work, flops, note = None, None, ""
            if not args.no_tokens:
                try:
                    work = timed_tokens(run_dir, args.warmup, args.steps)
                    flops = model_flops(work, llm_shape(run_dir))
                except (ImportError, AttributeError, TypeError, KeyError, OSError) as e:
                    # the stage's batch internals moved: the timing still stands
                    note = f"; tokens/s n/a ({type(e).__name__}: {e})"
            results.append((model, r, work, flops, note))
    if rate is not None:
        after = matmul_rate(576, args.threads)
        print(f"float32 matmul rate after the runs: {after / 1e9:.1f} GFLOP/s", flush=True)
        rate = max(rate, after)
    for model, r, work, flops, note in results:
        report(model, args, r, work, flops, rate, note)
    if args.keep:
        print(f"run directories under {root}", flush=True)
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
