"""The batch report: exact summary numbers, every expected case accounted for, files written."""

from __future__ import annotations

import io
import math
import struct
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from isles_pipeline.metrics import HEADLINE_KEYS
from isles_pipeline.report import Report, build_report, markdown_table, summarise, worst_by_dice, write_report
from isles_pipeline.store import CaseStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = {"metrics.parquet", "metrics.csv", "summary.md", "dice_per_case.png", "volume_pred_vs_true.png"}


def record(case_id: str, dice: float, gt_ml: float, pred_ml: float, **extra: object) -> dict[str, object]:
    """A per-case record shaped like ``{"case_id": ..., **CaseScores.as_dict(), ...extras}``."""
    return {
        "case_id": case_id,
        "dice": dice,
        "avd_ml": abs(gt_ml - pred_ml),
        "lesion_count_diff": 1 if dice < 1 else 0,
        "f1_isles22": dice,
        "f1_isles24": dice / 2,
        "gt_ml": gt_ml,
        "pred_ml": pred_ml,
        **extra,
    }


# Dice values chosen so that every summary number is an exact binary fraction.
RECORDS = [
    record("case-d", 1.0, 8.0, 8.0, segmenter="demo", seconds=2.0),
    record("case-b", 0.5, 2.0, 1.0, segmenter="demo", seconds=1.0),
    record("case-a", 0.75, 4.0, 6.0, segmenter="demo", seconds=4.0),
    record("case-c", 0.25, 16.0, 0.5, segmenter="demo", seconds=1.0),
]
EXPECTED = ["case-a", "case-b", "case-c", "case-d", "case-e", "case-f", "case-g"]
FAILURES = {"case-f": "CUDA out of memory | retry\nwith a smaller batch", "case-g": "NiftiError: not a NIfTI image"}


@pytest.fixture
def report() -> Report:
    return build_report(RECORDS, EXPECTED, FAILURES)


def test_cases_are_one_row_per_scored_case_sorted_by_id(report: Report):
    assert report.cases["case_id"].tolist() == ["case-a", "case-b", "case-c", "case-d"]
    assert list(report.cases.columns) == ["case_id", *HEADLINE_KEYS, "segmenter", "seconds"]
    assert report.cases["dice"].tolist() == [0.75, 0.5, 0.25, 1.0]


def test_summary_numbers_are_exact(report: Report):
    dice = report.summary.loc["dice"]
    assert dice["n"] == 4
    assert (dice["mean"], dice["median"], dice["min"], dice["max"]) == (0.625, 0.625, 0.25, 1.0)
    # numpy's linear quantiles on [0.25, 0.5, 0.75, 1.0]: positions 0.75 and 2.25.
    assert (dice["q1"], dice["q3"], dice["iqr"]) == (0.4375, 0.8125, 0.375)
    assert dice["std"] == pytest.approx(math.sqrt(0.3125 / 3), rel=1e-12)  # sample std (n - 1)
    seconds = report.summary.loc["seconds"]
    assert (seconds["n"], seconds["mean"], seconds["median"], seconds["min"], seconds["max"]) == (4, 2.0, 1.5, 1.0, 4.0)
    assert list(report.summary.index) == [*HEADLINE_KEYS, "seconds"]
    assert list(report.summary.columns) == ["n", "mean", "std", "median", "q1", "q3", "iqr", "min", "max"]


def test_summary_skips_missing_values_and_counts_them_out():
    cases = pd.DataFrame({"case_id": ["a", "b", "c"], "dice": [0.5, np.nan, 1.0]})
    summary = summarise(cases)
    assert summary.loc["dice", "n"] == 2
    assert summary.loc["dice", "mean"] == 0.75


def test_worst_cases_by_dice_with_ties_by_case_id():
    cases = pd.DataFrame({"case_id": ["z", "y", "x", "w"], "dice": [0.5, 0.1, 0.5, 0.9]})
    assert worst_by_dice(cases, 3) == ["y", "x", "z"]


def test_missing_failed_and_unexpected_cases_are_listed():
    report = build_report(RECORDS + [record("case-zz", 0.5, 1.0, 1.0)], EXPECTED, FAILURES)
    assert report.missing == ["case-e"]
    assert report.failed == FAILURES
    assert report.unexpected == ["case-zz"]
    assert (report.expected_count, report.scored_count) == (7, 5)


def test_markdown_lists_counts_worst_failed_and_missing(report: Report):
    text = report.to_markdown()
    assert ("- Expected cases: 7: case-a, case-b, case-c, case-d, case-e, case-f, case-g\n- Scored: 4\n- Failed: 2\n"
            "- Missing (neither scored nor failed): 1") in text
    assert "## Missing cases (1)\n\n- `case-e`" in text
    assert "- `case-f`: CUDA out of memory \\| retry with a smaller batch" in text
    assert "- `case-g`: NiftiError: not a NIfTI image" in text
    assert "| dice | 4 | 0.625 | 0.323 | 0.625 | 0.438 | 0.812 | 0.375 | 0.250 | 1.000 |" in text
    worst = text.split("## Worst 4 cases by Dice\n\n")[1]
    assert [line.split(" | ")[0] for line in worst.splitlines()[2:6]] == ["| case-c", "| case-b", "| case-a", "| case-d"]


