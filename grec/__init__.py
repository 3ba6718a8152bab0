"""grec: one generalist multi-task recommender (GRec with C-Poly skills) and its baselines."""

from grec.batch import Batch, Collator, TokenizedText
from grec.baselines import MMoE, PLE, SharedBottom
from grec.budget import count_parameters, match_parameter_budget
from grec.config import (
    BaselineConfig,
    GRecConfig,
    LossConfig,
    ModelSettings,
    RouterConfig,
    SkillConfig,
    TextEncoderConfig,
)
from grec.export import TaskSubModel
from grec.grec_model import GRec, parameters_added_by_task
from grec.model import MultiTaskModel
from grec.output import ModelOutput
from grec.persistence import build_model, load_model, save_model
from grec.router import RouterStats
from grec.sparse import TableInfo
from grec.spec import CategoricalFeature, InputSpec, NumericFeature, SequenceFeature, TaskSpec, TextFeature

__all__ = [
    "BaselineConfig", "Batch", "CategoricalFeature", "Collator", "GRec", "GRecConfig", "InputSpec", "LossConfig",
    "MMoE", "ModelOutput", "ModelSettings", "MultiTaskModel", "NumericFeature", "PLE", "RouterConfig", "RouterStats",
    "SequenceFeature", "SharedBottom", "SkillConfig", "TableInfo", "TaskSpec", "TaskSubModel", "TextEncoderConfig",
    "TextFeature", "TokenizedText", "build_model", "count_parameters", "load_model", "match_parameter_budget",
    "parameters_added_by_task", "save_model",
]
