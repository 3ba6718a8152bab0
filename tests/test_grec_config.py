"""The dataset spec and the model config: parsing, validation errors, JSON round-trip."""

from __future__ import annotations

import json
import pytest

from grec import GRecConfig, InputSpec, LossConfig, RouterConfig, SkillConfig, TaskSpec

CONTRACT_SPEC = {
    "name": "movielens-100k",
    "user_id": "user_id",
    "item_id": "item_id",
    "timestamp": "event_timestamp",
    "categorical": [
        {"name": "user_id", "vocab_size": 1000, "multi_hot": False, "source": "user"},
        {"name": "item_id", "vocab_size": 1700, "multi_hot": False, "source": "item"},
        {"name": "genres", "vocab_size": 24, "multi_hot": True, "source": "item"},
    ],
    "numeric": [{"name": "age", "source": "user"}],
    "sequences": [{"name": "hist_item_id", "length": 50, "vocab_feature": "item_id"}],
    "text": [{"name": "title", "source": "item", "max_length": 32}],
    "tasks": [
        {"name": "like", "kind": "binary", "label": "label_like", "role": "main",
         "num_classes": None, "descriptors": {"type": "engagement", "scenario": "movies"}},
        {"name": "rating", "kind": "regression", "label": "label_rating", "role": "auxiliary",
         "num_classes": None, "descriptors": {"type": "rating", "scenario": "movies"}},
    ],
}


def test_contract_spec_reads_and_round_trips(tmp_path):
    path = tmp_path / "dataset_spec.json"
    path.write_text(json.dumps(CONTRACT_SPEC))
    spec = InputSpec.from_json(path)
    assert spec.task_names == ["like", "rating"]
    assert spec.categorical[2].multi_hot and spec.sequences[0].vocab_feature == "item_id"
    assert spec.task("like").descriptors == {"type": "engagement", "scenario": "movies"}
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["categorical"][0].update(vocab=3), "(?s)categorical.0.vocab.*Extra inputs"),
    (lambda d: d["categorical"][2].update(vocab_size=1), "(?s)categorical.2.vocab_size.*greater than or equal to 2"),
    (lambda d: d["sequences"][0].update(vocab_feature="movie"), "vocab_feature 'movie'"),
    (lambda d: d["tasks"][0].update(kind="ranking"),
     "(?s)tasks.0.kind.*Input should be 'binary', 'regression' or 'multiclass'"),
    (lambda d: d["tasks"][0].update(name="like.v2"), "(?s)tasks.0.name.*should match pattern"),
    (lambda d: d["tasks"][1].update(kind="multiclass"), "task 'rating': multiclass needs num_classes >= 2"),
    (lambda d: d["tasks"][1].update(implicit=True), "task 'rating': implicit feedback is a binary task"),
    (lambda d: d["tasks"][0].update(num_classes=2), "task 'like': num_classes is only for multiclass"),
    (lambda d: d["tasks"].append(dict(d["tasks"][0])), r"task names used twice"),
    (lambda d: d["numeric"][0].update(source="session"), "(?s)numeric.0.source.*Input should be 'user', 'item'"),
])
def test_spec_errors_name_the_problem(mutate, message):
    data = json.loads(json.dumps(CONTRACT_SPEC))
    mutate(data)
    with pytest.raises(ValueError, match=message):
        InputSpec.from_dict(data)


def test_spec_entries_build_from_positional_fields_and_ignore_metadata():
    task = TaskSpec("like", "binary", "label_like", descriptors={"scenario": 3})
    assert task == TaskSpec(name="like", kind="binary", label="label_like", descriptors={"scenario": "3"})
    with pytest.raises(TypeError, match="given by position and by name"):
        TaskSpec("like", "binary", name="like")
    spec = InputSpec.from_dict({**CONTRACT_SPEC, "written_by": "feature store"})
    assert spec == InputSpec.from_dict(CONTRACT_SPEC)


def test_config_json_round_trip(grec_config):
    config = grec_config(with_text=True, skills=SkillConfig(kind="cgc_lora"),
                         losses=LossConfig(weighting="uncertainty", sampled_softmax={"next_item": 4}))
    again = GRecConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.text.backbone == "tiny_bert"


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=18, num_heads=4), "num_heads"),
    (dict(architecture="dcn"), "(?s)architecture.*Input should be 'grec'"),
    (dict(num_heads="four"), "(?s)num_heads.*valid integer"),
    (dict(router=dict(mode="task", num_experts=2, top_k=1, experts=3)), "(?s)router.experts.*Extra inputs"),
    (dict(losses=LossConfig(task_weights={"click": 1.0})), "unknown tasks \\['click'\\]"),
    (dict(losses=LossConfig(sampled_softmax={"like": 3})), "expected multiclass"),
    (dict(losses=LossConfig(sampled_softmax={"next_item": 25})), "expected 1..24"),
])
def test_config_errors_name_the_problem(grec_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        grec_config(**overrides)


def test_router_k_greater_than_experts_is_refused():
    with pytest.raises(ValueError, match="top_k 3 > router.num_experts 2"):
        RouterConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="(?s)mode.*Input should be 'task', 'sentence' or 'task-sentence'"):
        RouterConfig(mode="token")
    with pytest.raises(ValueError, match="no expert would run"):
        RouterConfig(top_k=0, shared_experts=0)


def test_model_settings_coerce_plain_yaml_values(grec_config):
    # YAML gives these as float / string; they mean what a user means by them.
    config = grec_config(num_heads=2.0, with_text=True)
    assert config.num_heads == 2 and isinstance(config.num_heads, int)
    from grec import TextEncoderConfig

    assert TextEncoderConfig(freeze="no").freeze is False
    with pytest.raises(ValueError, match="(?s)freeze.*valid boolean"):
        TextEncoderConfig(freeze="maybe")
    with pytest.raises(ValueError, match="(?s)num_heads.*fractional part"):
        grec_config(num_heads=2.5)


def test_skill_bank_per_expert_needs_task_routing(grec_config):
    with pytest.raises(ValueError, match="share_across_experts: false"):
        grec_config(router=RouterConfig(mode="sentence"), skills=SkillConfig(share_across_experts=False))


def test_unknown_tasks_are_refused(grec_config):
    config = grec_config()
    with pytest.raises(ValueError, match="unknown task\\(s\\) \\['click'\\]"):
        config.check_tasks(["like", "click"])
    with pytest.raises(ValueError, match="already exists"):
        config.with_task(TaskSpec("like", "binary", "x"))


def test_text_config_needs_text_features(grec_config):
    from grec import TextEncoderConfig

    with pytest.raises(ValueError, match="no text features: delete the `text:` section"):
        grec_config(with_text=False, text=TextEncoderConfig(backbone="tiny_bert"))
    # A spec with text gets the default (packaged MiniLM) encoder when none is given.
    config = grec_config(with_text=True)
    assert config.replace(text=None).text.backbone == "minilm"
