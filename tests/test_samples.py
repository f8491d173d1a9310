"""The built-in sample data: deterministic, every kind and format, overlaps exactly as designed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from blindmatch.core.canon import KINDS, canonicalize
from blindmatch.demo import samples
from blindmatch.demo.sample_files import write_samples
from node.importing import import_paths
from node.store import TLP_LEVELS, Store

SIZE = 300


@pytest.fixture(scope="module")
def three() -> samples.Samples:
    return samples.generate(samples.nation_names(3), SIZE)


def test_same_arguments_give_the_same_data_and_files(tmp_path: Path) -> None:
    first = samples.generate(samples.nation_names(3), SIZE, seed=7)
    second = samples.generate(samples.nation_names(3), SIZE, seed=7)
    assert first.sightings == second.sightings
    paths_a = write_samples(first, tmp_path / "a")
    paths_b = write_samples(second, tmp_path / "b")
    for nation in first.nations:
        for a, b in zip(paths_a[nation], paths_b[nation], strict=True):
            assert a.read_bytes() == b.read_bytes(), a.name
    other = samples.generate(samples.nation_names(3), SIZE, seed=8)
    assert other.sightings != first.sightings


def test_every_nation_has_every_kind_in_every_format(three: samples.Samples) -> None:
    for nation, records in three.sightings.items():
        assert {s.kind for s in records} == set(KINDS), nation
        assert {s.fmt for s in records} == set(samples.FORMATS), nation
        assert len({s.key for s in records}) == SIZE
        # the plain list has no TLP column: only what the import default (amber) fits goes there
        assert {s.tlp for s in records if s.fmt == "text"} == {samples.TEXT_TLP}


def test_every_spelling_canonicalises_to_its_indicator(three: samples.Samples) -> None:
    for records in three.sightings.values():
        for s in records:
            indicator = canonicalize(s.hint, s.raw)
            assert (indicator.kind, indicator.value) == s.key, s


def test_shared_indicators_are_spelled_differently(three: samples.Samples) -> None:
    spellings: dict[tuple[str, str], set[str]] = {}
    for records in three.sightings.values():
        for s in records:
            spellings.setdefault(s.key, set()).add(s.raw)
    ipv4 = spellings[("ipv4", "195.127.0.11")]
    assert {"195.127.0.11", "3279880203", "0xc3.0x7f.0x0.0xb"} <= ipv4
    assert "straße.example" in spellings[("domain", "xn--strae-oqa.example")]
    everywhere = set.intersection(
        *({s.key for s in records} for records in three.sightings.values())
    )
    varied = [key for key in everywhere if len(spellings[key]) > 1]
    # Without canonicalisation most of what all three hold would never match.
    assert len(varied) > len(everywhere) * 0.8


@pytest.mark.parametrize("count", [2, 3, 5])
def test_overlaps_are_as_designed(count: int) -> None:
    nations = samples.nation_names(count)
    data = samples.generate(nations, SIZE)
    plan = data.plan
    expected = data.expected_matches()
    assert plan.private > 0
    for i, a in enumerate(nations):
        for j, b in enumerate(nations):
            if a == b:
                continue
            with_b = [key for key, partners in expected[a].items() if b in partners]
            # the i-th red_one indicator is RED at nation i % count: it matches only elsewhere
            red_elsewhere = sum(1 for r in range(plan.red_one) if r % count not in (i, j))
            assert len(with_b) == plan.shared_all + plan.per_pair + red_elsewhere, (a, b)
        assert set(expected[a]) <= {s.key for s in data.sightings[a]}
    if count >= 3:
        for nation in nations:
            by_all = [key for key, who in expected[nation].items() if len(who) == count - 1]
            assert len(by_all) == plan.shared_all


def test_red_never_matches(three: samples.Samples) -> None:
    expected = three.expected_matches()
    red = {
        nation: {s.key for s in records if s.tlp == "red"}
        for nation, records in three.sightings.items()
    }
    everywhere_red = set.intersection(*red.values())
    assert len(everywhere_red) == three.plan.red_all
    for nation, matches in expected.items():
        assert not red[nation] & set(matches)
        for key, partners in matches.items():
            assert all(key not in red[p] for p in partners)
    # ... and RED overlaps exist, so this test is about something
    assert all(red[a] & red[b] for a in red for b in red)


def test_sample_tlp_order_is_the_store_s() -> None:
    # The samples merge a nation's labels by this order; the store must merge them the same way.
    assert samples.TLP_ORDER == TLP_LEVELS


def test_files_import_cleanly_into_a_store(tmp_path: Path, three: samples.Samples) -> None:
    files = write_samples(three, tmp_path / "data")
    for nation in three.nations:
        with Store.open(tmp_path / f"{nation}.sqlite") as store:
            report = import_paths(store, files[nation])
            assert report.failed == []
            assert report.invalid_count == 0, report.format()
            assert report.new == SIZE
            assert [f.fmt for f in report.files] == list(samples.FORMATS)
            stored = {
                (kind, value): store.lookup(kind, value)
                for _, kind, value, _ in store.eligible(KINDS, TLP_LEVELS)
            }
        designed: dict[tuple[str, str], int] = {}
        for s in three.sightings[nation]:
            designed[s.key] = max(designed.get(s.key, 0), TLP_LEVELS.index(s.tlp))
        assert set(stored) == set(designed)
        for key, row in stored.items():
            assert row is not None and row.tlp == TLP_LEVELS[designed[key]], key


def test_files_use_each_format_s_features(tmp_path: Path, three: samples.Samples) -> None:
    paths = {p.name: p for p in write_samples(three, tmp_path)[three.nations[0]]}
    text = paths[samples.FILE_NAMES["text"]].read_text(encoding="utf-8")
    assert text.startswith("#")
    header = paths[samples.FILE_NAMES["csv"]].read_text(encoding="utf-8").splitlines()[1]
    assert header == "kind,value,first_seen,last_seen,tlp,tags"

    bundle = json.loads(paths[samples.FILE_NAMES["stix"]].read_text(encoding="utf-8"))
    types = Counter(o["type"] for o in bundle["objects"])
    assert types["sighting"] == 1 and types["indicator"] > 0
    patterns = [o["pattern"] for o in bundle["objects"] if o["type"] == "indicator"]
    assert any("domain-name:value" in p and " OR ipv4-addr:value" in p for p in patterns)
    assert any(p.startswith("[file:hashes.'SHA-256'") for p in patterns)
    markings = {m for o in bundle["objects"] for m in o.get("object_marking_refs", [])}
    assert "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1" in markings  # TLP:RED

    event = json.loads(paths[samples.FILE_NAMES["misp"]].read_text(encoding="utf-8"))["Event"]
    top = {a["type"] for a in event["Attribute"]}
    inner = {a["type"] for o in event["Object"] for a in o["Attribute"]}
    assert {"domain|ip", "ip-dst", "url"} <= top
    assert any(t.startswith("filename|") for t in top)
    assert {"filename", "domain", "ip-dst"} <= inner
    attributes = [*event["Attribute"], *(a for o in event["Object"] for a in o["Attribute"])]
    tags = {t["name"] for a in attributes for t in a["Tag"]}
    assert "tlp:green" in tags
    assert {"name": "tlp:amber"} in event["Tag"]  # what untagged attributes inherit


@pytest.mark.parametrize(
    ("nations", "size", "problem"),
    [
        (["aurelia"], SIZE, "2 to 8 nations"),
        ([f"n{i}" for i in range(9)], SIZE, "2 to 8 nations"),
        (["aurelia", "borduria"], 99, "at least 100"),
        (["aurelia", "aurelia"], SIZE, "must differ"),
    ],
)
def test_bad_arguments_are_refused(nations: list[str], size: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        samples.generate(nations, size)
