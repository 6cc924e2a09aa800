"""What every loader of engine.models asks transformers for: the device, the dtype and 4-bit quantization.

One place for the rule each model class follows: 16-bit weights on a GPU for LoRA, QLoRA's compute and
inference, fp32 master weights for full fine-tuning and on a CPU, NF4 through bitsandbytes for 4 bits; and
whatever the base, LoRA's own weights in fp32 (`adapters_in_fp32`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine import bitsandbytes_cpu_warnings


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype_of(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(names)}")
    return names[dtype]


def gpu_half_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def quantization_config(device: str, keep_unquantized: list[str] | None = None):
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401  (the config alone does not tell us it is missing)
    except ImportError as error:
        raise ValueError(f"load_in_4bit=True needs bitsandbytes ({error}); run `pip install bitsandbytes`") from error
    bitsandbytes_cpu_warnings.release()  # they concern 4-bit models: now they apply
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=gpu_half_dtype() if device == "cuda" else torch.bfloat16,
        llm_int8_skip_modules=keep_unquantized or None,
    )


def loader_kwargs(device: str, dtype, load_in_4bit: bool, full_finetuning: bool, for_inference: bool,
                  kwargs: dict, keep_unquantized: list[str] | None = None) -> dict:
    """The transformers loader's keyword arguments for the dtype and quantization `from_pretrained` was asked
    for: 16-bit on a GPU unless full fine-tuning keeps fp32 master weights, NF4 for 4 bits. Never transformers'
    "auto": a checkpoint saved in 16 bits would then be fully fine-tuned in 16 bits, where AdamW's epsilon is 0
    in fp16 and the first update is NaN."""
    torch_dtype = torch_dtype_of(dtype)
    if torch_dtype is None:
        half = device == "cuda" and (for_inference or not full_finetuning)
        torch_dtype = gpu_half_dtype() if half else torch.float32
    model_kwargs = {**kwargs, "dtype": torch_dtype}
    if load_in_4bit:
        if full_finetuning:
            raise ValueError("load_in_4bit=True and full_finetuning=True do not go together: 4-bit weights cannot be trained; pick one")
        model_kwargs["quantization_config"] = quantization_config(device, keep_unquantized)
        if device == "cuda":  # the current GPU: each rank's own on several (engine.distributed.setup)
            model_kwargs.setdefault("device_map", {"": torch.cuda.current_device()})
    return model_kwargs


def head_modules(hf_model) -> list[str]:
    """The names of a sequence-classification model's head: its top-level modules with weights outside the base
    model (BERT's `classifier`; DistilBERT's `pre_classifier` and `classifier`; ModernBERT's `head` and
    `classifier`; Qwen3's `score`). Found from the model, so no family needs a row for it."""
    return [name for name, module in hf_model.named_children()
            if name != hf_model.base_model_prefix and any(True for _ in module.parameters())]


def sequence_head(config, num_labels: int) -> list[str]:
    """`head_modules` of the sequence-classification model `config` describes, read off an empty meta-device copy,
    so it is known before the weights load: a 4-bit load keeps it unquantized (`keep_unquantized`), since the head
    is trained in full and PEFT cannot copy a 4-bit layer for that."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    config.num_labels = num_labels
    with torch.device("meta"):
        return head_modules(AutoModelForSequenceClassification.from_config(config))


def load_adapter_weights(model, folder) -> None:
    """Copy a saved adapter's weights into the model's own adapter ("default"): the LoRA matrices and the
    trained-in-full modules (which transformers' load_adapter, and so the Trainer's resume, leave out). A saved weight
    the model has no place for raises KeyError."""
    from safetensors.torch import load_file

    whole = model.peft_config["default"].modules_to_save or []
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in load_file(str(Path(folder) / "adapter_model.safetensors")).items():
            name = key.removeprefix("base_model.model.")
            owner = next((m for m in whole if name.startswith(m + ".")), None)
            module, _, param = name.rpartition(".")
            target = f"{owner}.modules_to_save.default{name[len(owner):]}" if owner else f"{module}.default.{param}"
            parameters[target].copy_(tensor)


def adapters_in_fp32(model: torch.nn.Module, adapter_name: str = "default") -> None:
    """LoRA's A and B in fp32 over a 16-bit base, as PEFT's own `get_peft_model` keeps them: transformers'
    `add_adapter` gives them the base layer's dtype, and AdamW on bf16 weights rounds away every update
    smaller than about 1/256 of the weight (a learning rate of 1e-5 would train nothing). The fused LoRA
    (engine.kernels.lora) reads them in the compute dtype; the heads trained in full (modules_to_save) keep
    the base's dtype, as in PEFT. Nothing changes over an fp32 base."""
    from peft.tuners.tuners_utils import cast_adapter_dtype

    cast_adapter_dtype(model, adapter_name=adapter_name)
