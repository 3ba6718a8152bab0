"""The example encoders: one pass per example produces the tokens every task sentence of that
example shares: [wide&deep, seq_1..seq_S, text_1.., item].

The user side (wide&deep over user and context features, behavior sequences, context text) does not
depend on the candidate item, and the item side (item features, numerics and text) does not depend
on the user. Rows that share a user's history (the candidates of one request) run the sequence stack
once: each stack encodes the distinct histories of the batch and broadcasts them to the rows; text
goes through the text encoder's cache, so each distinct text is encoded once.

The user tokens come first in the token order, so they can also be computed elsewhere (a batch job
that stores them per user) and handed in: `forward(..., user_tokens=...)` then runs the item side
only."""

from __future__ import annotations

import torch
from torch import nn

from grec.batch import Batch
from grec.config import GRecConfig, NumericConfig
from grec.ngrams import HashedNgramBag
from grec.numeric import numeric_input
from grec.text import TextEncoder
from grec.transformer import SequenceEncoder, distinct_rows

# Standardized numerics beyond this many standard deviations are outliers; clamping keeps one bad
# value from dominating the wide part.
NUMERIC_CLAMP = 10.0


class WideDeepToken(nn.Module):
    """Pooled user/context embeddings and user/context numeric features -> one token: deep MLP over
    [embeddings, numerics (raw or their periodic embeddings)] plus a wide linear over the raw
    numerics, layer-normalized."""

    def __init__(self, num_embedded: int, embedding_dim: int, num_numeric: int, d_model: int,
                 numerics: NumericConfig) -> None:
        super().__init__()
        self.numeric_embedding = numeric_input(num_numeric, embedding_dim, numerics)
        deep_in = num_embedded * embedding_dim + self.numeric_embedding.output_width
        self.deep = nn.Sequential(nn.Linear(deep_in, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.wide = nn.Linear(num_numeric, d_model) if num_numeric else None
        self.norm = nn.LayerNorm(d_model)

    def forward(self, embedded: list[torch.Tensor], numeric: torch.Tensor | None) -> torch.Tensor:
        """numeric: already clamped to +-NUMERIC_CLAMP."""
        parts = list(embedded)
        if numeric is not None:
            parts.append(self.numeric_embedding(numeric))
        token = self.deep(torch.cat(parts, dim=-1))
        if self.wide is not None:
            token = token + self.wide(numeric)
        return self.norm(token)


class ItemToken(nn.Module):
    """Candidate item: pooled item-feature embeddings, item numerics (raw or periodic embeddings)
    and item-text vectors -> one token."""

    def __init__(self, embedded_width: int, num_numeric: int, embedding_dim: int, d_model: int,
                 numerics: NumericConfig) -> None:
        super().__init__()
        self.numeric_embedding = numeric_input(num_numeric, embedding_dim, numerics)
        self.project = nn.Linear(embedded_width + self.numeric_embedding.output_width, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, embedded: list[torch.Tensor], numeric: torch.Tensor | None,
                texts: list[torch.Tensor]) -> torch.Tensor:
        parts = list(embedded)
        if numeric is not None:
            parts.append(self.numeric_embedding(numeric))
        return self.norm(self.project(torch.cat(parts + texts, dim=-1)))


class ExampleEncoder(nn.Module):
    """Everything that runs once per example. Takes the sparse arch's outputs (so the sparse part
    can be sharded separately) and returns tokens [B, n_tokens, d_model]."""

    def __init__(self, config: GRecConfig, text_encoder: TextEncoder | None) -> None:
        super().__init__()
        spec = config.input
        self.wide_features = [f.name for f in spec.categorical if f.source != "item"]
        self.item_features = [f.name for f in spec.categorical if f.source == "item"]
        numeric_sources = [f.source for f in spec.numeric]
        self.register_buffer("wide_numeric", torch.tensor([i for i, s in enumerate(numeric_sources) if s != "item"],
                                                          dtype=torch.long), persistent=False)
        self.register_buffer("item_numeric", torch.tensor([i for i, s in enumerate(numeric_sources) if s == "item"],
                                                          dtype=torch.long), persistent=False)
        self.item_texts = [(t.name, t.max_length) for t in spec.text if t.source == "item"]
        self.context_texts = [(t.name, t.max_length) for t in spec.text if t.source != "item"]
        self.sequence_lengths = {s.name: s.length for s in spec.sequences}
        d = self.d_model = config.d_model
        self.wide_deep = None
        num_wide_numeric, num_item_numeric = len(self.wide_numeric), len(self.item_numeric)
        if self.wide_features or num_wide_numeric:
            self.wide_deep = WideDeepToken(len(self.wide_features), config.embedding_dim, num_wide_numeric, d,
                                           config.numerics)
        self.sequence_encoders = nn.ModuleDict({
            s.name: SequenceEncoder(config.embedding_dim, config.sequence_layers, d, config.num_heads,
                                    config.ffn_hidden, config.dropout, config.sequence_readout)
            for s in spec.sequences
        })
        self.text_encoder = text_encoder
        # Each text feature's vector: the encoder's pooled vector, then its n-gram bag when configured.
        buckets, hidden = 0, 0
        if text_encoder is not None:
            buckets = text_encoder.config.ngram_buckets
            hidden = text_encoder.hidden_size + (config.embedding_dim if buckets else 0)
        self.ngram_bags = nn.ModuleDict({t.name: HashedNgramBag(buckets, config.embedding_dim)
                                         for t in spec.text} if buckets else {})
        self.text_projections = nn.ModuleDict({name: nn.Linear(hidden, d) for name, _ in self.context_texts})
        self.item = None
        if self.item_features or self.item_texts or num_item_numeric:
            embedded_width = len(self.item_features) * config.embedding_dim + len(self.item_texts) * hidden
            self.item = ItemToken(embedded_width, num_item_numeric, config.embedding_dim, d, config.numerics)
        self.token_names = (
            (["wide_deep"] if self.wide_deep is not None else [])
            + [f"seq:{s.name}" for s in spec.sequences]
            + [f"text:{name}" for name, _ in self.context_texts]
            + (["item"] if self.item is not None else [])
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_names)

    @property
    def num_user_tokens(self) -> int:
        """The leading tokens that do not depend on the candidate: wide&deep, sequences, context text."""
        return self.num_tokens - (self.item is not None)

    def user_tokens(self, pooled: dict[str, torch.Tensor], per_position: dict[str, torch.Tensor],
                    batch: Batch) -> torch.Tensor:
        """[B, num_user_tokens, d_model]: wide&deep over user and context features, one token per
        behavior sequence, one per context text."""
        size = batch.size
        tokens = []
        if self.wide_deep is not None:
            wide_numeric = None
            if len(self.wide_numeric):
                wide_numeric = batch.numeric.index_select(1, self.wide_numeric).clamp(-NUMERIC_CLAMP, NUMERIC_CLAMP)
            tokens.append(self.wide_deep([pooled[name] for name in self.wide_features], wide_numeric))
        for name, encoder in self.sequence_encoders.items():
            length = self.sequence_lengths[name]
            ids = batch.sequences[name].values().view(size, length)
            first, inverse = distinct_rows(ids)
            embeddings = per_position[name].view(size, length, -1).index_select(0, first)
            distinct = ids.index_select(0, first)
            tokens.append(encoder(embeddings, distinct != 0, distinct).index_select(0, inverse))
        # Every text feature goes through the encoder's cache: item titles and per-row text (reviews,
        # queries) alike are encoded once per distinct text while the encoder cannot change.
        for name, max_length in self.context_texts:
            tokens.append(self.text_projections[name](self._text_vector(batch, name, max_length)))
        if not tokens:  # a spec with item features only
            return self.item.project.weight.new_zeros(size, 0, self.d_model)
        return torch.stack(tokens, dim=1)

    def item_token(self, pooled: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor | None:
        """[B, d_model] from the candidate's features, numerics and text (None without item features)."""
        if self.item is None:
            return None
        numeric = None
        if len(self.item_numeric):
            numeric = batch.numeric.index_select(1, self.item_numeric).clamp(-NUMERIC_CLAMP, NUMERIC_CLAMP)
        texts = [self._text_vector(batch, name, max_length) for name, max_length in self.item_texts]
        return self.item([pooled[name] for name in self.item_features], numeric, texts)

    def _text_vector(self, batch: Batch, name: str, max_length: int) -> torch.Tensor:
        """[B, hidden (+ embedding_dim)]: the text encoder's pooled vector (through its cache), joined
        with the feature's n-gram bag when there is one."""
        text = batch.text[name]
        vector = self.text_encoder(text, cache_max_length=max_length)
        if name not in self.ngram_bags:
            return vector
        return torch.cat([vector, self.ngram_bags[name](text.input_ids, text.attention_mask).to(vector.dtype)], dim=-1)

    def forward(self, pooled: dict[str, torch.Tensor], per_position: dict[str, torch.Tensor],
                batch: Batch, user_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens [B, n_tokens, d_model]. `user_tokens` [B, num_user_tokens, d_model], when given,
        replace the user side (then `per_position` is not read)."""
        if user_tokens is None:
            user_tokens = self.user_tokens(pooled, per_position, batch)
        elif user_tokens.shape[1:] != (self.num_user_tokens, self.d_model) or user_tokens.shape[0] != batch.size:
            raise ValueError(f"user_tokens has shape {tuple(user_tokens.shape)}; this model takes "
                             f"[{batch.size}, {self.num_user_tokens}, {self.d_model}] (rows, user tokens, d_model)")
        item = self.item_token(pooled, batch)
        if item is None:
            return user_tokens
        return torch.cat([user_tokens.to(item.dtype), item.unsqueeze(1)], dim=1)
