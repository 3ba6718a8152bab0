"""One scoring of rows for the endpoint and the registered pyfunc (recommend.ranker.Ranker.score_tasks):
requests ranked together in a batch, a request's several tasks sharing its rows, score as each alone;
the pyfunc gives the endpoint's scores for the same rows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import serving_train_tiny_model

from recommend.ranker import SUB_MODELS_UP_TO
from registry.models import feature_columns
from registry.pyfunc_model import GRecPyfuncModel
from serving.ranking import RankRequest, rank_batch
from serving.servable import ServableModel


@pytest.fixture(scope="module")
def servable(tiny_movielens):
    model = serving_train_tiny_model(tiny_movielens, seed=0)
    return ServableModel(name="tiny", version="1", alias=None, uri="models:/tiny/1", model=model,
                         transforms=tiny_movielens.transforms(), spec=model.config.input,
                         definition=tiny_movielens.definition())


@pytest.fixture(scope="module")
def tables(tiny_movielens):
    rows = tiny_movielens.read_split("test")
    return rows.slice(0, 7), rows.slice(7, 5)


def _alone(servable, request: RankRequest):
    return rank_batch(servable, [request])[0]


def test_a_requests_two_tasks_in_one_batch_score_as_each_alone(servable, tables):
    first, second = tables
    requests = [RankRequest("like", first), RankRequest("love", first), RankRequest("like", second)]
    assert len({r.task for r in requests}) <= SUB_MODELS_UP_TO  # each task's sub-model
    together = rank_batch(servable, requests)
    for request, result in zip(requests, together, strict=True):
        alone = _alone(servable, request)
        assert result.batch_size == 3 and result.error is None
        np.testing.assert_allclose(result.scores, alone.scores, rtol=0, atol=1e-6)
        assert result.known_items == alone.known_items


def test_more_tasks_than_sub_models_pay_for_go_through_the_full_model_with_the_same_scores(servable, tables):
    first, second = tables
    tasks = servable.task_names
    assert len(tasks) > SUB_MODELS_UP_TO
    requests = [RankRequest(task, first) for task in tasks] + [RankRequest(tasks[0], second)]
    for request, result in zip(requests, rank_batch(servable, requests), strict=True):
        alone = _alone(servable, request)
        np.testing.assert_allclose(result.scores, alone.scores, rtol=1e-5, atol=1e-6)  # float32 sums, merged skills
        assert (result.class_probabilities is None) == (alone.class_probabilities is None)


def test_an_unknown_task_fails_only_its_own_request(servable, tables):
    first, _ = tables
    good, bad = rank_batch(servable, [RankRequest("like", first), RankRequest("nope", first)])
    assert good.error is None and len(good.scores) == first.num_rows
    assert bad.error is not None and "nope" in str(bad.error)


def test_the_pyfunc_gives_the_endpoints_scores_for_the_same_rows(servable, tables):
    first, _ = tables
    pyfunc = GRecPyfuncModel(servable.model, servable.transforms, servable.spec)
    frame = first.to_pandas()[feature_columns(servable.spec)]
    scored = pyfunc.predict(frame, {"tasks": ["like"]})
    assert list(scored.columns) == ["score_like"] and scored["score_like"].dtype == np.float32
    np.testing.assert_allclose(scored["score_like"], _alone(servable, RankRequest("like", first)).scores,
                               rtol=0, atol=1e-6)
    every = pyfunc.predict(frame)
    assert list(every.columns) == [f"score_{task}" for task in servable.task_names]
    for task in servable.task_names:
        np.testing.assert_allclose(every[f"score_{task}"], _alone(servable, RankRequest(task, first)).scores,
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown task"):
        pyfunc.predict(frame, {"tasks": ["nope"]})
