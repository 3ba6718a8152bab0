"""Post-training quantization: weights stored at bf16 / fp16 / int8 (grec.quantization), a new
registered version with its precision in its metadata (`grec quantize`), loaded like any version."""

from __future__ import annotations

import pytest
import torch
from conftest import grec_tiny_spec, serving_register, serving_train_tiny_model
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from grec import GRecConfig, RouterConfig, TextEncoderConfig, build_model, load_model, save_model
from grec.quantization import decode_state, encode_state, int8_rows
from grec.synthetic import random_columns

TASKS = ["like", "rating", "next_item"]
# Largest change of a prediction (probability, value, class probability) of the tiny model at each
# precision (measured: bf16 ~5e-4, fp16 ~2e-4, int8 ~2e-3).
SCORE_BOUND = {"bf16": 5e-3, "fp16": 5e-3, "int8": 2e-2}


@pytest.fixture(scope="module")
def model_with_wide_text():
    """A tiny GRec whose text encoder's linear layers are large enough to run as int8."""
    text = TextEncoderConfig(backbone="tiny_bert", tiny_hidden=256, tiny_layers=1, tiny_heads=2, tiny_intermediate=512)
    config = GRecConfig(input=grec_tiny_spec(True), d_model=16, embedding_dim=8, num_heads=2, ffn_hidden=16,
                        expert_hidden=16, tower_hidden=8, text=text, router=RouterConfig(num_experts=3, top_k=1))
    return build_model(config).eval()


def _predictions(model, columns):
    return model.predict(model.collate(columns))


def test_int8_rows_are_symmetric_per_row_codes():
    weight = torch.randn(5, 7, 9)
    codes, scales = int8_rows(weight)
    assert codes.dtype == torch.int8 and scales.shape == (5, 7) and codes.abs().amax(-1).eq(127).all()
    assert ((codes.float() * scales.unsqueeze(-1) - weight).abs() <= scales.unsqueeze(-1) / 2 + 1e-7).all()
    state = decode_state(encode_state({"w": weight, "b": torch.ones(3), "ids": torch.arange(4)}, "int8"))
    assert state["b"].equal(torch.ones(3)) and state["ids"].equal(torch.arange(4))  # vectors, integers kept


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_saved_precision_shrinks_the_file_and_keeps_the_scores(model_with_wide_text, tmp_path, precision):
    model = model_with_wide_text
    columns = random_columns(model.config.input, 8)
    reference = _predictions(model, columns)
    full = save_model(model, tmp_path / "fp32") / "model.safetensors"
    model.precision = precision
    try:
        small = save_model(model, tmp_path / precision) / "model.safetensors"
    finally:
        model.precision = "fp32"
    ratio = small.stat().st_size / full.stat().st_size
    assert ratio < (0.3 if precision == "int8" else 0.51)
    loaded = load_model(tmp_path / precision)
    assert loaded.precision == precision
    scores = _predictions(loaded, columns)
    for task in TASKS:
        assert (scores[task] - reference[task]).abs().max() <= SCORE_BOUND[precision]


def test_int8_model_computes_its_large_linear_layers_in_int8_and_saves_again(model_with_wide_text, tmp_path):
    model = model_with_wide_text
    model.precision = "int8"
    try:
        save_model(model, tmp_path / "int8")
    finally:
        model.precision = "fp32"
    loaded = load_model(tmp_path / "int8")
    dynamic = [name for name, m in loaded.named_modules() if isinstance(m, DynamicLinear)]
    # The text encoder's 256x256 and 256x512 layers; the small grec layers and the layers whose
    # weights the model reads itself (skill bases, heads, attention output of the sentences) stay float.
    assert dynamic and all(name.startswith("encoder.text_encoder.") for name in dynamic)
    columns = random_columns(model.config.input, 8)
    batch = loaded.collate(columns)
    for task in TASKS:  # per-task sub-models of an int8 model agree with it
        torch.testing.assert_close(loaded.export_task(task).predict(batch), loaded.predict(batch, [task])[task],
                                   atol=2e-6, rtol=0)
    # Saved again, a loaded int8 model stores the same int8 codes: the same scores.
    save_model(loaded, tmp_path / "again")
    again = load_model(tmp_path / "again")
    for task, scores in _predictions(again, columns).items():
        torch.testing.assert_close(scores, loaded.predict(batch)[task], atol=1e-6, rtol=0)


def test_baselines_quantize_too(grec_config, tmp_path):
    model = build_model(grec_config(architecture="ple", with_text=True)).eval()
    model.precision = "int8"
    save_model(model, tmp_path / "ple")
    model.precision = "fp32"
    columns = random_columns(model.config.input, 4)
    loaded = load_model(tmp_path / "ple")
    for task, scores in _predictions(loaded, columns).items():
        assert (scores - _predictions(model, columns)[task]).abs().max() <= SCORE_BOUND["int8"]


# ---- the registry and the command ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_movielens):
    tracking_uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    version = serving_register(serving_train_tiny_model(tiny_movielens, seed=0, steps=2), tiny_movielens,
                               "grec-quantize-test", tracking_uri, alias="champion")
    return tracking_uri, "grec-quantize-test", version


def test_quantize_registers_a_new_version_that_serving_loads(registered, tiny_movielens):
    from mlflow import MlflowClient

    from registry.models import load_registered, resolve_version
    from jobs.compact.quantize import PRECISION_TAG, SOURCE_TAG, quantize_registered
    from registry.tracking import use_tracking_uri
    from serving.config import ServingConfig
    from serving.model_source import load_servable

    tracking_uri, name, source = registered
    with use_tracking_uri(tracking_uri):
        made = quantize_registered(f"models:/{name}@champion", "int8")
        assert made.version != source and resolve_version(f"models:/{name}@challenger") == (name, made.version)
        tags = MlflowClient().get_model_version(name, made.version).tags
        assert tags[PRECISION_TAG] == "int8" and tags[SOURCE_TAG] == f"models:/{name}/{source}"
        assert load_registered(f"models:/{name}/{made.version}").model.precision == "int8"
        with pytest.raises(ValueError, match="already stored as int8"):
            quantize_registered(f"models:/{name}/{made.version}", "bf16")
        config = ServingConfig(model_uri=f"models:/{name}@champion", tracking_uri=tracking_uri,
                               online_store=str(tiny_movielens.root / "unused.sqlite"))
        full, small = load_servable(config, source), load_servable(config, made.version)
    assert small.describe()["precision"] == "int8" and full.describe()["precision"] == "fp32"
    rows = tiny_movielens.read_split("validation").slice(0, 50)
    for task in full.task_names:
        assert abs(small.score(task, rows).scores - full.score(task, rows).scores).max() <= SCORE_BOUND["int8"] * 5


def test_quantize_command_reports_bad_input(registered, capsys):
    from jobs.cli import main

    tracking_uri, name, _ = registered
    assert main(["quantize", "--model", f"models:/{name}/99", "--precision", "int8",
                 "--tracking-uri", tracking_uri]) == 2
    assert "grec quantize: error:" in capsys.readouterr().err
    assert main(["quantize", "--model", f"models:/{name}@champion", "--precision", "fp16", "--alias", "none",
                 "--tracking-uri", tracking_uri]) == 0
    assert "stored as fp16" in capsys.readouterr().out
