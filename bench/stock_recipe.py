"""Stock sentence-transformers + PEFT as the source document's users write it, as one script: load the JSONL with
`datasets`, load the model, add a LoRA adapter, train with SentenceTransformerTrainer and
MultipleNegativesRankingLoss (batches without duplicate texts), save the adapter. bench.time_to_model runs it as a
whole process beside `lacker train`; each phase's end is printed as `PHASE name unix-time`.

    python bench/stock_recipe.py --model DIR --data train.jsonl --seq 256 --batch 64 --output out [--max-steps N]
"""

import argparse
import time


def phase(name: str) -> None:
    print(f"PHASE {name} {time.time():.3f}", flush=True)


parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--seq", type=int, required=True)
parser.add_argument("--batch", type=int, required=True)
parser.add_argument("--max-steps", type=int, default=-1, help="default: one epoch")
parser.add_argument("--learning-rate", type=float, default=2e-4)
parser.add_argument("--warmup-ratio", type=float, default=0.0)
parser.add_argument("--lora-r", type=int, default=16)
parser.add_argument("--lora-alpha", type=int, default=16)
parser.add_argument("--targets", default="query,key,value,dense")
parser.add_argument("--output", required=True)
args = parser.parse_args()

import torch
from datasets import load_dataset
from peft import LoraConfig
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

phase("imports")

train = load_dataset("json", data_files=args.data, split="train").select_columns(["query", "document"])
phase("data")

cuda = torch.cuda.is_available()
model = SentenceTransformer(args.model, device="cuda" if cuda else "cpu")
model.max_seq_length = args.seq
model.add_adapter(LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                             target_modules=args.targets.split(",")))
phase("load")

training_args = SentenceTransformerTrainingArguments(
    output_dir=f"{args.output}/trainer", num_train_epochs=1, max_steps=args.max_steps,
    per_device_train_batch_size=args.batch, learning_rate=args.learning_rate, warmup_ratio=args.warmup_ratio,
    batch_sampler="no_duplicates", bf16=cuda, use_cpu=not cuda, save_strategy="no", report_to=[], seed=42,
    logging_steps=10)
SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train,
                           loss=MultipleNegativesRankingLoss(model)).train()
phase("train")

model.save_pretrained(f"{args.output}/adapter")
phase("save")
