"""A loaded version's item texts encoded before it takes traffic.

An item's text (a title) is the same for every user, and the model's text encoder caches each
distinct text's vector once encoded (grec/text.py). Left to first sight, the first requests after a
replica starts or a version moves pay the encoder for every candidate's title: with a MiniLM head
that is most of a request's cost. Here the most frequent training items' rows are read from the
online store and run through the model's encoders once, in chunks, when the scorer loads a version.
"""

from __future__ import annotations

import logging
import time

from serving.errors import ServingError
from serving.features import RowsQuery, StoreGuard, request_rows
from serving.servable import ServableModel

log = logging.getLogger("ray.serve")

# Items per chunk: the size of a large request, so that warming holds no more memory than serving.
WARM_CHUNK_ITEMS = 256


def warm_item_texts(servable: ServableModel, guard: StoreGuard, most: int) -> int:
    """Encodes the item texts of up to `most` of the version's most frequent training items (its item
    vocabulary's order) into the text cache, as many as the cache holds; returns the items read (0
    when the model has no cached item text). A store that does not answer ends the warm-up early:
    requests then encode what they meet, as without it."""
    encoder = servable.model.encoder
    text = encoder.text_encoder
    user_vocabulary = servable.transforms.vocabularies.get(servable.spec.user_id or "")
    if most == 0 or text is None or not encoder.item_texts or not text.cache_active or not user_vocabulary:
        return 0
    # The rows need a user: any known one (the item side, which holds the texts, is the same for all).
    user = user_vocabulary.values[0]
    items = servable.popular[: min(most, text.config.cache_size)]
    task = servable.task_names[0]
    started, misses_before = time.process_time(), text.cache_misses
    for start in range(0, len(items), WARM_CHUNK_ITEMS):
        try:
            found = request_rows(guard, servable.definition, RowsQuery(user, items[start:start + WARM_CHUNK_ITEMS]))
        except ServingError as err:
            log.warning("scorer: warming version %s's item texts stopped after %d items: %s", servable.version,
                        start, err)
            return start
        if found.degraded:  # default features carry no texts: nothing to warm
            return start
        servable.score(task, found.rows)
    log.info("scorer: version %s: %d item texts encoded for %d items in %.1f CPU s", servable.version,
             text.cache_misses - misses_before, len(items), time.process_time() - started)
    return len(items)
