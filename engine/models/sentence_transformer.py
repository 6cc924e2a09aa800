"""FastSentenceTransformer: load any sentence-transformers model, add LoRA, save, merge and push.

What `from_pretrained` returns IS a `sentence_transformers.SentenceTransformer`; the stock trainer,
losses and evaluators work on it unchanged. The extra methods the source document names
(`save_pretrained_merged`, `push_to_hub_merged`, and the exports `save_pretrained_gguf`, `push_to_hub_gguf`,
`save_pretrained_onnx`, `push_to_hub_onnx` of engine.export) are bound onto that instance, and `push_to_hub` is
sentence-transformers' own with the adapter naming its base model by hub id.

Every save writes sentence-transformers' model card from `model.model_card_data`, a
`FineTunedModelCardData`: its usage snippet loads the saved folder (or the repo pushed to), and once
`engine.hub.describe_training` has run it carries the training settings and before / after metrics.
"""

from __future__ import annotations

import copy
import functools
import logging
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData
from sentence_transformers.sentence_transformer.modules import Pooling

from engine import hub
from engine.families import Family, apply_family, family_for, lora_targets_for
from engine.models.loading import adapters_in_fp32, default_device, loader_kwargs, torch_dtype_of
from engine.resolve import resolve_model

logger = logging.getLogger(__name__)


def family_of(model) -> Family | None:
    """The family row of a sentence-transformers model (a bi- or cross-encoder) or of a transformers model (a
    classifier), or None."""
    hf_model = model[0].auto_model if isinstance(model, torch.nn.Sequential) else model
    return family_for(hf_model.config.model_type)


@dataclass
class FineTuningCard:
    """How the model was fine-tuned, added to one of sentence-transformers' model card data classes
    (`FineTunedModelCardData`; the cross-encoder's in engine.models.cross_encoder).

    `training_settings` and `retrieval_metrics` ({"base": {...}, "trained": {...}}) are set by
    `engine.hub.describe_training`; the card shows them in a section after the usage snippet.
    """

    training_settings: dict = field(default_factory=dict)
    retrieval_metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        # Saved to a folder rather than pushed, the usage snippet loads that folder (sentence-transformers
        # would write a placeholder id there).
        named_by_folder = self.model_id is None and self.save_dir is not None
        if named_by_folder:
            self.model_id = str(self.save_dir)
        try:
            values = super().to_dict()
        finally:
            if named_by_folder:
                self.model_id = None
        if self.training_settings or self.retrieval_metrics:
            # The usage snippet is the one place in sentence-transformers' template that takes markdown
            # from the card data, and how well the model does belongs right after how to load it.
            section = hub.fine_tuning_section(self.training_settings, self.retrieval_metrics)
            values["usage_snippet"] = f"{values['usage_snippet']}\n\n{section}\n"
        return values


@dataclass
class FineTunedModelCardData(FineTuningCard, SentenceTransformerModelCardData):
    """sentence-transformers' model card data, plus how the model was fine-tuned (FineTuningCard)."""


def card_data(path: Path, model_name_or_path: str, card_class=None):
    """The card data (a `card_class`, default FineTunedModelCardData) of a model loaded from `path`: the base
    model named by hub id where it has one, and the language and license its own card declares."""
    from huggingface_hub import ModelCard

    # Nothing is looked up on the Hub: the base model is known here, and we work offline.
    card = (card_class or FineTunedModelCardData)(local_files_only=True)
    card.add_tags("lacker-studio")
    if not Path(model_name_or_path).expanduser().exists():
        card.base_model = model_name_or_path
    readme = path / "README.md"
    if readme.exists():
        declared = ModelCard.load(readme, ignore_metadata_errors=True).data  # a card is no reason to refuse a model
        if declared.language:
            card.set_language(declared.language)
        if declared.license:
            card.set_license(declared.license)
    return card


