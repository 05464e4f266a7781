"""Rule matching: exact, list, regex and range conditions."""

from __future__ import annotations

from pydicom import Dataset

from node.routing import Router
from node.settings import Rule


def dataset(**attrs: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def rule(name: str, **match: object) -> Rule:
    return Rule.model_validate(
        {"name": name, "pipeline": "ct-denoise", "destinations": ["pacs"], "match": match}
    )


def names(router: Router, ds: Dataset) -> list[str]:
    return [r.name for r in router.matching(ds)]


def test_exact_list_regex_and_range() -> None:
    router = Router(
        [
            rule("exact", Modality="CT"),
            rule("list", Modality=["MR", "CT"]),
            rule("regex", SeriesDescription={"regex": "(?i)low ?dose"}),
            rule("range", CTDIvol={"max": 5}),
            rule("all", Modality="CT", CTDIvol={"min": 1, "max": 5}),
        ]
    )
    ds = dataset(Modality="CT", SeriesDescription="Abdomen LOW DOSE", CTDIvol=3.2)
    assert names(router, ds) == ["exact", "list", "regex", "range", "all"]
    assert names(router, dataset(Modality="CT", CTDIvol=12.0)) == ["exact", "list"]
    assert names(router, dataset(Modality="MR")) == ["list"]


def test_missing_attribute_matches_nothing() -> None:
    router = Router(
        [rule("range", CTDIvol={"max": 5}), rule("regex", BodyPartExamined={"regex": "."})]
    )
    assert names(router, dataset(Modality="CT")) == []


def test_numbers_compare_numerically_and_multivalues_match_any() -> None:
    router = Router([rule("thin", SliceThickness=1), rule("axial", ImageType="AXIAL")])
    ds = dataset(SliceThickness="1.0", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert names(router, ds) == ["thin", "axial"]
    joined = Router([rule("whole", ImageType="ORIGINAL\\PRIMARY\\AXIAL")])
    assert names(joined, ds) == ["whole"]


def test_rule_without_match_selects_every_series() -> None:
    assert names(Router([rule("any")]), dataset(Modality="US")) == ["any"]
