"""The main job's last step shows each answer's items with their titles, in the order of the score
it shows: the blend's rank score when the endpoint ranked by a blend, else the task's score."""

from __future__ import annotations

import importlib.util

from conftest import REPO_ROOT


def _demo():
    spec = importlib.util.spec_from_file_location("demo_requests", REPO_ROOT / "scripts" / "demo_requests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _answer(items: list[dict], blend: dict | None) -> dict:
    return {"model": {"version": "3"}, "task": "like", "cold_start": False, "candidates_from": "retrieval",
            "blend": blend, "items": items}


TITLES = {1: "Toy Story (1995)", 2: "GoldenEye (1995)", 3: "Four Rooms (1995)"}


def test_items_are_listed_by_the_rank_score_they_show_with_titles():
    items = [{"item_id": 1, "score": 0.9, "rank_score": 1.1}, {"item_id": 2, "score": 0.5, "rank_score": 2.0},
             {"item_id": 3, "score": 0.7, "rank_score": 1.5}]
    lines = _demo().describe(_answer(items, {"like": 1.0, "retrieval": 0.3}), TITLES, {3}, 1)
    assert "ranked by 1 x like + 0.3 x retrieval; 1 of 3 already rated by user 1 (1 rated)" in lines[0]
    assert lines[1:] == ["  1. GoldenEye (1995) (rank score 2.0000, like 0.5000; item 2)",
                         "  2. Four Rooms (1995) (rank score 1.5000, like 0.7000; item 3)",
                         "  3. Toy Story (1995) (rank score 1.1000, like 0.9000; item 1)"]


def test_without_a_blend_items_are_listed_by_the_task_score():
    items = [{"item_id": 1, "score": 0.2}, {"item_id": 3, "score": 0.8}]
    lines = _demo().describe(_answer(items, None), TITLES, set(), 1)
    assert "ranked by like's score" in lines[0]
    assert lines[1:] == ["  1. Four Rooms (1995) (like 0.8000; item 3)", "  2. Toy Story (1995) (like 0.2000; item 1)"]