def _build_without_modules_json(path: Path, device: str, pooling_mode: str | None, transformer_kwargs: dict,
                                model_card_data: FineTunedModelCardData):
    transformer = Transformer(str(path), **transformer_kwargs)
    family = family_for(transformer.auto_model.config.model_type)
    mode = pooling_mode or (family.pooling if family else "mean")
    logger.info("%s has no modules.json; using Transformer + %s Pooling + Normalize", path, mode)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=mode)
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device=device,
                               model_card_data=model_card_data)


def finish_loading(model, path: Path, model_name_or_path: str, max_seq_length: int | None, load_in_4bit: bool,
                   reload) -> None:
    """What every loader does to a freshly loaded sentence-transformers model: the sequence length, where it came
    from, the extra methods, a 4-bit base made trainable. `reload(dtype=, device=)` loads the same base again
    (a 4-bit model's merge rebuilds it in 16 bits)."""
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model._lacker_base_path = str(path)
    model._lacker_base_name = str(model_name_or_path)
    model._lacker_reload = reload
    _bind_extra_methods(model)
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model[0].auto_model, use_gradient_checkpointing=False)


class FastSentenceTransformer:
    """Loader and adapter helpers; the models it returns are plain `SentenceTransformer`s."""

    @staticmethod
    def from_pretrained(
        model_name_or_path: str,
        max_seq_length: int | None = None,
        dtype=None,
        load_in_4bit: bool = False,
        full_finetuning: bool = False,
        for_inference: bool = False,
        pooling_mode: str | None = None,
        trust_remote_code: bool = False,
        device: str | None = None,
        **kwargs,
    ) -> SentenceTransformer:
        """Load a model by hub id (from the local cache or the bundled MiniLM) or local path.

        for_inference=True returns a model ready for `encode`, `encode_query`, `encode_document` and
        `similarity`: in eval mode, gradients off, LoRA adapters merged into the weights (one matmul a
        layer instead of three), and on a GPU in bf16/fp16. Without it the model is in train mode and
        keeps the dtype a trainer needs (fp32 master weights for full fine-tuning; a 16-bit or 4-bit
        frozen base under LoRA / QLoRA on a GPU).

        `pooling_mode` overrides the family's pooling for a model without `modules.json`; other
        kwargs go to the transformers model loader (`model_kwargs`).
        """
        device = device or default_device()
        path = resolve_model(model_name_or_path)
        model_kwargs = loader_kwargs(device, dtype, load_in_4bit, full_finetuning, for_inference, kwargs)

        card = card_data(path, str(model_name_or_path))
        if (path / "modules.json").exists():
            model = SentenceTransformer(
                str(path), device=device, trust_remote_code=trust_remote_code, model_kwargs=model_kwargs,
                model_card_data=card,
            )
        else:
            transformer_kwargs = {"model_kwargs": model_kwargs | {"trust_remote_code": trust_remote_code},
                                  "processor_kwargs": {"trust_remote_code": trust_remote_code}}
            model = _build_without_modules_json(path, device, pooling_mode, transformer_kwargs, card)

        apply_family(model, family_of(model))
        finish_loading(model, path, model_name_or_path, max_seq_length, load_in_4bit,
                       reload=functools.partial(FastSentenceTransformer.from_pretrained, str(path)))
        if for_inference:
            FastSentenceTransformer.for_inference(model)
        return model

    @staticmethod
    def get_peft_model(
        model: SentenceTransformer,
        r: int = 16,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: list[str] | str | None = None,
        bias: str = "none",
        use_gradient_checkpointing: bool = False,
        use_rslora: bool = False,
        modules_to_save: list[str] | None = None,
        random_state: int | None = None,
        init_lora_weights: bool | str = True,
        task_type: str = "FEATURE_EXTRACTION",
        **kwargs,
    ) -> SentenceTransformer:
        """Add a LoRA adapter to the model's transformer. target_modules=None uses the family's attention
        and MLP projections (PEFT's "all-linear" for architectures outside the family table); other kwargs go to
        PEFT's LoraConfig."""
        from peft import LoraConfig

        if random_state is not None:
            torch.manual_seed(random_state)
        auto_model = model[0].auto_model
        targets = target_modules if target_modules is not None else lora_targets_for(auto_model.config.model_type)
        config = LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=targets,
            bias=bias,
            use_rslora=use_rslora,
            modules_to_save=modules_to_save,
            init_lora_weights=init_lora_weights,
            task_type=task_type,
            **kwargs,
        )
        model.add_adapter(config)
        adapters_in_fp32(auto_model)
        if use_gradient_checkpointing:
            auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            auto_model.enable_input_require_grads()
        return model

    @staticmethod
    def for_inference(model: SentenceTransformer) -> SentenceTransformer:
        """Switch a trained model to inference in place (see `from_pretrained(for_inference=True)`)."""
        if _has_adapter(model):
            _merge_adapters_in_place(model)
        model.eval()
        model.requires_grad_(False)
        return model


