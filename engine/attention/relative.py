"""MPNet's attention over packed token streams: relative position bias through FlexAttention.

MPNet adds a learned bias per head to every attention score, looked up from a bucket of the
distance between key and query positions, so it cannot use the varlen kernel (no bias input).
Here the bias becomes a FlexAttention score modifier and the sequence boundaries a block mask:

    score(q, k) = q.k / sqrt(head_dim) + table[head, clamp(pos[k] - pos[q], -REACH, REACH) + REACH]
    masked unless doc[q] == doc[k]

`pos` is a token's position inside its own sequence and `doc` which sequence it belongs to. MPNet's
buckets are logarithmic and saturate before `REACH` (= its max_distance, 128), so one table of
2 * REACH + 1 distances, rebuilt from `relative_attention_bias` every forward (it may be trained),
covers every distance exactly.

On CUDA the attention runs through `torch.compile(flex_attention)` with a block mask built from
`cu_seqlens` with tensor ops only (no host sync: a step can be captured in a CUDA graph); each
query block visits only the key blocks of the sequences it holds. Elsewhere (FlexAttention has no
CPU backward) `relative_attention_reference` runs one sequence at a time; it defines the meaning.
Neither path has attention dropout (nor has varlen attention).

    from engine.attention.relative import patch_relative_bias
    patch_relative_bias(hf_model, family.relative_bias)  # packed calls (batch 1 with cu_seq_lens_q) go packed

The classes it patches are the family row's `relative_bias` site (engine.families); patches go on through
engine.kernels.patching, so saved models and the classes are untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.kernels.patching import class_path, install

# Measured on an H100 (BENCHMARKS.md, mpnet-base seq 256 batch 64): the first compile costs ~14 s, a
# packed step saves ~44 ms over the padded loop's: break-even near 320 steps.
PAYS_OFF_FROM_STEPS = 300
REACH = 128  # the bias's max_distance: every longer distance falls in the last bucket
BLOCK = 128  # FlexAttention's block size, query and key


@dataclass
class PackedRelativeBias:
    """What MPNet's self-attention layers receive as `position_bias` for a packed stream of T tokens."""

    table: torch.Tensor  # (heads, 2 * REACH + 1), fp32: bias per clamped distance + REACH
    cu_seqlens: torch.Tensor  # (sequences + 1,) int32
    doc: torch.Tensor  # (T,) long: the sequence each token belongs to
    pos: torch.Tensor  # (T,) long: its position inside that sequence
    block_mask: object | None  # FlexAttention BlockMask; None: the per-sequence reference runs


def bias_table(encoder) -> torch.Tensor:
    """(heads, 2 * REACH + 1) bias for distances -REACH..REACH (key position minus query position)."""
    weight = encoder.relative_attention_bias.weight
    distances = torch.arange(-REACH, REACH + 1, device=weight.device)
    buckets = encoder.relative_position_bucket(distances)  # the defaults the model's own forward uses
    return encoder.relative_attention_bias(buckets).t().float()


def packed_bias(encoder, cu_seqlens: torch.Tensor, total: int, flex: bool | None = None) -> PackedRelativeBias:
    """`flex` (default: on CUDA) builds the block mask that sends attention through FlexAttention."""
    cu = cu_seqlens.long()
    doc = torch.searchsorted(cu[1:], torch.arange(total, device=cu.device), right=True)
    pos = torch.arange(total, device=cu.device) - cu[doc]
    mask = document_block_mask(cu, doc, total) if (cu.is_cuda if flex is None else flex) else None
    return PackedRelativeBias(bias_table(encoder), cu_seqlens, doc, pos, mask)


