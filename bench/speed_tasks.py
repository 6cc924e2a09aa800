"""Training speed of rerankers and classifiers: the stock trainers against our packed loop, in one process.

    python -m bench.speed --tasks                                   # the GPU plan below; a table to --out
    python -m bench.speed --tasks --only reranker:bert-base:512:32:stock,ours --json tasks.json
    python -m bench.speed --tasks --device cpu                      # a small version for a CPU

Every row: the same random-weight checkpoint built from the real config (bench.models), the same text rows
(Debian synopsis -> long description, bench.speed.load_pairs; documents joined to reach long sequences), the
same seed and the same batches (shuffled rows, every batch full), dropout off in both (the packed attention
has no attention dropout, and the loss curves are compared), AdamW at 2e-4 without warm-up, bf16 on CUDA.

- reranker rows: (query, document) pairs, every other one's document another row's (label 0), the rest
  relevant (label 1); BinaryCrossEntropyLoss with pos_weight 1.
  stock: `sentence_transformers.CrossEncoder` (fp32 weights) + PEFT LoRA (r=16, alpha=32, the family's targets,
  the head trained in full), CrossEncoderTrainer with bf16 autocast, tokenizing each batch on the main thread,
  as a user writes it;
- classifier rows: single texts (the documents) in 8 classes; cross-entropy (the classifier task's loss).
  stock: transformers `AutoModelForSequenceClassification` (fp32) + the same LoRA, transformers' Trainer with
  bf16 autocast over texts tokenized ahead and padded per batch (DataCollatorWithPadding);
- ours: what `lacker train --task reranker|classifier` runs on a GPU: FastCrossEncoder / FastClassifier (a
  16-bit base under LoRA, fp32 for full fine-tuning), `engine.attention.enable` (varlen attention, fused LoRA)
  and `engine.loop.scoring.ScoringTrainer` (rows tokenized once, each pair one packed sequence, CUDA graphs, the
  Triton kernels where the family has them).
A method ending in -full trains every weight, no LoRA; -qlora (rerankers) loads the encoder in 4-bit NF4
(bitsandbytes), its head unquantized. pairs/s: steady state from step min(10, steps/2) to the
last; peak: CUDA memory allocated at the run's high point; loss gap: the largest relative difference from stock's
loss (averaged over LOG_EVERY steps) after step 20. The issue's targets: at least 5x stock's pairs/s, at most 0.6x
its peak memory, loss curves within 2%.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.speed import (LOG_EVERY, ROOT, Result, _Clock, _gap_cell, _now, _PlanSampler, _variant, card, load_pairs,
                         versions)

GPU_PLAN = (
    "reranker:minilm-l6:256:64:stock,ours",
    "reranker:bert-base:512:32:stock,ours",
    "reranker:xlm-roberta-large:512:32:stock,ours",  # bge-reranker-v2-m3's shape
    "reranker:modernbert-base:512:32:stock,ours",
    "reranker:bert-base:512:32:stock-full,ours-full",
    "reranker:minilm-l6:256:64:stock-full,ours-full",
    "classifier:minilm-l6:256:64:stock,ours",
    "classifier:bert-base:512:32:stock,ours",
    "classifier:xlm-roberta-large:512:32:stock,ours",
    "classifier:modernbert-base:512:32:stock,ours",
    "classifier:bert-base:512:32:stock-full,ours-full",
)
CPU_PLAN = ("reranker:tiny-bert:128:16:stock,ours", "classifier:tiny-modernbert:128:16:stock,ours")
CLASSES = 8
TARGETS = {"speed": 5.0, "memory": 0.6, "loss_gap": 0.02}  # issue 14's


@dataclass
class TaskResult(Result):
    task: str = ""


def task_rows(task: str, queries: list[str], documents: list[str], rows: int) -> tuple[list, list | None, list]:
    """(texts, text pairs or None, labels) for `rows` rows of a task."""
    if task == "reranker":
        shifted = documents[1:rows + 1]
        pairs = [documents[i] if i % 2 == 0 else shifted[i] for i in range(rows)]
        return queries[:rows], pairs, [float(i % 2 == 0) for i in range(rows)]
    return documents[:rows], None, [i % CLASSES for i in range(rows)]


def no_dropout(model) -> None:
    """Every dropout off: modules, attention dropout held as floats, and the configs that later modules read."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        for name, value in (config.to_dict().items() if hasattr(config, "to_dict") else ()):
            if "dropout" in name and isinstance(value, float):
                setattr(config, name, 0.0)


def stock_lora(hf_model, family):
    """PEFT LoRA as a user adds it: the family's targets, the head (every top-level module outside the base model
    that has weights) trained in full."""
    from peft import LoraConfig

    from engine.models.cross_encoder import head_modules

    head = head_modules(hf_model)
    hf_model.add_adapter(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(family.lora_targets),
                                    modules_to_save=head, exclude_modules=head, task_type="SEQ_CLS"))


