"""Training speed: stock sentence-transformers + PEFT against our fast path, in one process.

    python -m bench.speed                      # the GPU plan below, writes BENCHMARKS.md + bench/speed.png
    python -m bench.speed --device cpu         # a small version for a CPU
    python -m bench.speed --only minilm-l6:256:64:stock,ours

Every run: the same random-weight checkpoint (bench.models), the same real text pairs (Debian
package synopsis -> long description), the same seed, batch, sequence length and LoRA settings
(r=16, alpha=32, no dropout, the family's target layers), SentenceTransformerTrainer with
MultipleNegativesRankingLoss, bf16 on CUDA. Methods:
- stock: what a user writes today (padded batches, tokenizing on the main thread);
- stock-compile: stock plus `torch_compile=True`;
- ours: `engine.attention.enable` (packed batches, fused LoRA) + tokenizing in DataLoader workers;
- ours-compile: ours plus per-layer torch.compile (compile time counted in the end-to-end time).
Pairs/s is steady state, from step 10 to the last step. End to end is load -> trained -> saved.
Utilisation counts useful FLOPs only (GPU_NOTES.md): 4*N*T + 6*P*T + 12*L*d*S2 over 790 TFLOP/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK_TFLOPS = 790.0  # dense bf16 matmul ceiling measured on the lent H100 (GPU_NOTES.md)

# model:seq:batch:methods. 30 minutes of device time cover this much; see BENCHMARKS.md for what was run.
GPU_PLAN = (
    "bert-base:256:64:stock,ours",
    "modernbert-base:256:64:stock,ours",
    "qwen3-0.6b:256:32:stock,ours",
    "modernbert-base:1024:32:stock,ours",
    "minilm-l6:256:64:stock,ours,ours-compile,stock-compile",
)
CPU_PLAN = ("minilm-l6:64:8:stock,ours",)


@dataclass
class Result:
    model: str
    seq: int
    batch: int
    method: str
    steps: int
    pairs_per_s: float = 0.0
    end_to_end_s: float = 0.0
    first_step_s: float = 0.0
    real_tokens_per_s: float = 0.0
    utilisation: float = 0.0
    peak_gib: float = 0.0
    losses: list = field(default_factory=list)  # (step, loss)
    enabled: str = ""
    error: str = ""


def load_pairs(seq: int, join: int) -> tuple[list[str], list[str]]:
    """Debian (synopsis, description) pairs; for long sequences `join` descriptions are concatenated
    so that documents reach the sequence length."""
    for candidate in (ROOT / "assets" / "debian-pairs" / "train.jsonl", ROOT / ".devcarry" / "debian-pairs" / "train.jsonl"):
        if candidate.exists():
            rows = [json.loads(line) for line in candidate.read_text().splitlines() if line.strip()]
            break
    else:
        raise SystemExit("no pairs: run `python assets/build_debian_pairs.py` (writes assets/debian-pairs/train.jsonl)")
    queries = [r["query"] for r in rows]
    documents = [r["document"] for r in rows]
    if join > 1:
        documents = [" ".join(documents[i : i + join]) for i in range(len(documents))]
    return queries, documents


class _Clock:
    """Trainer callback: step timestamps (synchronised only where read) and the logged losses."""

    def __init__(self, steady_from: int, last: int, cuda: bool):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step in (1, steady_from, last):
                    if cuda:
                        import torch

                        torch.cuda.synchronize()
                    clock.times[state.global_step] = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    clock.losses.append((state.global_step, float(logs["loss"])))

        self.callback = Callback()
        self.times: dict[int, float] = {}
        self.losses: list[tuple[int, float]] = []


def _flop_counts(hf_model) -> tuple[int, int, int]:
    """(params in linear layers outside LoRA, layers, attention width d)."""
    import torch

    n = 0
    for name, module in hf_model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            n += module.weight.numel()
    cfg = hf_model.config
    layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layers
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_heads
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", None) or cfg.dim) // heads
    return n, layers, heads * head_dim


def run_one(name: str, checkpoint: Path, seq: int, batch: int, method: str, steps: int, device: str,
            queries: list[str], documents: list[str], seed: int, workdir: Path) -> Result:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import set_seed

    from bench.models import FAMILY_OF, load
    from engine.attention import enable
    from engine.families import family_by_name

    cuda = device == "cuda"
    result = Result(name, seq, batch, method, steps)
    family = family_by_name(FAMILY_OF[name])
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()
    start = time.perf_counter()
    set_seed(seed)
    model = load(name, checkpoint, max_seq_length=seq, device=device)
    tokenizer = model[0].tokenizer
    limit = getattr(model[0].model.config, "max_position_embeddings", None)
    if limit is not None and seq + family.position_offset > limit:  # would index past the position table
        raise ValueError(f"{name} has {limit} positions; sequence length {seq} does not fit")
    n_linear, layers, width = _flop_counts(model[0].model)
    model.add_adapter(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(family.lora_targets)))
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ours = method.startswith("ours")
    if ours:
        result.enabled = enable(model, family, compile=method == "ours-compile") or "nothing (see log)"
    rows = steps * batch
    data = Dataset.from_dict({"anchor": queries[:rows], "positive": documents[:rows]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=2e-4,
        warmup_steps=0,
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_drop_last=True,
        torch_compile=method == "stock-compile",
        disable_tqdm=True,
        **({"dataloader_num_workers": 2, "dataloader_prefetch_factor": 4, "dataloader_pin_memory": True,
            "dataloader_persistent_workers": True} if ours and cuda else {}),
    )
    steady_from = min(10, steps // 2)
    clock = _Clock(steady_from=steady_from, last=steps, cuda=cuda)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, loss=MultipleNegativesRankingLoss(model), callbacks=[clock.callback]
    )
    trainer.train()
    model.save(str(workdir / "model"))
    result.end_to_end_s = time.perf_counter() - start
    result.first_step_s = clock.times[1] - start
    result.pairs_per_s = (steps - steady_from) * batch / (clock.times[steps] - clock.times[steady_from])
    result.losses = clock.losses
    result.peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0

    # Real (non-pad) tokens and squared lengths per pair, averaged over the run's pairs after truncation.
    def lengths(texts):
        return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=seq)["input_ids"]]

    lens = lengths(queries[:rows]) + lengths(documents[:rows])
    tokens_per_pair = sum(lens) / rows
    squares_per_pair = sum(length * length for length in lens) / rows
    result.real_tokens_per_s = result.pairs_per_s * tokens_per_pair
    flops_per_pair = 4 * n_linear * tokens_per_pair + 6 * lora_params * tokens_per_pair + 12 * layers * width * squares_per_pair
    result.utilisation = result.pairs_per_s * flops_per_pair / (PEAK_TFLOPS * 1e12)
    del trainer, model
    gc.collect()
    return result


def loss_gap(result: Result, stock: Result, after: int = 20) -> float | None:
    """Largest relative gap between two loss curves at logged steps after `after`."""
    ref = dict(stock.losses)
    gaps = [abs(loss - ref[step]) / abs(ref[step]) for step, loss in result.losses if step > after and step in ref]
    return max(gaps) if gaps else None


def versions() -> str:
    import peft
    import sentence_transformers
    import torch
    import transformers

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}", f"transformers {transformers.__version__}",
             f"sentence-transformers {sentence_transformers.__version__}", f"peft {peft.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def card(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def write_report(results: list[Result], path: Path, device: str, command: str, plot: str | None) -> None:
    lines = [
        "# Training speed",
        "",
        f"- card: {card(device)}",
        f"- versions: {versions()}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        "- every row: SentenceTransformerTrainer, MultipleNegativesRankingLoss, LoRA r=16 alpha=32 on the family's",
        "  target layers, random-weight model built from its config (bench/models.py), Debian synopsis -> description",
        f"  pairs, seed 42, {'bf16 autocast' if device == 'cuda' else 'float32'}, one run per row (no repeats: noise not measured here).",
        "- pairs/s: steady state, from step min(10, steps/2) to the last; end to end: load -> trained -> adapter saved, compile included;",
        f"  utilisation: useful FLOPs (4NT + 6PT + 12 L d S2) over {PEAK_TFLOPS:.0f} TFLOP/s; loss gap: largest relative",
        "  difference from stock's loss at the logged steps (every 5) after step 20.",
        "",
        "| model | seq | batch | method | pairs/s | x stock | end to end s | x stock | first step s | real tok/s | util % | peak GiB | loss gap | enabled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stocks = {(r.model, r.seq, r.batch): r for r in results if r.method == "stock" and not r.error}
    for r in results:
        if r.error:
            lines.append(f"| {r.model} | {r.seq} | {r.batch} | {r.method} | failed: {r.error} |  |  |  |  |  |  |  |  |  |")
            continue
        stock = stocks.get((r.model, r.seq, r.batch))
        speed = f"{r.pairs_per_s / stock.pairs_per_s:.2f}" if stock else ""
        wall = f"{stock.end_to_end_s / r.end_to_end_s:.2f}" if stock else ""
        gap = loss_gap(r, stock) if stock and r is not stock else None
        lines.append(
            f"| {r.model} | {r.seq} | {r.batch} | {r.method} | {r.pairs_per_s:.0f} | {speed} | {r.end_to_end_s:.1f} | {wall} "
            f"| {r.first_step_s:.1f} | {r.real_tokens_per_s / 1e3:.0f}k | {100 * r.utilisation:.1f} | {r.peak_gib:.1f} "
            f"| {'' if gap is None else f'{100 * gap:.1f}%'} | {r.enabled} |"
        )
    if plot:
        lines += ["", f"![pairs/s per method]({plot})"]
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if not r.error]
    groups = list(dict.fromkeys(f"{r.model}\nseq {r.seq}" for r in ok))
    methods = list(dict.fromkeys(r.method for r in ok))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs, ys = [], []
        for r in ok:
            if r.method == method:
                xs.append(groups.index(f"{r.model}\nseq {r.seq}") + i * width)
                ys.append(r.pairs_per_s)
        ax.bar(xs, ys, width, label=method)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=8)
    ax.set_ylabel("pairs/s (steady state)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--only", nargs="*", help="rows as model:seq:batch:method,method (default: the device's plan)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 60 on cuda, 20 on cpu)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--plot", default=str(ROOT / "bench" / "speed.png"))
    parser.add_argument("--json", default=None, help="also write every result (loss curves too) as JSON here")
    parser.add_argument("--from-json", nargs="*", help="no runs: rewrite the report from results saved by --json")
    args = parser.parse_args(argv)

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (60 if device == "cuda" else 12)
    plan = args.only or (GPU_PLAN if device == "cuda" else CPU_PLAN)
    command = "python -m bench.speed " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.from_json:
        results = [Result(**row) for path in args.from_json for row in json.loads(Path(path).read_text())]
        plot = args.plot if args.plot and write_plot(results, Path(args.plot)) else None
        rel_plot = os.path.relpath(plot, Path(args.out).parent) if plot else None
        write_report(results, Path(args.out), device, command, rel_plot)
        return

    from bench.models import build

    if device == "cuda":  # context and cuBLAS start-up belong to no method
        (torch.randn(256, 256, device="cuda") @ torch.randn(256, 256, device="cuda")).sum().item()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for row in plan:
            name, seq, batch, methods = row.split(":")
            seq, batch = int(seq), int(batch)
            checkpoint = tmp / name
            if not checkpoint.exists():
                build(name, checkpoint)
            queries, documents = load_pairs(seq, join=max(1, seq // 256))
            for method in methods.split(","):
                print(f"== {name} seq {seq} batch {batch} {method}", flush=True)
                try:
                    result = run_one(name, checkpoint, seq, batch, method, steps, device, queries, documents,
                                     args.seed, tmp / "run")
                except Exception as error:  # one failed row must not lose the others
                    logging.exception("run failed")
                    result = Result(name, seq, batch, method, steps, error=f"{type(error).__name__}: {str(error)[:120]}")
                shutil.rmtree(tmp / "run", ignore_errors=True)
                results.append(result)
                print(json.dumps({k: v for k, v in asdict(result).items() if k != "losses"}), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))

    plot = args.plot if args.plot and write_plot(results, Path(args.plot)) else None
    if args.plot and not plot:
        print("matplotlib not installed: no plot")
    rel_plot = os.path.relpath(plot, Path(args.out).parent) if plot else None
    write_report(results, Path(args.out), device, command, rel_plot)
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
