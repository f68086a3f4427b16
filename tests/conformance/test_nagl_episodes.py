"""NAGL's training episodes against those the official sampler drew.

tests/fixtures/conformance/nagl/episodes_official.json holds 1,500 episodes per k (1 and 2) that
the code's FSDataset.load_frame drew on a small tree of 12 categories with very unequal defect
types (8, 3, 2 images, and singletons) and 3-5 normal test images (PROVENANCE.md). The RNGs
differ (the code: Python's and numpy's global ones), so the episodes cannot agree one by one:
the rules that hold for every episode are checked exactly, on both sides, and the frequencies the
rules decide are compared with a chi-square test of homogeneity between the code's episodes and
gadbench's `episode_sampler: official`. The clean sampler (the default) must be told apart by the
same test, which shows it has the power to fail.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from nagl.train import EpisodeBank, sample_episode

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "nagl" / "episodes_official.json"
DRAWS = 6000


def official():
    return json.loads(FIXTURE.read_text())


def bank_of(layout: dict) -> tuple[EpisodeBank, list[str]]:
    """The fixture's tree as an EpisodeBank (every defect with a mask); names[i] is image i's file."""
    categories, labels, defects, names = [], [], [], []
    for category, spec in sorted(layout.items()):
        for index in range(spec["good"]):
            categories.append(category), labels.append(0), defects.append("good"), names.append(f"good/{index:03d}")
        for kind, count in spec["types"].items():
            for index in range(count):
                categories.append(category), labels.append(1), defects.append(kind), names.append(f"{kind}/{index:03d}")
    n = len(names)
    patch_masks = torch.tensor(labels, dtype=torch.bool)[:, None].expand(n, 4).clone()
    bank = EpisodeBank(torch.zeros(n, 4, 2), torch.zeros(n, 2, 2), patch_masks, categories, labels, defects, (2, 2))
    return bank, names


def ours(layout: dict, k: int, sampler: str) -> list[str]:
    """gadbench's episodes in the fixture's format."""
    bank, names = bank_of(layout)
    rng = np.random.default_rng(0)
    categories = bank.usable_categories(k, sampler, 1)
    rows = []
    for _ in range(DRAWS):
        e = sample_episode(rng, bank, k, categories, sampler, 1)
        rows.append("|".join([bank.categories[e.query], names[e.query], str(e.label),
                              ";".join(names[i] for i in e.normal), ";".join(names[i] for i in e.abnormal)]))
    return rows


def parsed(row: str) -> dict:
    category, query, label, normal, abnormal = row.split("|")
    return {"category": category, "query": query, "label": int(label), "normal": normal.split(";"), "abnormal": abnormal}


def features(row: dict) -> dict:
    """What the sampler's rules decide, episode by episode."""
    reference_type = row["abnormal"].split("/")[0]
    return {
        "category": row["category"],
        "reference type": (row["category"], reference_type),
        "query label": row["label"],
        "query is a reference": row["query"] in row["normal"] + [row["abnormal"]],
        "label and coincidence": (row["label"], row["query"] in row["normal"] + [row["abnormal"]]),
    }


def homogeneity(theirs: list[dict], mine: list[dict], what: str) -> float:
    values = sorted({f[what] for f in theirs + mine}, key=str)
    table = np.array([[sum(f[what] == v for f in side) for v in values] for side in (theirs, mine)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return chi2_contingency(table)[1]


def check_rules(rows: list[dict], layout: dict, k: int) -> None:
    for row in rows:
        spec = layout[row["category"]]
        assert len(row["normal"]) == k and len(set(row["normal"])) == k  # k distinct normal references
        assert all(n.startswith("good/") for n in row["normal"])  # from the category's normal test images
        kind = row["abnormal"].split("/")[0]
        assert kind in spec["types"]  # one abnormal reference of a defect type of the category
        query_kind = row["query"].split("/")[0]
        if row["label"]:
            assert query_kind == kind  # an abnormal query shares the reference's type
        else:
            assert query_kind == "good"


@pytest.mark.parametrize("k", [1, 2])
def test_every_episode_keeps_the_codes_rules_on_both_sides(k):
    fixture = official()
    theirs = [parsed(r) for r in fixture["episodes"][f"k{k}"]]
    check_rules(theirs, fixture["layout"], k)
    check_rules([parsed(r) for r in ours(fixture["layout"], k, "official")], fixture["layout"], k)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("what", ["category", "reference type", "query label", "query is a reference",
                                  "label and coincidence"])
def test_the_official_sampler_draws_with_the_codes_frequencies(k, what):
    fixture = official()
    theirs = [features(parsed(r)) for r in fixture["episodes"][f"k{k}"]]
    mine = [features(parsed(r)) for r in ours(fixture["layout"], k, "official")]
    assert homogeneity(theirs, mine, what) > 1e-3, what


def test_the_codes_episodes_show_the_rules_the_docs_state():
    """Read off the code's episodes alone: types uniform (not by images), half the queries
    abnormal, and queries that are references (its retry's result is discarded)."""
    fixture = official()
    rows = [parsed(r) for r in fixture["episodes"]["k1"]]
    share_abnormal = np.mean([r["label"] for r in rows])
    assert abs(share_abnormal - 0.5) < 0.05
    big = [r for r in rows if r["category"] == "part00"]  # types: big 8, small 1, mid 3 images
    share_big = np.mean([r["abnormal"].startswith("big/") for r in big])
    assert abs(share_big - 1 / 3) < 0.12  # by images it would be 8 / 12
    assert np.mean([r["query"] in r["normal"] + [r["abnormal"]] for r in rows]) > 0.1


@pytest.mark.parametrize("what", ["query is a reference", "label and coincidence"])
def test_the_clean_sampler_is_told_apart(what):
    """The default never makes the query a reference: the same test rejects it against the code."""
    fixture = official()
    theirs = [features(parsed(r)) for r in fixture["episodes"]["k1"]]
    mine = [features(parsed(r)) for r in ours(fixture["layout"], 1, "clean")]
    assert homogeneity(theirs, mine, what) < 1e-6
