"""Task conditions over event columns: the subset that is accepted, SQL's treatment of missing
values, and errors that name the unknown column (with the nearest one) or the construct refused.
Nothing in a condition is ever run as Python."""

from __future__ import annotations

import pyarrow as pa
import pytest

from feature_store.expressions import ExpressionError, parse_expression

EVENTS = pa.table({
    "rating": pa.array([1, 4, 5, None], pa.int64()),
    "clicked": [0, 1, 1, 0],
    "dwell_s": [3.5, 31.0, 60.0, 30.0],
    "Recommended IND": [1, 0, 1, 1],
    "country": ["FR", "DE", None, "US"],
    "bounced": [True, False, None, True],
})


@pytest.mark.parametrize(("text", "expected"), [
    ("rating >= 4", [False, True, True, None]),
    ("clicked == 1", [False, True, True, False]),
    ("dwell_s > 30", [False, True, True, False]),
    ("`Recommended IND` == 1 and rating > 2", [False, False, True, None]),
    ("country in ['FR', 'US']", [True, False, None, True]),
    ("country not in ('FR',)", [False, True, None, True]),
    ("not bounced", [False, True, None, False]),
    ("1 <= rating < 5", [True, True, False, None]),
    ("bounced or rating > 4", [True, False, True, True]),  # a missing value does not hide a true
    ("clicked == 1 and (dwell_s > 30 or rating == 5)", [False, True, True, False]),
    ("rating >= -1", [True, True, True, None]),
])
def test_conditions_evaluate_with_sql_nulls(text, expected):
    expression = parse_expression(text)
    expression.check(EVENTS.schema)
    assert expression.evaluate(EVENTS).to_pylist() == expected


def test_the_columns_read_are_listed_once_in_order():
    assert parse_expression("rating >= 4 and clicked == 1 or rating == 5").columns == ["rating", "clicked"]
    assert parse_expression("`Recommended IND` == 1").columns == ["Recommended IND"]


@pytest.mark.parametrize(("text", "message"), [
    ("ratng >= 4", r"unknown column 'ratng'; did you mean 'rating'\?"),
    ("rating >= '4'", r"rating \(number\) is compared with '4' \(string\)"),
    ("rating", r"column 'rating' holds numbers, not a condition"),
])
def test_a_condition_that_does_not_fit_the_columns_is_named(text, message):
    with pytest.raises(ExpressionError, match=message):
        parse_expression(text).check(EVENTS.schema)


@pytest.mark.parametrize(("text", "message"), [
    ("__import__('os').system('true')", "is not a condition"),
    ("rating + 1 > 2", "'rating \\+ 1' is neither a column nor"),
    ("rating is None", "uses a comparison that is not supported"),
    ("1 == 1", "compares no column"),
    ("country in country", "`in` takes a list of values"),
    ("rating = 4", "not a condition"),
    ("a.b > 1", "'a.b' is neither a column nor"),
    ("`open == 1", "a backtick is not closed"),
    ("rating >= 4 if clicked else 0", "is not a condition"),
])
def test_anything_but_comparisons_and_boolean_logic_is_refused(text, message):
    with pytest.raises(ExpressionError, match=message):
        parse_expression(text)