def test_the_counts_say_which_cases_were_expected_and_which_data_were_scored():
    tiny = {"data_repo": "org/isles", "data_revision": "aaaaaaaaaaaaaaaa", "data_synthetic": True, "data_grid": "tiny"}
    demo = {**tiny, "data_revision": "bbbbbbbbbbbbbbbb", "data_grid": "demo"}
    records = [record("sub-stroke0001", 0.5, 1.0, 1.0, **tiny), record("sub-stroke0002", 0.5, 1.0, 1.0, **tiny),
               record("sub-stroke0003", 0.5, 1.0, 1.0, **demo)]
    expected = ["sub-stroke0001", "sub-stroke0002", "sub-stroke0003", "sub-stroke0004", "sub-stroke0009"]
    text = build_report(records, expected, {"sub-stroke0009": "case_inputs: no shard"}, expected_from="cases run in this instance").to_markdown()
    assert "- Expected cases: 5: sub-stroke0001 to sub-stroke0004, sub-stroke0009 (cases run in this instance)\n" in text
    assert "**Synthetic data.**" in text
    assert ("- Data: **2 different sources** (the scores do not all come from the same data):\n"
            "  - `org/isles` @ `aaaaaaaaaaaa` (synthetic replica, grid tiny): 2 scored\n"
            "  - `org/isles` @ `bbbbbbbbbbbb` (synthetic replica, grid demo): 1 scored") in text
    one = build_report(records[:2], expected[:2], {}).to_markdown()
    assert "- Data: `org/isles` @ `aaaaaaaaaaaa` (synthetic replica, grid tiny): 2 scored" in one
    real = {**tiny, "data_synthetic": False, "data_grid": None}
    assert "Synthetic" not in build_report([record("sub-stroke0001", 0.5, 1.0, 1.0, **real)], expected[:1], {}).to_markdown()


def test_markdown_table_formats_and_aligns():
    table = markdown_table(["name", "value"], [["a|b", 0.123456], ["c", float("nan")]])
    assert table == "| name | value |\n|---|---:|\n| a\\|b | 0.1235 |\n| c | n/a |"


def test_empty_records_give_a_report_that_says_so():
    report = build_report([], ["case-a", "case-b"], {"case-b": "timeout"})
    assert report.scored_count == 0
    assert report.cases.empty and "dice" in report.cases.columns
    assert report.summary.loc["dice", "n"] == 0 and math.isnan(report.summary.loc["dice", "mean"])
    assert report.worst_cases == []
    text = report.to_markdown()
    assert "**No case is scored.**" in text
    assert "- `case-a`" in text and "- `case-b`: timeout" in text


def test_records_must_name_their_case_once():
    with pytest.raises(ValueError, match="no 'case_id'"):
        build_report([{"dice": 1.0}], [], {})
    with pytest.raises(ValueError, match=r"more than once: \['case-a'\]"):
        build_report([record("case-a", 1.0, 1.0, 1.0), record("case-a", 0.5, 1.0, 1.0)], ["case-a"], {})


# --- files -------------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_written(store: CaseStore, paths: dict, report: Report) -> None:
    assert set(paths) == REPORT_FILES
    assert all(p.parent == store.path("report") for p in paths.values())
    parquet = pd.read_parquet(io.BytesIO(paths["metrics.parquet"].read_bytes()))
    pd.testing.assert_frame_equal(parquet, report.cases)
    csv = pd.read_csv(io.BytesIO(paths["metrics.csv"].read_bytes()))
    assert csv["case_id"].tolist() == report.cases["case_id"].tolist()
    assert paths["summary.md"].read_text() == report.to_markdown()
    for name in ("dice_per_case.png", "volume_pred_vs_true.png"):
        data = paths[name].read_bytes()
        width, height = png_size(data)
        assert 300 <= width <= 4000 and 300 <= height <= 4000, (name, width, height)
        assert imread(io.BytesIO(data), format="png").shape[:2] == (height, width)
    assert list(store.leftovers()) == []


def test_write_report_to_a_local_folder(tmp_path: Path, report: Report):
    store = CaseStore(tmp_path)
    paths = write_report(report, store)
    assert_written(store, paths, report)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(REPORT_FILES)


def test_write_report_to_memory_storage(report: Report):
    store = CaseStore(f"memory://report-test-{uuid.uuid4().hex}")
    assert_written(store, write_report(report, store), report)


def test_write_report_with_no_scored_case(tmp_path: Path):
    report = build_report([], ["case-a"], {})
    store = CaseStore(tmp_path)
    paths = write_report(report, store, area="empty")
    assert paths["summary.md"] == store.path("empty", "summary.md")
    assert "**No case is scored.**" in paths["summary.md"].read_text()
    assert png_size(paths["dice_per_case.png"].read_bytes())[0] >= 300
    assert pd.read_parquet(paths["metrics.parquet"].path).empty


def test_dice_plot_grows_with_the_number_of_cases(tmp_path: Path):
    many = [record(f"sub-stroke{i:04d}", (i % 10) / 10, float(i), float(i) + 1) for i in range(60)]

    def dice_plot_height(records: list[dict[str, object]], folder: Path) -> int:
        paths = write_report(build_report(records, [], {}), CaseStore(folder))
        return png_size(paths["dice_per_case.png"].read_bytes())[1]

    assert dice_plot_height(many, tmp_path / "many") > 2 * dice_plot_height(RECORDS, tmp_path / "few")