def load_ours(task: str, checkpoint: Path, seq: int, kind: str, device: str):
    from engine.models import FastClassifier, FastCrossEncoder

    full = kind == "full"
    if task == "reranker":
        model = FastCrossEncoder.from_pretrained(str(checkpoint), max_seq_length=seq, full_finetuning=full,
                                                 load_in_4bit=kind == "qlora", device=device)
        peft = FastCrossEncoder
    elif kind == "qlora":
        raise ValueError("the tasks bench runs QLoRA for rerankers only")
    else:
        model = FastClassifier.from_pretrained(str(checkpoint), labels=[f"class{i}" for i in range(CLASSES)],
                                               max_seq_length=seq, full_finetuning=full, device=device)
        peft = FastClassifier
    no_dropout(model)
    if not full:
        peft.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.0, random_state=0)
    return model


def load_stock(task: str, checkpoint: Path, seq: int, kind: str, device: str, family):
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if task == "reranker":
        model_kwargs = None
        if kind == "qlora":  # NF4 as bench.speed's stock-qlora, the head left unquantized as it must be to train
            from transformers import AutoConfig, BitsAndBytesConfig

            from engine.models.loading import sequence_head

            head = sequence_head(AutoConfig.from_pretrained(str(checkpoint)), 1)
            model_kwargs = {"dtype": torch.bfloat16, "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                llm_int8_skip_modules=head)}
        model = CrossEncoder(str(checkpoint), num_labels=1, max_length=seq, device=device, model_kwargs=model_kwargs)
        hf_model = model[0].auto_model
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint), num_labels=CLASSES,
                                                                   dtype=torch.float32).to(device)
        model.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), model_max_length=seq)
        hf_model = model
    no_dropout(model)
    if kind != "full":
        stock_lora(hf_model, family)
    return model


def run_one(task: str, name: str, checkpoint: Path, seq: int, batch: int, method: str, steps: int, device: str,
            queries: list[str], documents: list[str], seed: int, workdir: Path) -> TaskResult:
    import numpy as np
    import torch
    from transformers import set_seed

    from bench.models import FAMILY_OF
    from engine.attention import enable
    from engine.families import family_by_name

    cuda = device == "cuda"
    path, kind = _variant(method)
    result = TaskResult(name, seq, batch, method, steps, task=task)
    family = family_by_name(FAMILY_OF[name])
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result.leftover_gib = torch.cuda.memory_allocated() / 2**30
    rows = steps * batch
    texts, pairs, labels = task_rows(task, queries, documents, rows)
    order = np.random.default_rng(seed).permutation(rows)
    plan = [order[i : i + batch] for i in range(0, rows, batch)]
    steady_from = min(10, steps // 2)
    times: dict[int, float] = {}

    def mark(step):
        if step in (1, steady_from, steps):
            if cuda:
                torch.cuda.synchronize()
            times[step] = time.perf_counter()

    start = time.perf_counter()
    set_seed(seed)
    if path == "ours":
        model = load_ours(task, checkpoint, seq, kind, device)
        result.enabled = enable(model, family, allow_cpu=True, steps=steps) or "nothing (see log)"
        records, notes = _train_ours(task, model, texts, pairs, labels, plan, batch, steps, seed, mark)
        result.losses = [(step, sum(r[1] for r in records[step - LOG_EVERY : step]) / LOG_EVERY)
                         for step in range(LOG_EVERY, steps + 1, LOG_EVERY)]
        result.enabled += notes
    else:
        model = load_stock(task, checkpoint, seq, kind, device, family)
        result.losses = _train_stock(task, model, texts, pairs, labels, plan, batch, steps, seed, mark, cuda, workdir)
    result.end_to_end_s = time.perf_counter() - start
    result.first_step_s = times[1] - start
    result.pairs_per_s = (steps - steady_from) * batch / (times[steps] - times[steady_from])
    result.peak_gib = torch.cuda.max_memory_allocated() / 2**30 - result.leftover_gib if cuda else 0.0
    del model
    gc.collect()
    return result


def _train_ours(task, model, texts, pairs, labels, plan, batch, steps, seed, mark) -> tuple[list, str]:
    """The packed loop's (step, loss, grad norm, lr) records, and what it patched and captured."""
    from engine.loop.scoring import ScoringTrainer

    if task == "reranker":
        encode = lambda queries, documents: model.preprocess(list(zip(queries, documents)))  # noqa: E731
        loss = "BinaryCrossEntropyLoss"
    else:
        encode = lambda first, second: model.tokenizer(first, second, padding=True, truncation=True,  # noqa: E731
                                                        return_tensors="pt")
        loss = "CrossEntropyLoss"
    trainer = ScoringTrainer(model, encode, texts, pairs, labels, loss=loss, batch_size=batch, learning_rate=2e-4,
                             steps=steps, seed=seed)
    trainer.plan = plan
    records = []
    trainer.fit(on_steps=records.extend, after_step=mark)
    notes = [note for note in (trainer.kernel_note, trainer.graph_note) if note]
    if trainer.cuda and not trainer.graph_note:
        notes.append(f"CUDA graphs over {sum(not isinstance(g, str) for g in trainer.graphs.values())} shapes")
    return records, "".join(f"; {note}" for note in notes)


def _train_stock(task, model, texts, pairs, labels, plan, batch, steps, seed, mark, cuda, workdir) -> list:
    import numpy as np
    import torch
    from datasets import Dataset

    clock = _Clock(mark)
    common = dict(output_dir=str(workdir / "trainer"), max_steps=steps, per_device_train_batch_size=batch,
                  learning_rate=2e-4, warmup_steps=0, bf16=cuda, use_cpu=not cuda, logging_steps=LOG_EVERY,
                  save_strategy="no", report_to=[], seed=seed, data_seed=seed, disable_tqdm=True)
    if task == "reranker":
        from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

        data = Dataset.from_dict({"anchor": texts, "document": pairs, "label": labels})
        args = CrossEncoderTrainingArguments(batch_sampler=_PlanSampler(plan), **common)
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model),
                                      callbacks=[clock.callback])
    else:
        from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

        from engine.tasks.classifier import ClassificationLoss

        order = np.concatenate(plan)  # the plan's batches, in order, through a sequential sampler
        encoded = model.tokenizer([texts[i] for i in order], truncation=True)
        data = Dataset.from_dict({**encoded, "labels": [labels[i] for i in order]})

        class PlanTrainer(Trainer):
            def _get_train_sampler(self, *args, **kwargs):
                return torch.utils.data.SequentialSampler(self.train_dataset)

        trainer = PlanTrainer(model=model, args=TrainingArguments(**common), train_dataset=data,
                              data_collator=DataCollatorWithPadding(model.tokenizer), compute_loss_func=ClassificationLoss(),
                              callbacks=[clock.callback])
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.losses


