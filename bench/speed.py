"""Training speed: stock sentence-transformers + PEFT against our fast path, in one process.

    python -m bench.speed                      # the GPU plan below, writes BENCHMARKS.md + bench/speed.png
    python -m bench.speed --device cpu         # a small version for a CPU
    python -m bench.speed --only minilm-l6:256:64:stock,ours
    python -m bench.speed --json runs.json --resume   # again and again where a sitting is time-limited:
                                                      # each run adds the plan rows runs.json lacks
    CUDA_VISIBLE_DEVICES=$k python -m bench.speed --shard $((k+1))/4 --json part$k.json   # k = 0..3, one a card
    python -m bench.speed --from-json part*.json      # the parts' rows as one report
    python -m bench.speed --gpus 1,2,4 --only bert-base:512:32:stock,ours   # data parallel: the batch is each GPU's
    python -m bench.speed --tasks              # rerankers and classifiers against their stock trainers (bench.speed_tasks)

Every run: the same random-weight checkpoint (bench.models), the same real text pairs (Debian
package synopsis -> long description), the same seed, batch, sequence length and LoRA settings
(r=16, alpha=32, no dropout, the family's target layers), the same batches (no text twice in a
batch), MultipleNegativesRankingLoss, AdamW at 2e-4, bf16 on CUDA. Methods:
- stock: SentenceTransformerTrainer as a user writes it today (padded batches, tokenizing on the main thread);
- stock-compile: stock plus `torch_compile=True`;
- ours: what `lacker train` runs on a GPU: `engine.attention.enable` (packed attention, fused LoRA) and
  `engine.loop.PackedTrainer` (texts tokenized once, one forward a batch, CUDA graphs); for LoRA it loads the
  base as `lacker train` does on a GPU: frozen weights in bf16, LoRA's in fp32 (engine.models.loading);
- ours-fp32base: ours over stock's fp32 base (each layer's weight cast to bf16 once and cached);
- ours-nokernels: ours without the Triton RoPE / RMSNorm / gated-activation kernels the loop patches in;
- stock-cached, ours-cached: CachedMultipleNegativesRankingLoss (GradCache: the batch embedded
  `engine.loop.CACHED_MINI_BATCH` sequences at a time, the same gradients in far less memory), through the
  trainer and through the loop (eager: no CUDA graphs there yet); for bench.longest;
- ours-padded: the loop over padded columns (what MPNet gets; on a CPU, to show what packing adds);
- ours-trainer: `engine.attention.enable` inside SentenceTransformerTrainer, tokenizing in DataLoader workers;
- ours-compile: ours-trainer plus per-layer torch.compile (compile time counted in the end-to-end time);
- ours-loopcompile: ours with each transformer layer torch.compiled (engine.kernels.compile_layers) inside the
  packed loop, its steps still replayed from CUDA graphs (compile time counted in the end-to-end time);
- unsloth: the model loaded and given its LoRA the way Unsloth documents for sentence-transformers
  (`FastSentenceTransformer.from_pretrained` + `get_peft_model`: bf16 weights, its default), trained by the same
  SentenceTransformerTrainer as stock. Unsloth compiles the encoder by itself only when max_steps passes a
  break-even it estimates (thousands of steps for MiniLM), so at 60 steps it runs uncompiled;
- unsloth-compile: unsloth with that compile forced (Unsloth's own `_apply_torch_compile`, what it runs past the
  break-even).
Unsloth must be imported before transformers and patches transformers, PEFT and sentence-transformers globally,
so each unsloth row runs in a process of its own (`--unsloth-child`, the result comes back as JSON) and the other
rows never see its patches. The child puts .devcarry/unsloth (Unsloth and its pure-Python needs, GPU_NOTES.md)
first on its path when that folder exists; where `import unsloth` fails (no GPU, not installed) the row is
reported as skipped with the reason.
A method ending in -qlora loads the base in 4-bit NF4 (bitsandbytes); -full trains every weight, no LoRA.
Pairs/s is steady state, from step 10 to the last step. End to end is load -> trained -> saved. The 600-step
end to end is measured when a run has 600 steps or more, else projected: the run's end to end plus the missing
steps at its steady-state pace.
Utilisation counts useful FLOPs only (GPU_NOTES.md): 4*N*T + 6*P*T + 12*L*d*S2 over 790 TFLOP/s.
With --gpus each row runs once per GPU count, as that many ranks under torchrun (engine.distributed), at the row's
batch on each GPU: ours gathers the in-batch negatives across GPUs in the packed loop; stock is
SentenceTransformerTrainer's DDP with MultipleNegativesRankingLoss(gather_across_devices=True) and its no-duplicates
sampler. The report is then a scaling table: pairs/s of all GPUs together, scaling efficiency (pairs/s on N over N
times pairs/s on 1), ours over stock at the same N, and peak memory of one card (rank 0's).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK_TFLOPS = 790.0  # dense bf16 matmul ceiling measured on the lent H100 (GPU_NOTES.md)
UNSLOTH_BUNDLE = ROOT / ".devcarry" / "unsloth"  # carried to the lent GPU, which has no Unsloth (GPU_NOTES.md)
LOG_EVERY = 5  # steps a logged loss averages (the trainer's logging_steps; the loop's losses are averaged alike)
LONG_RUN = 600  # steps of the longer run whose end to end is reported (measured, or projected from steady state)

# model:seq:batch:methods[:steps]. The whole plan takes about 25 minutes on one card (a lent GPU runs 10 minutes a
# command: run it as `--shard k/N` on N cards, or in several sittings with --json F --resume). The rows are
# ordered so that `--shard k/3` parts take similar time; the MiniLM row alone takes ~5 minutes (its compile rows).
# unsloth-compile spends 1.5-3 minutes compiling before its first step (GPU_NOTES.md); it runs for MiniLM only
# (BERT-base's took over 2.5 minutes there).
GPU_PLAN = (
    "minilm-l6:256:64:stock,ours,stock-compile,unsloth,unsloth-compile",
    "mpnet-base:256:64:stock,ours:600",  # 600 steps: MPNet packed through FlexAttention (from 300 steps on)
    "qwen3-0.6b:256:32:stock,ours",
    "bert-base:512:32:stock,ours",  # BERT's limit
    "qwen3-0.6b:256:32:stock-qlora,ours-qlora",
    "embeddinggemma-300m:256:64:stock,ours",
    "xlm-roberta-large:1024:16:stock,ours",
    "qwen3-0.6b:1024:16:stock,ours",
    "xlm-roberta-large:256:32:stock,ours",
    "mpnet-base:256:64:stock,ours",  # 60 steps: MPNet stays padded (FlexAttention's compile would not pay)
    "bert-base:256:64:stock,ours,unsloth",
    "embeddinggemma-300m:1024:32:stock,ours",
    "qwen3-4b:512:16:stock,ours",  # Qwen3-Embedding-4B's shape, written in bf16 as the real one (bench.models)
    "modernbert-base:1024:32:stock,ours",
    "mpnet-base:512:32:stock,ours",  # MPNet's limit
    "bert-base:256:64:stock-qlora,ours-qlora,stock-full,ours-full",
    "modernbert-base:256:64:stock,ours",
)
CPU_PLAN = ("minilm-l6:128:16:stock,ours,ours-padded",)  # the studio's CPU demo preset: seq 128, batch 16


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
    # Fields added later default to "not measured", so results saved before them still load.
    end_to_end_600_s: float = 0.0  # load -> LONG_RUN (600) steps -> saved; 0 when the run was shorter
    skipped: str = ""  # why the row did not run (e.g. `import unsloth` failed)
    card: str = ""  # where it ran, so that a report made later (--from-json) on another machine says so
    versions: str = ""
    measured: str = ""  # UTC time the row finished
    leftover_gib: float = 0.0  # CUDA memory still allocated when the run started (not counted in peak_gib)
    gpus: int = 1  # ranks of a --gpus run (batch is each one's; pairs_per_s is all of them together)


def load_pairs(seq: int, join: int) -> tuple[list[str], list[str]]:
    """Debian (synopsis, description) pairs; for long sequences `join` descriptions are concatenated
    so that documents reach the sequence length."""
    from engine.data import SAMPLE_DIR

    for candidate in (SAMPLE_DIR / "train.jsonl", ROOT / ".devcarry" / "debian-pairs" / "train.jsonl"):
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
    """Trainer callback: `mark(step)` after every step, and the logged losses."""

    def __init__(self, mark):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                mark(state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    clock.losses.append((state.global_step, float(logs["loss"])))

        self.callback = Callback()
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


def _variant(method: str) -> tuple[str, str]:
    """'ours-qlora' -> ('ours', 'qlora'); 'stock-compile' -> ('stock-compile', 'lora')."""
    for kind in ("qlora", "full"):
        if method.endswith("-" + kind):
            return method[: -len(kind) - 1], kind
    return method, "lora"


class _PlanSampler(list):
    """The batches every method of a row trains on, as a trainer batch sampler (a list of index lists)."""

    def __init__(self, plan):
        super().__init__([rows.tolist() for rows in plan])

    def __call__(self, dataset, **kwargs):
        return self


def _unsloth_note(model, batch: int, seq: int) -> str:
    """Unsloth's version and whether it compiled the encoder, with the break-even its trainer patch uses
    (LoRA and QLoRA only: it never compiles full fine-tuning, nor with gradient checkpointing, by itself)."""
    import torch
    from unsloth import FastSentenceTransformer, __version__

    compiled = isinstance(model[0].auto_model, torch._dynamo.eval_frame.OptimizedModule)
    note = f"Unsloth {__version__}, encoder {'compiled' if compiled else 'not compiled'}"
    if hasattr(model, "_compile_threshold"):
        threshold = FastSentenceTransformer._estimate_compile_threshold(model, batch_size=batch, grad_accum=1,
                                                                         max_seq_length=seq)
        return f"{note}; it compiles by itself from {threshold} steps"
    return f"{note}; it does not compile this run by itself"


def run_one(name: str, checkpoint: Path, seq: int, batch: int, method: str, steps: int, device: str,
            queries: list[str], documents: list[str], seed: int, workdir: Path,
            gradient_checkpointing: bool = False, mini_batch: int | None = None, cuda_graphs: bool = True) -> Result:
    """One method's run. `mini_batch`: sequences a cached method embeds at a time (default CACHED_MINI_BATCH);
    `cuda_graphs=False` keeps the loop eager (bench.profile --eager)."""
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (CachedMultipleNegativesRankingLoss,
                                                                    MultipleNegativesRankingLoss)
    from transformers import set_seed

    from bench.models import FAMILY_OF, load
    from engine import distributed
    from engine.attention import enable
    from engine.families import family_by_name
    from engine.loop import CACHED_MINI_BATCH, PackedTrainer, loop_unavailable, no_duplicate_batches
    from engine.models.loading import adapters_in_fp32, loader_kwargs

    cuda = device == "cuda"
    world = distributed.current()  # under --gpus: `batch` is each rank's, the plan's batches are all ranks'
    path, kind = _variant(method)
    unsloth = path.startswith("unsloth")
    if unsloth and "unsloth" not in sys.modules:
        raise RuntimeError(f"{method} needs Unsloth imported before transformers: run it through run_in_unsloth_process")
    result = Result(name, seq, batch, method, steps)
    family = family_by_name(FAMILY_OF[name])
    torch._dynamo.reset()
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        # Whatever an earlier run left allocated (every row runs stock first) is not this run's: it is recorded,
        # and the peak counts from it.
        result.leftover_gib = torch.cuda.memory_allocated() / 2**30
    rows = steps * batch * world.size
    # One batch order for every method: no text twice in a batch, as in-batch negatives want.
    row_texts = np.array([[hash(q), hash(d)] for q, d in zip(queries[:rows], documents[:rows])])
    plan = no_duplicate_batches(row_texts, batch * world.size, np.random.default_rng(seed))
    plan = [b for b in plan if len(b) == batch * world.size]
    # Runs longer than the data go round it again, in the same order, as the trainer's epochs do.
    plan = (plan * math.ceil(steps / max(1, len(plan))))[:steps]
    start = time.perf_counter()
    set_seed(seed)
    if unsloth:  # `checkpoint` is a SentenceTransformer folder (write_sentence_transformer)
        from unsloth import FastSentenceTransformer

        model = FastSentenceTransformer.from_pretrained(
            str(checkpoint), max_seq_length=seq, load_in_4bit=kind == "qlora", load_in_16bit=kind != "qlora",
            full_finetuning=kind == "full", use_gradient_checkpointing=gradient_checkpointing)
    else:
        model_kwargs = {}
        if kind == "qlora":
            from transformers import BitsAndBytesConfig

            model_kwargs = {"quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_quant_storage=torch.bfloat16), "dtype": torch.bfloat16}
        elif cuda and kind == "lora" and path.startswith("ours") and path != "ours-fp32base":
            model_kwargs = loader_kwargs(device, None, load_in_4bit=False, full_finetuning=False, for_inference=False,
                                         kwargs={})  # the dtype `lacker train` loads LoRA's base in
        model = load(name, checkpoint, max_seq_length=seq, device=None if kind == "qlora" else device, **model_kwargs)
    tokenizer = model[0].tokenizer
    limit = getattr(model[0].model.config, "max_position_embeddings", None)
    first_position = model[0]._infer_flatten_position_offset()  # padding_idx + 1 for RoBERTa-likes
    if limit is not None and seq + first_position > limit:  # would index past the position table
        raise ValueError(f"{name} has {limit} positions; sequence length {seq} does not fit")
    n_linear, layers, width = _flop_counts(model[0].model)
    if kind != "full" and unsloth:
        model = FastSentenceTransformer.get_peft_model(
            model, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(family.lora_targets),
            use_gradient_checkpointing=gradient_checkpointing, random_state=seed)
    elif kind != "full":
        model.add_adapter(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(family.lora_targets)))
        if path.startswith("ours"):
            adapters_in_fp32(model[0].auto_model)
    trained_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loop = path in ("ours", "ours-fp32base", "ours-padded", "ours-nokernels", "ours-cached", "ours-loopcompile")
    if path.startswith("ours"):
        result.enabled = enable(model, family, compile=path in ("ours-compile", "ours-loopcompile"), allow_cpu=loop,
                                packing=path != "ours-padded", steps=steps) or "nothing (see log)"
    steady_from = min(10, steps // 2)
    times: dict[int, float] = {}

    def mark(step):
        if step in (1, steady_from, LONG_RUN, steps):
            if cuda:
                torch.cuda.synchronize()
            times[step] = time.perf_counter()

    unavailable = loop_unavailable(model, "MultipleNegativesRankingLoss") if loop else None
    if unavailable:  # what the engine does then: the trainer
        result.enabled += f"; trainer ({unavailable})"
    if loop and not unavailable:
        trainer = PackedTrainer(model, [queries[:rows], documents[:rows]], batch_size=batch, learning_rate=2e-4,
                                steps=steps, seed=seed, kernels=path != "ours-nokernels", cuda_graphs=cuda_graphs,
                                mini_batch=(mini_batch or CACHED_MINI_BATCH) if path == "ours-cached" else None)
        trainer.plan = plan
        records = []
        trainer.fit(on_steps=records.extend, after_step=mark)
        result.losses = [(step, sum(r[1] for r in records[step - LOG_EVERY : step]) / LOG_EVERY)
                         for step in range(LOG_EVERY, steps + 1, LOG_EVERY)]
        if trainer.kernel_note:
            result.enabled += f"; {trainer.kernel_note}"
        if trainer.graph_note:
            result.enabled += f"; {trainer.graph_note}"
        elif cuda:
            result.enabled += f"; CUDA graphs over {sum(not isinstance(g, str) for g in trainer.graphs.values())} shapes"
    else:
        data = Dataset.from_dict({"anchor": queries[:rows], "positive": documents[:rows]})
        args = SentenceTransformerTrainingArguments(
            output_dir=str(workdir / "trainer"),
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=2e-4,
            warmup_steps=0,
            bf16=cuda,
            use_cpu=not cuda,
            logging_steps=LOG_EVERY,
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            # On several ranks accelerate shards the batches itself: the stock sampler, as a user runs DDP.
            batch_sampler="no_duplicates" if world.distributed else _PlanSampler(plan),
            torch_compile=path == "stock-compile",
            disable_tqdm=True,
            **({"dataloader_num_workers": 2, "dataloader_prefetch_factor": 4, "dataloader_pin_memory": True,
                "dataloader_persistent_workers": True} if path.startswith("ours") and cuda else {}),
        )
        if path == "unsloth-compile":  # what Unsloth's trainer patch runs once max_steps passes its break-even
            FastSentenceTransformer._apply_torch_compile(model, mode=getattr(model, "_compile_mode", None) or "default")
            model._compile_pending = False
        clock = _Clock(mark)
        gather = {"gather_across_devices": True} if world.distributed else {}
        loss = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch or CACHED_MINI_BATCH, **gather)
                if path == "stock-cached" else MultipleNegativesRankingLoss(model, **gather))
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, callbacks=[clock.callback],
                                             loss=loss)
        if unsloth:
            result.enabled = _unsloth_note(model, batch, seq)
        trainer.train()
        result.losses = clock.losses
    trained = time.perf_counter()
    model.save(str(workdir / "model"))
    saved = time.perf_counter()
    result.end_to_end_s = saved - start
    if steps >= LONG_RUN:  # the same run stopped at LONG_RUN steps: its time then, plus the save
        result.end_to_end_600_s = times[LONG_RUN] - start + saved - trained
    result.first_step_s = times[1] - start
    result.pairs_per_s = (steps - steady_from) * batch * world.size / (times[steps] - times[steady_from])
    result.gpus = world.size
    result.peak_gib = torch.cuda.max_memory_allocated() / 2**30 - result.leftover_gib if cuda else 0.0

    # Real (non-pad) tokens and squared lengths per pair, averaged over the run's pairs after truncation.
    def lengths(texts):
        return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=seq)["input_ids"]]

    lens = lengths(queries[:rows]) + lengths(documents[:rows])
    tokens_per_pair = sum(lens) / rows
    squares_per_pair = sum(length * length for length in lens) / rows
    result.real_tokens_per_s = result.pairs_per_s * tokens_per_pair
    base_flops = 6 if kind == "full" else 4  # a frozen base needs no weight gradients
    extra = 0 if kind == "full" else 6 * trained_params
    flops_per_pair = base_flops * n_linear * tokens_per_pair + extra * tokens_per_pair + 12 * layers * width * squares_per_pair
    result.utilisation = result.pairs_per_s * flops_per_pair / (PEAK_TFLOPS * 1e12)
    del trainer, model
    gc.collect()
    return result


def warm_up(device: str) -> None:
    """CUDA context and cuBLAS start-up belong to no method."""
    if device == "cuda":
        import torch

        (torch.randn(256, 256, device="cuda") @ torch.randn(256, 256, device="cuda")).sum().item()


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def run_in_unsloth_process(name: str, checkpoint: Path, seq: int, batch: int, method: str, steps: int, device: str,
                           seed: int, workdir: Path, gradient_checkpointing: bool = False) -> Result:
    """One unsloth row in a child `python -m bench.speed --unsloth-child SPEC`: Unsloth has to be imported before
    transformers and patches transformers, PEFT and sentence-transformers for the whole process, so it gets a
    process of its own and the other rows stay stock. The child's Result comes back as JSON in a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "unsloth-result.json"
    spec = dict(name=name, checkpoint=str(checkpoint), seq=seq, batch=batch, method=method, steps=steps, device=device,
                seed=seed, workdir=str(workdir), gradient_checkpointing=gradient_checkpointing, out=str(out))
    env = dict(os.environ)
    paths = ([str(UNSLOTH_BUNDLE)] if UNSLOTH_BUNDLE.is_dir() else []) + [str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if device == "cuda":  # leave the child the card's memory
        import torch

        torch.cuda.empty_cache()
    code = subprocess.run([sys.executable, "-m", "bench.speed", "--unsloth-child", json.dumps(spec)], env=env).returncode
    if out.exists():
        return Result(**json.loads(out.read_text()))
    return Result(name, seq, batch, method, steps, error=f"the unsloth process exited with code {code} (its log is above)")


def write_sentence_transformer(name: str, checkpoint: Path, seq: int, directory: Path) -> Path:
    """The bench checkpoint as a SentenceTransformer folder (modules.json: Transformer + the family's pooling), the
    form Unsloth's FastSentenceTransformer supports best (it guesses the pooling of a bare transformers folder)."""
    from bench.models import load

    load(name, checkpoint, max_seq_length=seq, device="cpu").save(str(directory))
    return directory


def run_unsloth_child(spec: dict) -> None:
    """The child side of run_in_unsloth_process: Unsloth first, then the row; writes the Result to spec["out"]."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # it would fetch a file from the Hub
    os.environ.setdefault("UNSLOTH_DISABLE_CPU_FALLBACK", "1")  # no GPU: fail the import, do not train on the CPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is a local folder
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workdir = Path(spec["workdir"])
    # Unsloth writes generated trainer sources into ./unsloth_compiled_cache: keep them out of the repo. Fresh
    # compile caches too, so unsloth-compile pays a first compile, as a user does, not stock-compile's leftovers.
    os.environ["UNSLOTH_COMPILE_LOCATION"] = str(workdir / "unsloth_compiled_cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(workdir / "triton")
    name, seq, batch, method, steps = (spec[key] for key in ("name", "seq", "batch", "method", "steps"))
    result = Result(name, seq, batch, method, steps)
    began = time.perf_counter()
    try:
        importlib.import_module("unsloth").FastSentenceTransformer  # before anything imports transformers
    except Exception as error:  # no GPU, not installed, a version it refuses, or its CPU backend (no such class)
        where = "" if UNSLOTH_BUNDLE.is_dir() else f"; no {UNSLOTH_BUNDLE.relative_to(ROOT)} here"
        result.skipped = f"import unsloth failed: {_one_line(error)}{where}"
    else:
        imported = time.perf_counter() - began
        try:
            warm_up(spec["device"])
            checkpoint = write_sentence_transformer(name, Path(spec["checkpoint"]), seq, workdir / "checkpoint")
            queries, documents = load_pairs(seq, join=max(1, seq // 256))
            result = run_one(name, checkpoint, seq, batch, method, steps, spec["device"], queries, documents,
                             spec["seed"], workdir, gradient_checkpointing=spec["gradient_checkpointing"])
            result.enabled += f"; import unsloth took {imported:.1f} s (not in end to end, like stock's imports)"
        except Exception as error:
            logging.exception("run failed")
            result.error = f"{type(error).__name__}: {str(error)[:120]}"
    Path(spec["out"]).write_text(json.dumps(asdict(result)))


def diverged(result: Result) -> int | None:
    """The first logged step whose loss is not finite and positive: the run had diverged by then. (The trainer
    logs a window of NaN losses as 0, and fills a NaN step inside a window with the window's running mean.)"""
    return next((step for step, loss in result.losses if not (math.isfinite(loss) and loss > 0)), None)


def compared_until(result: Result, stock: Result) -> int | None:
    """The last logged step where both curves are sound: before the window preceding either run's divergence
    (that window may hold NaN steps filled in); None when neither diverged."""
    stops = [step for step in (diverged(result), diverged(stock)) if step is not None]
    return min(stops) - 2 * LOG_EVERY if stops else None


def loss_gap(result: Result, stock: Result, after: int = 20) -> float | None:
    """Largest relative gap between two loss curves at logged steps after `after`, up to `compared_until`."""
    until = compared_until(result, stock)
    ref = dict(stock.losses)
    gaps = [abs(loss - ref[step]) / ref[step] for step, loss in result.losses
            if after < step and step in ref and (until is None or step <= until)]
    return max(gaps) if gaps else None


def _gap_cell(result: Result, stock: Result) -> str:
    gap = loss_gap(result, stock)
    text = "" if gap is None else f"{100 * gap:.1f}%"
    until = compared_until(result, stock)
    if until is not None:
        ours, theirs = diverged(result), diverged(stock)
        who = "stock" if theirs is not None and (ours is None or theirs <= ours) else result.method
        text += f" to step {until} ({who} diverged: loss not finite by step {until + 2 * LOG_EVERY})"
    return text.strip()


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


def end_to_end_600(result: Result) -> tuple[float, bool]:
    """(seconds from load to a LONG_RUN-step run saved, whether projected): measured when the run had LONG_RUN steps
    or more, else its end to end plus the missing steps at its steady-state seconds per step."""
    if result.end_to_end_600_s:
        return result.end_to_end_600_s, False
    return result.end_to_end_s + (LONG_RUN - result.steps) * result.batch / result.pairs_per_s, True


def _ran(result: Result) -> bool:
    return not (result.error or result.skipped)


def _stock_key(r: Result) -> tuple:
    """The stock row a row is compared with: same model, length, batch, steps and weights (LoRA, QLoRA, full)."""
    return r.model, r.seq, r.batch, r.steps, _variant(r.method)[1]


def _report_order(r: Result) -> tuple:
    """LoRA rows first, then by sequence length, model (bench.models' order), steps and batch; methods keep
    their order within a row."""
    from bench.models import FAMILY_OF

    models = list(FAMILY_OF)
    return (_variant(r.method)[1] != "lora", r.seq, models.index(r.model) if r.model in models else len(models),
            r.steps, r.batch)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _described(values: list[str], here) -> str:
    """The distinct values rows recorded (in order), or `here()` where none did (results saved before they were)."""
    distinct = list(dict.fromkeys(v for v in values if v))
    return "; ".join(distinct) if distinct else here()


def write_report(results: list[Result], path: Path, device: str, command: str, plot: str | None) -> None:
    measured = sorted(r.measured for r in results if r.measured)
    lines = [
        "# Training speed",
        "",
        f"- card: {_described([r.card for r in results], lambda: card(device))}",
        f"- versions: {_described([r.versions for r in results], versions)}",
        f"- date: {measured[0] + ' to ' + measured[-1] if measured else _now()}",
        f"- command: `{command}`",
        "- every row: SentenceTransformerTrainer, MultipleNegativesRankingLoss, LoRA r=16 alpha=32 on the family's",
        "  target layers, random-weight model built from its config (bench/models.py), Debian synopsis -> description",
        f"  pairs, seed 42, {'bf16 autocast' if device == 'cuda' else 'float32'}, one run per row (no repeats: noise not measured here).",
        "- pairs/s: steady state, from step min(10, steps/2) to the last; end to end: load -> trained -> adapter saved, compile included;",
        f"  utilisation: useful FLOPs (4NT + 6PT + 12 L d S2) over {PEAK_TFLOPS:.0f} TFLOP/s; loss gap: largest relative",
        f"  difference from stock's loss at the logged steps (every {LOG_EVERY}) after step 20; where either run's loss stopped",
        "  being finite, only up to the window before (the cell says who diverged). peak: CUDA memory allocated at the",
        "  run's high point, less what earlier runs still held when it started (shown beside it when any).",
        f"- {LONG_RUN}-step end to end: measured where a run had {LONG_RUN} steps or more; marked ~ where projected from",
        f"  this run: its end to end + ({LONG_RUN} - steps) x its steady-state seconds per step (the same code path: an",
        "  unsloth row that Unsloth would compile by itself at that length, see enabled, is closer to unsloth-compile).",
    ]
    if any(_variant(r.method)[0].startswith("unsloth") for r in results):
        lines += [
            "- unsloth rows: Unsloth's `FastSentenceTransformer.from_pretrained` + `get_peft_model` (bf16 weights, its",
            "  default; QLoRA: its NF4 with double quantization) trained by the same SentenceTransformerTrainer, each",
            "  row in a process of its own, so the other rows ran without Unsloth's patches.",
        ]
    lines += [
        "",
        f"| model | seq | batch | steps | method | pairs/s | x stock | end to end s | x stock | {LONG_RUN}-step end to end s (~ projected) "
        "| x stock | first step s | real tok/s | util % | peak GiB | loss gap | enabled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stocks = {_stock_key(r): r for r in results if _variant(r.method)[0] == "stock" and _ran(r)}
    for r in results:
        if not _ran(r):
            outcome = f"skipped: {r.skipped}" if r.skipped else f"failed: {r.error}"
            lines.append(f"| {r.model} | {r.seq} | {r.batch} | {r.steps} | {r.method} | {outcome} |" + "  |" * 11)
            continue
        stock = stocks.get(_stock_key(r))
        speed = f"{r.pairs_per_s / stock.pairs_per_s:.2f}" if stock else ""
        wall = f"{stock.end_to_end_s / r.end_to_end_s:.2f}" if stock else ""
        long, projected = end_to_end_600(r)
        long_wall = f"{end_to_end_600(stock)[0] / long:.2f}" if stock else ""
        gap = _gap_cell(r, stock) if stock and r is not stock else ""
        lines.append(
            f"| {r.model} | {r.seq} | {r.batch} | {r.steps} | {r.method} | {r.pairs_per_s:.0f} | {speed} | {r.end_to_end_s:.1f} | {wall} "
            f"| {'~' if projected else ''}{long:.1f} | {long_wall} "
            f"| {r.first_step_s:.1f} | {r.real_tokens_per_s / 1e3:.0f}k | {100 * r.utilisation:.1f} | {r.peak_gib:.1f}"
            f"{f' (+{r.leftover_gib:.1f} left by earlier runs)' if r.leftover_gib >= 0.05 else ''} "
            f"| {gap} | {r.enabled} |"
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
    ok = [r for r in results if _ran(r)]
    stocks = {_stock_key(r): r for r in ok if _variant(r.method)[0] == "stock"}
    bars = [(r, stocks.get(_stock_key(r))) for r in ok if _variant(r.method)[0] != "stock"]
    bars = [(r, stock) for r, stock in bars if stock is not None]
    def group(r):
        return f"{r.model}\nseq {r.seq}" + (f", {r.steps} steps" if r.steps != bars[0][0].steps else "")

    groups = list(dict.fromkeys(group(r) for r, _ in bars))
    methods = list(dict.fromkeys(r.method for r, _ in bars))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs, ys = [], []
        for r, stock in bars:
            if r.method == method:
                xs.append(groups.index(group(r)) + i * width)
                ys.append(r.pairs_per_s / stock.pairs_per_s)
        ax.bar(xs, ys, width, label=method)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(4.0, color="grey", linewidth=0.8, linestyle="--", label="4x target")
    ax.set_yscale("log")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=7)
    ax.set_ylabel("steady-state pairs/s, x stock (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def run_on_gpu_counts(plan, counts: list[int], steps: int, device: str, args) -> list[Result]:
    """Each row of `plan` as `count` ranks under torchrun, for each count (`--rank-json` children: one sitting of
    ranks a row and count, so that every count runs the same rows alike). Unsloth rows are left out (no DDP)."""
    from engine.distributed import run_ranks

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in plan:
            name, seq, batch, methods, *row_steps = row.split(":")
            methods = [m for m in methods.split(",") if not m.startswith("unsloth")]
            for count in counts:
                out = Path(tmp) / f"{name}-{seq}-{count}.json"
                flags = ["--only", ":".join([name, seq, batch, ",".join(methods), *row_steps]), "--steps", str(steps),
                         "--seed", str(args.seed), "--device", device, "--rank-json", str(out)]
                code = run_ranks(count, ["bench.speed", *flags, *(["--gradient-checkpointing"] * args.gradient_checkpointing)])
                if code or not out.exists():
                    results += [Result(name, int(seq), int(batch), m, int(row_steps[0]) if row_steps else steps, gpus=count,
                                       error=f"torchrun with {count} ranks exited {code}") for m in methods]
                    continue
                results += [Result(**r) for r in json.loads(out.read_text())]
    return results


def write_scaling_report(results: list[Result], path: Path, command: str) -> None:
    """The --gpus table: a row a model, method and GPU count."""
    measured = sorted(r.measured for r in results if r.measured)
    lines = [
        "# Training speed on several GPUs",
        "",
        f"- card: {_described([r.card for r in results], lambda: card('cuda'))}",
        f"- versions: {_described([r.versions for r in results], versions)}",
        f"- date: {measured[0] + ' to ' + measured[-1] if measured else _now()}",
        f"- command: `{command}`",
        "- batch is each GPU's; pairs/s counts every GPU's pairs; scaling: pairs/s on N GPUs over N x pairs/s on one;",
        "  ours: the packed loop, negatives gathered across GPUs; stock: SentenceTransformerTrainer DDP with",
        "  gather_across_devices=True. peak GiB: rank 0's card.",
        "",
        "| model | seq | batch a GPU | method | GPUs | pairs/s | scaling | x stock | peak GiB a card | enabled |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ran = {(r.model, r.seq, r.batch, r.method, r.gpus): r for r in results if _ran(r)}
    stocks = {(_stock_key(r), r.gpus): r for r in results if _variant(r.method)[0] == "stock" and _ran(r)}
    for r in results:
        if not _ran(r):
            lines.append(f"| {r.model} | {r.seq} | {r.batch} | {r.method} | {r.gpus} | failed: {r.error} |  |  |  |  |")
            continue
        one = ran.get((r.model, r.seq, r.batch, r.method, 1))
        stock = stocks.get((_stock_key(r), r.gpus))
        scaling = f"{100 * r.pairs_per_s / (r.gpus * one.pairs_per_s):.0f}%" if one else ""
        versus = f"{r.pairs_per_s / stock.pairs_per_s:.2f}" if stock and r is not stock else ""
        lines.append(f"| {r.model} | {r.seq} | {r.batch} | {r.method} | {r.gpus} | {r.pairs_per_s:.0f} | {scaling} "
                     f"| {versus} | {r.peak_gib:.1f} | {r.enabled} |")
    path.write_text("\n".join(lines) + "\n")


def shard(plan, spec: str) -> list[str]:
    """Rows K, K+N, K+2N... of `plan` for spec "K/N" (K from 1)."""
    try:
        k, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise SystemExit(f"--shard {spec!r}: expected K/N, as 2/3 for the second of three") from None
    if not 1 <= k <= n:
        raise SystemExit(f"--shard {spec!r}: K must be between 1 and N")
    return list(plan)[k - 1 :: n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--only", nargs="*", help="rows as model:seq:batch:method,method[:steps] (default: the device's plan)")
    parser.add_argument("--shard", default=None, metavar="K/N", help="only the plan's rows K, K+N, K+2N... (1-based): "
                        "N processes, one a card, each with its own --json, together run the plan (--from-json joins them)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 60 on cuda, 16 on cpu)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--plot", default=None, help="bar chart of pairs/s over stock (default: bench/speed.png with the "
                        "default --out, else beside --out with .png; '' for none)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--json", default=None, help="also write every result (loss curves too) as JSON here")
    parser.add_argument("--from-json", nargs="*", help="no runs: rewrite the report from results saved by --json")
    parser.add_argument("--resume", action="store_true", help="with --json: keep the rows that file already holds "
                        "and run only the plan rows it lacks (a plan too long for one sitting runs in several; a row "
                        "with a failed or missing method runs again whole). One file per --gradient-checkpointing setting")
    parser.add_argument("--gpus", default=None, metavar="N,N,...", help="data parallel: run each row on each of these "
                        "GPU counts under torchrun (the row's batch on each GPU) and report pairs/s and scaling efficiency")
    parser.add_argument("--time-to-model", action="store_true", help="also bench.time_to_model's rows (command to "
                        "saved model, stock and ours each a whole process), as a section of the report")
    parser.add_argument("--unsloth-child", metavar="SPEC", help=argparse.SUPPRESS)  # run_in_unsloth_process's child
    parser.add_argument("--rank-json", metavar="FILE", help=argparse.SUPPRESS)  # a rank of a --gpus run: rank 0 writes
    if "--tasks" in (sys.argv[1:] if argv is None else argv):  # rerankers and classifiers: bench.speed_tasks
        from bench import speed_tasks

        return speed_tasks.main([a for a in (sys.argv[1:] if argv is None else argv) if a != "--tasks"])
    args = parser.parse_args(argv)
    if args.plot is None:  # a report written elsewhere must not overwrite the committed chart
        out = Path(args.out)
        args.plot = str(ROOT / "bench" / "speed.png" if out.resolve() == ROOT / "BENCHMARKS.md" else out.with_suffix(".png"))
    if args.unsloth_child:  # before anything imports torch or transformers
        run_unsloth_child(json.loads(args.unsloth_child))
        return

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (60 if device == "cuda" else 16)
    plan = args.only or (GPU_PLAN if device == "cuda" else CPU_PLAN)
    if args.shard:
        plan = shard(plan, args.shard)
    command = "python -m bench.speed " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.from_json:
        results = [Result(**row) for path in args.from_json for row in json.loads(Path(path).read_text())]
        if any(r.card and not r.card.startswith("CPU") for r in results):  # rows from a GPU, reported elsewhere
            device = "cuda"
        results.sort(key=_report_order)  # parts of a plan (--shard) come back in any order
        plot = args.plot if args.plot and write_plot(results, Path(args.plot)) else None
        rel_plot = os.path.relpath(plot, Path(args.out).parent) if plot else None
        write_report(results, Path(args.out), device, command, rel_plot)
        return

    from bench.models import build

    if args.gpus and not args.rank_json:
        results = run_on_gpu_counts(plan, [int(n) for n in args.gpus.split(",")], steps, device, args)
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
        write_scaling_report(results, Path(args.out), command)
        print(Path(args.out).read_text())
        return
    world = None
    if args.rank_json:
        from engine import distributed

        world = distributed.setup()
    results: list[Result] = []
    if args.resume and args.json and Path(args.json).exists():
        results = [Result(**row) for row in json.loads(Path(args.json).read_text()) if not row.get("error")]
        print(f"resuming: {len(results)} rows already in {args.json}", flush=True)
    done = {(r.model, r.seq, r.batch, r.method, r.steps) for r in results}
    where = (card(device), versions())  # recorded in every result
    warm_up(device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for row in plan:
            name, seq, batch, methods, *row_steps = row.split(":")
            seq, batch = int(seq), int(batch)
            run_steps = int(row_steps[0]) if row_steps else steps
            keys = [(name, seq, batch, m, run_steps) for m in methods.split(",")]
            if all(key in done for key in keys):
                continue
            # A row runs whole in one sitting, so that its ratios compare runs of one process on one card.
            results = [r for r in results if (r.model, r.seq, r.batch, r.method, r.steps) not in keys]
            checkpoint = (Path(args.rank_json).parent if world else tmp) / name  # ranks: one copy, rank 0's
            if not checkpoint.exists() and (world is None or world.main):
                build(name, checkpoint)
            if world is not None and world.distributed:
                import torch.distributed

                torch.distributed.barrier()
            queries, documents = load_pairs(seq, join=max(1, seq // 256))
            for method in methods.split(","):
                print(f"== {name} seq {seq} batch {batch} {method}", flush=True)
                try:
                    if method.startswith("unsloth"):
                        result = run_in_unsloth_process(name, checkpoint, seq, batch, method, run_steps, device, args.seed,
                                                        tmp / "run", gradient_checkpointing=args.gradient_checkpointing)
                    else:
                        result = run_one(name, checkpoint, seq, batch, method, run_steps, device, queries, documents,
                                         args.seed, tmp / "run", gradient_checkpointing=args.gradient_checkpointing)
                except Exception as error:  # one failed row must not lose the others
                    logging.exception("run failed")
                    result = Result(name, seq, batch, method, run_steps, error=f"{type(error).__name__}: {str(error)[:120]}")
                shutil.rmtree(tmp / "run", ignore_errors=True)
                result.card, result.versions, result.measured = where + (_now(),)
                result.gpus = world.size if world else 1
                results.append(result)
                print(json.dumps({k: v for k, v in asdict(result).items() if k != "losses"}), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))

    if args.rank_json:
        from engine import distributed

        if distributed.is_main():
            Path(args.rank_json).write_text(json.dumps([asdict(r) for r in results]))
        distributed.teardown()
        return
    plot = args.plot if args.plot and write_plot(results, Path(args.plot)) else None
    if args.plot and not plot:
        print("matplotlib not installed: no plot")
    rel_plot = os.path.relpath(plot, Path(args.out).parent) if plot else None
    write_report(results, Path(args.out), device, command, rel_plot)
    if args.time_to_model:
        from bench import time_to_model

        lines = time_to_model.report_lines(time_to_model.run_rows(time_to_model.rows_for(device)), command)
        with Path(args.out).open("a") as report:
            report.write("\n" + "\n".join(lines) + "\n")
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
