"""Shared-prefix task sentences.

A task sentence is [task token, example tokens...]. The example tokens do not depend on the task, so
they are encoded once per example and every task token reads them: per layer, each query token (a
task token, or the shared-expert query) attends over itself and the example tokens with its own
query, over keys and values computed once per example.

With one sentence layer this is exactly the full-sentence formulation (every token attending to
every token, the output read at the task position): the example positions' outputs were never read.
With several layers it is defined as: the example tokens attend among themselves only (never to a
task token), and each query token attends to itself and to the example tokens of the same layer.
The cost of an extra task is then one query's attention and feed-forward, not a whole sentence.

The weights are those of a `TransformerStack` of parallel blocks, so the full-sentence formulation
(`TransformerStack.forward` over the concatenated sentence) can be checked against this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grec.transformer import ParallelTransformerBlock, TransformerStack, apply_rotary, rotary_tables


class TaskSentenceEncoder(nn.Module):
    """examples [B, n, d] and query tokens [Q, d] -> query representations [Q, B, d] (query-major)."""

    def __init__(self, num_layers: int, d_model: int, num_heads: int, ffn_hidden: int, dropout: float,
                 num_example_tokens: int) -> None:
        super().__init__()
        self.stack = TransformerStack(num_layers, d_model, num_heads, ffn_hidden, dropout)
        # Position embeddings of the sentence slots: 0 the query (task) position, 1.. the example tokens.
        self.slot_embedding = nn.Parameter(torch.randn(1 + num_example_tokens, d_model) * 0.02)

    def forward(self, examples: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        x = examples + self.slot_embedding[1:]
        # The query stream depends on the task only until it has read the examples: [Q, 1, d] first.
        z = (queries + self.slot_embedding[0]).unsqueeze(1)
        blocks = self.stack.blocks
        for layer, block in enumerate(blocks):
            z = self._query_step(block, z, x)
            if layer + 1 < len(blocks):  # the last layer's example outputs are never read
                x = block(x)
        return self.stack.norm(z).expand(-1, examples.shape[0], -1)

    @staticmethod
    def _query_step(block: ParallelTransformerBlock, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One parallel block at the query position: z [Q, Bz, d] (Bz 1 or B) over examples x [B, n, d]."""
        num_queries, per_query, d = z.shape
        size, length, _ = x.shape
        heads, head_dim = block.num_heads, block.head_dim
        hz, hx = block.norm(z), block.norm(x)
        q = block.query(hz).view(num_queries, per_query, heads, head_dim)  # position 0: no rotation
        kz, vz = block.key_value(hz).split(head_dim, dim=-1)  # [Q, Bz, Dh]
        kx, vx = block.key_value(hx).split(head_dim, dim=-1)  # [B, n, Dh]
        cos, sin = rotary_tables(length + 1, head_dim, x.device, x.dtype)
        kx = apply_rotary(kx, cos[1:], sin[1:])
        scale = head_dim ** -0.5
        own = (q * kz.unsqueeze(2)).sum(-1) * scale  # [Q, Bz, H]
        if per_query == 1:
            others = torch.einsum("qhd,bnd->nqbh", q[:, 0], kx) * scale
        else:
            others = torch.einsum("qbhd,bnd->nqbh", q, kx) * scale
        # Keys first: a softmax over a leading dim of 1 + n is one vectorized pass; over a trailing dim
        # that small it costs ten times more.
        probs = torch.softmax(torch.cat([own.expand(-1, size, -1).unsqueeze(0), others]), dim=0)  # [1+n, Q, B, H]
        # attn_out(concat_h sum_j p_hj v_j) = sum_{h,j} p_hj (W_o^h v_j): projecting each example's value
        # once per head costs per example what the output projection would cost per (example, task).
        w_out = block.attn_out.weight.view(d, heads, head_dim)
        projected_x = torch.einsum("bnk,ehk->bnhe", vx, w_out)  # [B, n, H, d]
        attended = torch.einsum("nqbh,bnhe->qbe", probs[1:], projected_x)
        if per_query == 1:
            projected_z = torch.einsum("qk,ehk->qhe", vz[:, 0], w_out)  # [Q, H, d]
            attended = torch.baddbmm(attended, probs[0], projected_z)
        else:
            attended = attended + block.attn_out((probs[0].unsqueeze(-1) * vz.unsqueeze(2)).flatten(2))
        gate, up = block.ffn_in(hz).chunk(2, dim=-1)
        fed = block.ffn_out(F.silu(gate) * up)
        return z + block.dropout(attended.add_(fed))