def write_report(results: list[TaskResult], path: Path, device: str, command: str) -> None:
    stocks = {(r.task, r.model, r.seq, r.batch, _variant(r.method)[1]): r for r in results
              if _variant(r.method)[0] == "stock" and not r.error}
    lines = ["# Training speed: rerankers and classifiers (bench/speed_tasks.py)", "",
             f"- card: {card(device)}; versions: {versions()}; {_now()}", f"- command: `{command}`",
             f"- targets (issue 14): pairs/s at least {TARGETS['speed']:g}x stock, peak memory at most "
             f"{TARGETS['memory']:g}x, loss curves within {TARGETS['loss_gap']:.0%}", "",
             "| task | model | seq | batch | steps | method | pairs/s | x stock | peak GiB | x stock | loss gap | "
             "end to end s | enabled |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        head = f"| {r.task} | {r.model} | {r.seq} | {r.batch} | {r.steps} | {r.method} |"
        if r.error:
            lines.append(f"{head} failed: {r.error} |" + " |" * 6)
            continue
        stock = stocks.get((r.task, r.model, r.seq, r.batch, _variant(r.method)[1]))
        speed = f"{r.pairs_per_s / stock.pairs_per_s:.2f}" if stock and r is not stock else ""
        memory = f"{r.peak_gib / stock.peak_gib:.2f}" if stock and r is not stock and stock.peak_gib else ""
        gap = _gap_cell(r, stock) if stock and r is not stock else ""  # says who diverged, where one did
        lines.append(f"{head} {r.pairs_per_s:.0f} | {speed} | {r.peak_gib:.2f} | {memory} | {gap} | "
                     f"{r.end_to_end_s:.1f} | {r.enabled} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--only", nargs="*", help="rows as task:model:seq:batch:method,method (default: the device's plan)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 60 on cuda, 12 on cpu)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed-tasks.md"))
    parser.add_argument("--json", default=None, help="also write every result (loss curves too) as JSON here")
    args = parser.parse_args(argv)

    import torch

    from bench.models import build

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (60 if device == "cuda" else 12)
    command = "python -m bench.speed --tasks " + " ".join(sys.argv[2:] if argv is None else argv)
    results: list[TaskResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for row in args.only or (GPU_PLAN if device == "cuda" else CPU_PLAN):
            task, name, seq, batch, methods = row.split(":")
            seq, batch = int(seq), int(batch)
            checkpoint = tmp / name
            if not checkpoint.exists():
                build(name, checkpoint)
            queries, documents = load_pairs(seq, join=max(1, seq // 256))
            for method in methods.split(","):
                print(f"== {task} {name} seq {seq} batch {batch} {method}", flush=True)
                try:
                    result = run_one(task, name, checkpoint, seq, batch, method, steps, device, queries, documents,
                                     args.seed, tmp / "run")
                except Exception as error:  # one failed row must not lose the others
                    logging.exception("run failed")
                    result = TaskResult(name, seq, batch, method, steps, task=task,
                                        error=f"{type(error).__name__}: {str(error)[:120]}")
                shutil.rmtree(tmp / "run", ignore_errors=True)
                result.measured = _now()
                results.append(result)
                print(json.dumps({k: v for k, v in asdict(result).items() if k != "losses"}), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    write_report(results, Path(args.out), device, command)
    print(Path(args.out).read_text())