def document_block_mask(cu: torch.Tensor, doc: torch.Tensor, total: int):
    """Query block i attends to key blocks from the one holding the start of its first token's
    sequence to the one holding the end of its last token's: contiguous, found with tensor ops."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = math.ceil(total / BLOCK)
    first = torch.arange(blocks, device=cu.device) * BLOCK
    last = (first + BLOCK - 1).clamp(max=total - 1)
    low = cu[doc[first]] // BLOCK
    high = (cu[doc[last] + 1] - 1) // BLOCK
    count = (high - low + 1).to(torch.int32)
    indices = (low[:, None] + torch.arange(blocks, device=cu.device)[None, :]).clamp(max=blocks - 1).to(torch.int32)

    def same_sequence(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    return BlockMask.from_kv_blocks(count[None, None], indices[None, None], BLOCK_SIZE=BLOCK,
                                    mask_mod=same_sequence, seq_lengths=(total, total))


def relative_attention_reference(q, k, v, bias: PackedRelativeBias, scale: float) -> torch.Tensor:
    """Plain PyTorch, one sequence at a time: q, k, v (1, heads, T, head_dim) -> same shape. Cut with
    one `split` (not a slice per sequence, whose backward fills a whole-stream gradient each time)."""
    lengths = torch.diff(bias.cu_seqlens).tolist()
    out = []
    for q_i, k_i, v_i in zip(q.split(lengths, dim=2), k.split(lengths, dim=2), v.split(lengths, dim=2)):
        positions = torch.arange(q_i.shape[2], device=q.device)
        distance = (positions[None, :] - positions[:, None]).clamp(-REACH, REACH) + REACH
        mask = bias.table[:, distance].to(q.dtype)[None]  # (1, heads, len, len)
        out.append(torch.nn.functional.scaled_dot_product_attention(q_i, k_i, v_i, attn_mask=mask, scale=scale))
    return torch.cat(out, dim=2)


_compiled_flex = None


def _flex(device: torch.device):
    """FlexAttention is only fast compiled (eager, it builds the whole score matrix: CPU tests only)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)  # one compile for every stream length
    return _compiled_flex


def relative_attention(q, k, v, bias: PackedRelativeBias, scale: float) -> torch.Tensor:
    """(1, heads, T, head_dim) each -> (1, heads, T, head_dim), in q's dtype."""
    if bias.block_mask is None:
        return relative_attention_reference(q, k, v, bias, scale)
    table, doc_pos = bias.table, bias.pos

    def add_relative_bias(score, b, h, q_idx, kv_idx):
        distance = (doc_pos[kv_idx] - doc_pos[q_idx]).clamp(-REACH, REACH) + REACH
        return score + table[h, distance]

    return _flex(q.device)(q, k, v, score_mod=add_relative_bias, block_mask=bias.block_mask, scale=scale)


def _packed_self_attention(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                           **kwargs):
    if not isinstance(position_bias, PackedRelativeBias):
        return type(self).forward(self, hidden_states, attention_mask, position_bias, output_attentions, **kwargs)
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
    context = relative_attention(q, k, v, position_bias, 1.0 / math.sqrt(self.attention_head_size))
    return (self.o(context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)),)


def _packed_model_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                          *args, cu_seq_lens_q=None, **kwargs):
    batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    if cu_seq_lens_q is None or batch != 1 or args:
        return type(self).forward(self, input_ids, attention_mask, position_ids, inputs_embeds, *args, **kwargs)
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    hidden = self.embeddings(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
    bias = packed_bias(self.encoder, cu_seq_lens_q, hidden.shape[1])
    for layer in self.encoder.layer:
        hidden = layer(hidden, None, bias)[0]
    return BaseModelOutputWithPooling(last_hidden_state=hidden)  # no pooler: a packed stream has no first token


def patch_relative_bias(hf_model, site) -> int:
    """Teach every `site.model` inside `hf_model` (PEFT wrappers included) packed inputs; returns how many
    `site.self_attention` layers are covered. Padded calls run the model's own code, unchanged."""
    forwards = {site.model: _packed_model_forward, site.self_attention: _packed_self_attention}
    layers = 0
    for module in hf_model.modules():
        path = class_path(module)
        if path in forwards and install(module, forwards[path]):
            layers += path == site.self_attention
    return layers


def _compute_position_bias_on_device(self, x, position_ids=None, num_buckets=32):
    if position_ids is not None or num_buckets != 32:
        return type(self).compute_position_bias(self, x, position_ids, num_buckets)
    positions = torch.arange(x.size(1), device=x.device)
    distance = (positions[None, :] - positions[:, None]).clamp(-REACH, REACH) + REACH
    values = bias_table(self)[:, distance].to(self.relative_attention_bias.weight.dtype)
    return values.unsqueeze(0).expand(x.size(0), -1, -1, -1).contiguous()


def position_bias_on_device(hf_model, site) -> int:
    """The padded path's bias for CUDA graphs: the encoder (`site.encoder`) builds its relative-position
    buckets on the host and copies them over every forward, which no CUDA graph can hold; look the bias
    up on the device instead, from the packed path's table of every distance (`bias_table`, rebuilt each
    forward: the bias may be trained). Calls with other buckets than the default 32 keep the model's own
    code. Returns how many encoders are covered."""
    return sum(install(module, _compute_position_bias_on_device, "compute_position_bias")
               for module in hf_model.modules() if class_path(module) == site.encoder)
