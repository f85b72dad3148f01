"""The engine against a brute-force oracle on random data (seeded, so failures replay).

The oracle computes date ranges on its own (calendar arithmetic, datetime.fromisoformat)
and applies the R4 prefix definitions literally, then filters and sorts in Python.
"""

from __future__ import annotations

import calendar
import random
from datetime import UTC, datetime, timedelta

import pytest

from fhirserver.search.types.string import normalize
from tests.search.search_support import Store

US = timedelta(microseconds=1)
FIRSTS = ["Ann", "Anne", "Ánna", "Bob", "Bo", "Zoë", "Zoe", "Ærin", "O'Neil", "Li_x", "100%"]
PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]


def oracle_range(text: str) -> tuple[datetime, datetime]:
    if "T" in text:
        t = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
        return t, t + timedelta(seconds=1) - US
    parts = [int(p) for p in text.split("-")]
    y = parts[0]
    m1, m2 = (parts[1], parts[1]) if len(parts) > 1 else (1, 12)
    d1 = parts[2] if len(parts) > 2 else 1
    d2 = parts[2] if len(parts) > 2 else calendar.monthrange(y, m2)[1]
    return datetime(y, m1, d1, tzinfo=UTC), datetime(y, m2, d2, tzinfo=UTC) + timedelta(days=1) - US


def oracle_match(prefix: str, s: tuple[datetime, datetime], t: tuple[datetime, datetime]) -> bool:
    contained = s[0] <= t[0] and t[1] <= s[1]
    return {
        "eq": contained,
        "ne": not contained,
        "gt": t[1] > s[1],
        "lt": t[0] < s[0],
        "ge": t[1] > s[1] or contained,
        "le": t[0] < s[0] or contained,
        "sa": t[0] > s[1],
        "eb": t[1] < s[0],
    }[prefix]


def random_date(rnd: random.Random) -> str:
    y, m, d = rnd.randint(1978, 1982), rnd.randint(1, 12), rnd.randint(1, 28)
    kind = rnd.randint(0, 3)
    if kind == 0:
        return f"{y}"
    if kind == 1:
        return f"{y}-{m:02d}"
    if kind == 2:
        return f"{y}-{m:02d}-{d:02d}"
    tz = rnd.choice(["Z", "+05:30", "-08:00"])
    return f"{y}-{m:02d}-{d:02d}T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00{tz}"


@pytest.fixture()
def population(store: Store) -> dict[str, dict]:
    rnd = random.Random(20240501)
    people: dict[str, dict] = {}
    for i in range(40):
        body: dict = {"name": [{"given": [rnd.choice(FIRSTS)], "family": f"F{rnd.randint(0, 3)}"}]}
        if rnd.random() < 0.85:
            body["birthDate"] = random_date(rnd)
        store.add("Patient", f"r{i:02d}", body)
        people[f"r{i:02d}"] = body
    return people


def test_dates_match_the_oracle(store: Store, population: dict[str, dict]) -> None:
    rnd = random.Random(7)
    for _ in range(60):
        prefix, value = rnd.choice(PREFIXES), random_date(rnd)
        s = oracle_range(value)
        expected = {
            n
            for n, b in population.items()
            if "birthDate" in b and oracle_match(prefix, s, oracle_range(b["birthDate"]))
        }
        assert store.found("Patient", ("birthdate", prefix + value)) == expected, (prefix, value)


def test_names_and_boolean_combinations_match_the_oracle(store: Store, population: dict[str, dict]) -> None:
    rnd = random.Random(11)

    def has(b: dict, q: str) -> bool:
        return any(normalize(g).startswith(normalize(q)) for g in b["name"][0]["given"])

    for _ in range(40):
        a, b = rnd.choice(FIRSTS)[: rnd.randint(1, 4)], rnd.choice(FIRSTS)[: rnd.randint(1, 4)]
        fam = f"F{rnd.randint(0, 3)}"
        expected = {
            n for n, body in population.items() if (has(body, a) or has(body, b)) and body["name"][0]["family"] == fam
        }
        got = store.found("Patient", ("given", f"{a},{b}"), ("family:exact", fam))
        assert got == expected, (a, b, fam)


@pytest.mark.parametrize("order", ["birthdate", "-birthdate"])
def test_paging_order_matches_the_oracle(store: Store, population: dict[str, dict], order: str) -> None:
    desc = order.startswith("-")

    def key(item: tuple[str, dict]) -> tuple:
        name, body = item
        if "birthDate" not in body:
            return (1, 0, name)
        low, high = oracle_range(body["birthDate"])
        value = (high if desc else low).timestamp()
        return (0, -value if desc else value, name)

    expected = [n for n, _ in sorted(population.items(), key=key)]
    if desc:  # the id tie-break follows the last key's direction
        groups: dict[tuple, list[str]] = {}
        for n, b in population.items():
            groups.setdefault(key((n, b))[:2], []).append(n)
        expected = [n for k in sorted(groups) for n in sorted(groups[k], reverse=True)]
    seen: list[str] = []
    page = store.page("Patient", ("_sort", order), ("_count", "7"))
    for _ in range(20):  # bounded: a paging bug must fail, not hang
        seen += [r.res_id[len(store.prefix) :] for r in page.rows]
        if page.next_cursor is None:
            break
        page = store.page("Patient", ("_cursor", page.next_cursor))
    assert seen == expected
