"""The router: which rules select a completed series.

A rule's ``match`` maps DICOM keywords to conditions: an exact value, a list
of values, ``{regex = ".."}`` (``re.search`` on the value as written in the
dataset, multiple values joined by a backslash) or ``{min = .., max = ..}``
(numeric, inclusive). All conditions of a rule must hold; several rules may
select one series. An attribute the series lacks matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydicom import Dataset
from pydicom.multival import MultiValue

from node.settings import MatchValue, RangeMatch, RegexMatch, Rule


def _values(raw: object) -> list[str]:
    if isinstance(raw, MultiValue | list | tuple):
        return [str(v).strip() for v in raw]
    return [str(raw).strip()]


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _equal(actual: str, expected: str | int | float) -> bool:
    if isinstance(expected, str):
        return actual == expected.strip()
    number = _as_float(actual)
    return number is not None and number == float(expected)


def condition_holds(raw: object, condition: MatchValue) -> bool:
    """Whether an attribute value ``raw`` meets one ``match`` condition."""
    values = _values(raw)
    joined = "\\".join(values)
    if isinstance(condition, RegexMatch):
        return re.search(condition.regex, joined) is not None
    if isinstance(condition, RangeMatch):
        number = _as_float(values[0]) if values else None
        if number is None:
            return False
        low = condition.min if condition.min is not None else float("-inf")
        high = condition.max if condition.max is not None else float("inf")
        return low <= number <= high
    options = condition if isinstance(condition, list) else [condition]
    candidates = [joined, *values] if len(values) > 1 else values
    return any(_equal(actual, expected) for actual in candidates for expected in options)


class Router:
    """Applies the rules of settings.toml to a series' representative dataset."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)

    def matching(self, ds: Dataset) -> list[Rule]:
        """The rules whose every condition holds for ``ds``, in file order."""
        selected = []
        for rule in self.rules:
            ok = True
            for keyword, condition in rule.match.items():
                value = ds.get(keyword)
                if value is None or value == "":
                    ok = False
                    break
                if not condition_holds(value, condition):
                    ok = False
                    break
            if ok:
                selected.append(rule)
        return selected
