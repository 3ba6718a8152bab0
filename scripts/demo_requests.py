"""The main job's last step: wait for the endpoint, then show a user's top items for every task,
each item with its title and the score the endpoint ranked it by, in that order.

Reads the item titles from the prepared dataset's offline store so the answer is readable (the
endpoint itself returns item ids and scores), and the user's seen set from the online store to
show that none of the recommended items is one the user already rated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx

from feature_store.online import open_online_store, read_seen
from feature_store.prepare import open_prepared


def wait_until_ready(client: httpx.Client, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(1.0)
    sys.exit(f"the endpoint was not ready within {timeout_s:.0f} s")


def item_titles(data_dir: str) -> dict[object, str]:
    prepared = open_prepared(data_dir)
    item_key = prepared.definition().item.join_key
    items = prepared.offline_store().read_view("movies", columns=[item_key, "title"])
    return dict(zip(items.column(item_key).to_pylist(), items.column("title").to_pylist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the endpoint, e.g. http://127.0.0.1:8000")
    parser.add_argument("--data", required=True, help="the prepared dataset directory (for titles)")
    parser.add_argument("--online-store", required=True, help="the online store the endpoint reads (for the seen set)")
    parser.add_argument("--user", type=int, default=1, help="user id to recommend for")
    parser.add_argument("-k", type=int, default=5, help="items per task")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {os.environ['GREC_API_TOKEN']}"}
    titles = item_titles(args.data)
    with open_online_store(args.online_store) as store:
        seen = read_seen(store, args.user)
    with httpx.Client(base_url=args.url, headers=headers, timeout=60.0) as client:
        wait_until_ready(client, args.timeout)
        model = client.get("/v1/model").raise_for_status().json()
        print(f"GET /v1/model -> {json.dumps(model)}")
        request = {"user_id": args.user, "task": None, "k": args.k}
        for task in model["recommend_tasks"]:  # the model's tasks and those only its stage ranks for
            request["task"] = task
            answer = client.post("/v1/recommend", json=request).raise_for_status().json()
            print(f"\nPOST /v1/recommend {json.dumps(request)}")
            print("\n".join(describe(answer, titles, seen, args.user)))


def describe(answer: dict, titles: dict[object, str], seen: set, user: object) -> list[str]:
    """The answer as lines: how it was made, then its items with titles, in the order of the score
    they were ranked by (the blend's `rank_score` when the answer has a blend, else the task's score),
    which each line shows first."""
    blend = answer.get("blend")
    ranked_by = (" + ".join(f"{weight:g} x {name}" for name, weight in blend.items()) if blend
                 else f"{answer['task']}'s score")
    repeats = sum(1 for item in answer["items"] if item["item_id"] in seen)
    lines = [f"  model v{answer['model']['version']}, cold start: {answer['cold_start']}, candidates from "
             f"{answer['candidates_from']}, ranked by {ranked_by}; {repeats} of {len(answer['items'])} already "
             f"rated by user {user} ({len(seen)} rated)"]
    key = "rank_score" if blend else "score"
    for rank, item in enumerate(sorted(answer["items"], key=lambda i: i[key], reverse=True), start=1):
        shown = f"rank score {item['rank_score']:.4f}, {answer['task']} {item['score']:.4f}" if blend \
            else f"{answer['task']} {item['score']:.4f}"
        lines.append(f"  {rank}. {titles.get(item['item_id'], '?')} ({shown}; item {item['item_id']})")
    return lines


if __name__ == "__main__":
    main()