def _has_adapter(model: SentenceTransformer) -> bool:
    return bool(getattr(model[0].auto_model, "_hf_peft_config_loaded", False))


def _merge_adapters_in_place(model: SentenceTransformer) -> None:
    """Fold every LoRA update into its base weight, put each fully trained module (PEFT's modules_to_save, a
    cross-encoder's head) in place of the original, and drop the adapter bookkeeping."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    auto_model = model[0].auto_model
    for name, module in list(auto_model.named_modules()):
        if isinstance(module, (LoraLayer, ModulesToSaveWrapper)):
            if isinstance(module, LoraLayer):
                module.merge(safe_merge=True)
                plain = module.get_base_layer()
            else:
                plain = module.modules_to_save[module.active_adapters[0]]
            parent_name, _, child = name.rpartition(".")
            parent = auto_model.get_submodule(parent_name) if parent_name else auto_model
            setattr(parent, child, plain)
    auto_model._hf_peft_config_loaded = False
    if hasattr(auto_model, "peft_config"):
        del auto_model.peft_config


def _is_quantized(model: SentenceTransformer) -> bool:
    return getattr(model[0].auto_model, "quantization_method", None) is not None or getattr(
        model[0].auto_model, "is_loaded_in_4bit", False
    )


def merged_dtype(model: SentenceTransformer) -> torch.dtype:
    """The dtype a merged copy is saved in unless asked: the one its user will run it in. A model trained on a
    CPU will most likely run on one, where 16-bit matmuls are slower than fp32 and round the embeddings: fp32.
    On a GPU, 16-bit: bf16 where the model was loaded in bf16, else fp16."""
    if model.device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if next(model.parameters()).dtype == torch.bfloat16 else torch.float16


def merged_copy(model: SentenceTransformer, dtype=None) -> SentenceTransformer:
    """A copy of `model` with its adapters merged, in `dtype` (default: `merged_dtype`, fp32 on a CPU and
    16-bit on a GPU), leaving `model` itself untouched and trainable."""
    if _is_quantized(model):
        # 4-bit weights cannot be merged exactly: rebuild the 16-bit base, add the same adapter and
        # copy the trained weights over by name.
        copy_ = model._lacker_reload(dtype=torch.bfloat16, device=str(model.device))
        copy_.add_adapter(copy.deepcopy(model[0].auto_model.peft_config["default"]))
        trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for name, param in copy_.named_parameters():
                if name in trained:
                    param.copy_(trained.pop(name).to(param.dtype))
        if trained:
            raise RuntimeError(f"could not place trained weights {sorted(trained)[:3]} in the 16-bit base")
        copy_.model_card_data = copy.copy(model.model_card_data)  # what the card says about the training
        copy_.model_card_data.register_model(copy_)
    else:
        copy_ = copy.deepcopy(model)
    if _has_adapter(copy_):
        _merge_adapters_in_place(copy_)
    copy_.to(torch_dtype_of(dtype) or merged_dtype(model))
    copy_.eval()
    return copy_


def save_pretrained_merged(self: SentenceTransformer, save_directory, dtype=None, **kwargs) -> str:
    """Write a merged model that loads in plain sentence-transformers and transformers.

    `dtype` as in `merged_copy` (fp32 after training on a CPU, 16-bit on a GPU, unless given: "float32",
    "float16", "bfloat16" or a torch dtype); other kwargs go to `SentenceTransformer.save_pretrained`."""
    merged_copy(self, dtype=dtype).save_pretrained(str(save_directory), **kwargs)
    return str(save_directory)


@functools.wraps(SentenceTransformer.push_to_hub, assigned=())
def push_to_hub_merged(self: SentenceTransformer, repo_id: str, *args, **kwargs) -> str:
    """Merge the adapters into a copy (in `merged_dtype`: fp32 from a CPU, 16-bit from a GPU) and upload that
    with `SentenceTransformer.push_to_hub` (same arguments). The token comes from `token=`, else HF_TOKEN, else
    `hf auth login`."""
    return type(self).push_to_hub(merged_copy(self), repo_id, *args, **kwargs)


@functools.wraps(SentenceTransformer.push_to_hub, assigned=())
def push_to_hub(self: SentenceTransformer, repo_id: str, *args, **kwargs) -> str:
    """`SentenceTransformer.push_to_hub` (same arguments): uploads the LoRA adapter (or, for a model
    without adapters, the model) with its model card. The token comes from `token=`, else HF_TOKEN,
    else `hf auth login`; the Hub is HF_ENDPOINT as huggingface_hub read it when first imported."""
    with _adapters_naming_hub_base(self):
        return type(self).push_to_hub(self, repo_id, *args, **kwargs)


@contextmanager
def _adapters_naming_hub_base(model: SentenceTransformer):
    """An adapter saved locally names its base by local path; on the Hub it must name the hub id."""
    configs = model[0].auto_model.peft_config.values() if _has_adapter(model) else ()
    local_names = [(config, config.base_model_name_or_path) for config in configs]
    for config, _ in local_names:
        config.base_model_name_or_path = model._lacker_base_name
    try:
        yield
    finally:
        for config, name in local_names:
            config.base_model_name_or_path = name


def save_pretrained_gguf(self: SentenceTransformer, save_directory, quantization_method: str = "f16"):
    """Write a GGUF file (llama.cpp, Ollama) into `save_directory` and check it in llama.cpp (parity.json beside it).
    `quantization_method`: "f16" or "q8_0". Returns engine.export.ExportResult."""
    from engine.export import export_model

    return export_model(self, "gguf", quantization_method, save_directory)


def push_to_hub_gguf(self: SentenceTransformer, repo_id: str, quantization_method: str = "f16", token=None,
                     private=None) -> str:
    """`save_pretrained_gguf`, then upload the file and its parity.json to `repo_id`; returns the repo's URL."""
    from engine.export import push_to_hub as push_export

    return push_export(self, repo_id, "gguf", quantization_method, token=token, private=private)


def save_pretrained_onnx(self: SentenceTransformer, save_directory, quantization_method: str = "fp32"):
    """Write the model folder with onnx/model.onnx ("fp32") or onnx/model_qint8.onnx ("int8") and check it in
    onnxruntime (parity.json in the folder). Returns engine.export.ExportResult."""
    from engine.export import export_model

    return export_model(self, "onnx", quantization_method, save_directory)


def push_to_hub_onnx(self: SentenceTransformer, repo_id: str, quantization_method: str = "fp32", token=None,
                     private=None) -> str:
    """`save_pretrained_onnx`, then upload the folder to `repo_id`; returns the repo's URL."""
    from engine.export import push_to_hub as push_export

    return push_export(self, repo_id, "onnx", quantization_method, token=token, private=private)


def _bind_extra_methods(model: SentenceTransformer) -> None:
    model.save_pretrained_merged = types.MethodType(save_pretrained_merged, model)
    model.push_to_hub_merged = types.MethodType(push_to_hub_merged, model)
    model.push_to_hub = types.MethodType(push_to_hub, model)
    for method in (save_pretrained_gguf, push_to_hub_gguf, save_pretrained_onnx, push_to_hub_onnx):
        setattr(model, method.__name__, types.MethodType(method, model))
