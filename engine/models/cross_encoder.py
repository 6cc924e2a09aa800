"""FastCrossEncoder: load a cross-encoder (a reranker scoring (query, document) pairs), add LoRA, save, merge, push.

What `from_pretrained` returns IS a `sentence_transformers.CrossEncoder`, so `CrossEncoderTrainer`, its losses and
evaluators work on it unchanged. A checkpoint with a trained sequence-classification head (a real reranker such as
BAAI/bge-reranker-v2-m3 or cross-encoder/ms-marco-MiniLM-L6-v2) keeps it; a bi-encoder (all-MiniLM-L6-v2) or a plain
encoder gets a new, randomly initialised head of `num_labels` outputs (`model._lacker_new_head` says which).

Loading, merging, saving and pushing are FastSentenceTransformer's (engine.models.sentence_transformer): a
CrossEncoder is a sentence-transformers model whose first module is the same `Transformer`, loaded as
AutoModelForSequenceClassification. What differs is the head: LoRA goes on the family's targets and the head
(everything of the transformers model outside its base model) is trained in full, PEFT's `modules_to_save`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.model_card import CrossEncoderModelCardData

from engine.families import apply_family, family_for
from engine.models.loading import (adapters_in_fp32, default_device, head_modules, load_adapter_weights,
                                   loader_kwargs, sequence_head)
from engine.models.sentence_transformer import FastSentenceTransformer, FineTuningCard, card_data, finish_loading
from engine.resolve import resolve_model, shipped_model_path


@dataclass
class FineTunedCrossEncoderCardData(FineTuningCard, CrossEncoderModelCardData):
    """sentence-transformers' cross-encoder card data, plus how the model was fine-tuned (FineTuningCard)."""


def has_trained_head(path: Path) -> bool:
    """Whether the checkpoint at `path` was saved with a sequence-classification head (a reranker or classifier)."""
    config = json.loads((Path(path) / "config.json").read_text())
    return any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or ())


class FastCrossEncoder:
    """Loader and adapter helpers; the models it returns are plain `CrossEncoder`s.

    Example::

        from engine import FastCrossEncoder

        model = FastCrossEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # a new head
        FastCrossEncoder.get_peft_model(model, r=16)
        ...  # train with sentence_transformers.cross_encoder.CrossEncoderTrainer
        model.save_pretrained_merged("out/merged")  # loads in plain CrossEncoder("out/merged")
    """

    @staticmethod
    def from_pretrained(
        model_name_or_path: str,
        num_labels: int = 1,
        max_seq_length: int | None = None,
        dtype=None,
        load_in_4bit: bool = False,
        full_finetuning: bool = False,
        for_inference: bool = False,
        trust_remote_code: bool = False,
        device: str | None = None,
        **kwargs,
    ) -> CrossEncoder:
        """Load a cross-encoder by hub id (from the local cache, or the bundled MiniLM) or local path.

        Args:
            model_name_or_path: a reranker, a bi-encoder or a plain encoder (hub id or folder), or the folder of
                an adapter `save_pretrained` wrote (its base loads, then the adapter and the head it trained).
            num_labels: outputs of the head: 1 for a reranker's relevance score. A checkpoint's own head must
                have as many.
            max_seq_length: tokens per (query, document) pair; longer pairs are cut.
            dtype, load_in_4bit, full_finetuning, for_inference, trust_remote_code, device: as for
                `FastSentenceTransformer.from_pretrained`; other kwargs go to the transformers loader.

        Example::

            model = FastCrossEncoder.from_pretrained("cross-encoder/ms-marco-MiniLM-L6-v2", for_inference=True)
            model.predict([("how do I compress files?", "zstd is a fast lossless compressor")])
        """
        device = device or default_device()
        folder = shipped_model_path(model_name_or_path) or Path(model_name_or_path).expanduser()
        if (folder / "adapter_config.json").exists():  # our own save_pretrained, or the shipped starter reranker
            return _from_adapter(folder, num_labels=num_labels,
                                 max_seq_length=max_seq_length, dtype=dtype, load_in_4bit=load_in_4bit,
                                 for_inference=for_inference, trust_remote_code=trust_remote_code, device=device,
                                 **kwargs)
        path = resolve_model(model_name_or_path)
        keep = None
        if load_in_4bit:  # the head is trained in full: not quantized
            from transformers import AutoConfig

            keep = sequence_head(AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code), num_labels)
        model_kwargs = loader_kwargs(device, dtype, load_in_4bit, full_finetuning, for_inference, kwargs,
                                     keep_unquantized=keep)
        trained_head = has_trained_head(path)
        if trained_head:
            config = json.loads((path / "config.json").read_text())
            outputs = len(config.get("id2label") or {}) or config.get("num_labels", 2)
            if outputs != num_labels:
                raise ValueError(f"{model_name_or_path} has a trained head with {outputs} outputs, not {num_labels}; "
                                 f"pass num_labels={outputs}, or start from a model without a head")
        model = CrossEncoder(
            str(path), num_labels=None if trained_head else num_labels, device=device,
            trust_remote_code=trust_remote_code, model_kwargs=model_kwargs,
            processor_kwargs={"trust_remote_code": trust_remote_code},
            model_card_data=card_data(path, str(model_name_or_path), FineTunedCrossEncoderCardData),
        )
        # Only the padding side: a family's prompts are a bi-encoder's query / document instructions.
        apply_family(model, family_for(model[0].auto_model.config.model_type), prompts=False)
        model._lacker_new_head = not trained_head
        finish_loading(model, path, model_name_or_path, max_seq_length, load_in_4bit,
                       reload=functools.partial(FastCrossEncoder.from_pretrained, str(path), num_labels=num_labels))
        if for_inference:
            FastSentenceTransformer.for_inference(model)
        return model

    @staticmethod
    def get_peft_model(model: CrossEncoder, r: int = 16, lora_alpha: int = 16, lora_dropout: float = 0.0,
                       target_modules: list[str] | str | None = None, modules_to_save: list[str] | None = None,
                       **kwargs) -> CrossEncoder:
        """LoRA on the family's attention and MLP projections (or `target_modules`), the head trained in full.

        `modules_to_save` defaults to the head (`head_modules`), which LoRA then leaves alone even where its
        layer names match a target (XLM-R's and MPNet's `classifier.dense`). Other arguments as for
        `FastSentenceTransformer.get_peft_model` (bias, use_gradient_checkpointing, use_rslora, random_state, ...).
        """
        head = head_modules(model[0].auto_model) if modules_to_save is None else list(modules_to_save)
        kwargs.setdefault("exclude_modules", head or None)
        return FastSentenceTransformer.get_peft_model(
            model, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
            modules_to_save=head, task_type="SEQ_CLS", **kwargs)

    for_inference = staticmethod(FastSentenceTransformer.for_inference)


def _from_adapter(folder: Path, for_inference: bool, **kwargs) -> CrossEncoder:
    """A cross-encoder saved by `save_pretrained` with an adapter: its base (with its own head, or a new one), then
    the adapter's LoRA and the head it trained in full, which sentence-transformers' CrossEncoder(folder) cannot load."""
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(folder))
    model = FastCrossEncoder.from_pretrained(config.base_model_name_or_path, **kwargs)
    model.add_adapter(config)
    adapters_in_fp32(model[0].auto_model)
    load_adapter_weights(model[0].auto_model, folder)
    model._lacker_new_head = model._lacker_new_head and not config.modules_to_save  # the adapter trained the head
    if for_inference:
        FastSentenceTransformer.for_inference(model)
    return model
