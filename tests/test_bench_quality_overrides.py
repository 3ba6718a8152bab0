"""The quality benchmark's `--model-overrides`: a size or encoding variant of a dataset's shipped
config, validated as the config is, recorded on its runs and summarized apart from the shipped one."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_quality import _overrides, main, overrides_key, summarize
from benchmarks.quality_data import with_model_overrides
from jobs.train import load_config
from jobs.train.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def adult():
    return load_config(REPO_ROOT / "configs" / "adult_grec.yaml")


def test_nested_overrides_change_only_the_named_fields():
    config = adult()
    lighter = with_model_overrides(config, {"d_model": 32, "num_heads": 2, "router": {"num_experts": 2},
                                            "numerics": {"frequencies": 8}})
    assert (lighter.model.d_model, lighter.model.num_heads) == (32, 2)
    assert lighter.model.router.num_experts == 2
    assert lighter.model.router.mode == config.model.router.mode  # the rest of the section is kept
    assert lighter.model.router.top_k == config.model.router.top_k
    assert lighter.model.numerics.frequencies == 8
    assert lighter.model.numerics.sigma == config.model.numerics.sigma
    assert lighter.training == config.training and lighter.optimizer == config.optimizer


@pytest.mark.parametrize(("overrides", "message"), [
    ({"d_modl": 32}, "model.d_modl: no such field"),
    ({"router": {"num_expert": 2}}, "model.router.num_expert: no such field"),
    ({"d_model": 30}, "must split into num_heads"),
    ({"ffn_hidden": 0}, "ffn_hidden"),
])
def test_bad_overrides_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        with_model_overrides(adult(), overrides)


def test_the_command_line_refuses_bad_overrides_before_training(capsys):
    with pytest.raises(SystemExit):
        main(["--datasets", "adult", "--model-overrides", '{"d_modl": 32}'])
    assert "model.d_modl: no such field" in capsys.readouterr().err
    with pytest.raises(Exception, match="JSON mapping"):
        _overrides("[1]")


def test_variants_are_summarized_apart(tmp_path):
    def run(model, seed, overrides=None):
        return {"dataset": "adult", "model": model, "seed": seed,
                **({"model_overrides": overrides} if overrides else {}),
                "test_auc": {"income": 0.9}, "task_average_auc": 0.9, "validation_auc": 0.9,
                "cpu_seconds_to_best": 1.0, "detail": {"params": 1}}

    small = {"d_model": 32, "num_heads": 2}
    rows = summarize([run("grec", 0), run("grec", 0, small), run("grec", 1, small), run("rechub_mmoe", 0)], tmp_path)
    assert [(r["model"], r.get("model_overrides"), r["seeds"]) for r in rows] == [
        ("grec", None, [0]), ("grec", small, [0, 1]), ("rechub_mmoe", None, [0])]
    assert overrides_key({"num_heads": 2, "d_model": 32}) == overrides_key(small)
