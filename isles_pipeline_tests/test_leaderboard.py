"""The leaderboard in plain Python: summaries, rank-then-aggregate with ties and missing cases,
the paired Wilcoxon comparison with the best model, failures, files at full precision."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy.stats import wilcoxon

from isles_pipeline.leaderboard import RANKED_METRICS, build_leaderboard, display_rows, to_markdown, write_leaderboard
from isles_pipeline.store import CaseStore


def record(case_id: str, model: str, dice: float, avd: float = 1.0, count: int = 0, f1: float = 1.0) -> dict:
    return {"case_id": case_id, "model": model, "dice": dice, "avd_ml": avd, "lesion_count_diff": count,
            "f1_isles22": f1, "f1_isles24": f1, "gt_ml": 2.0, "pred_ml": 2.0 + avd}


RECORDS = [
    record("c1", "a", 0.9), record("c2", "a", 0.8), record("c3", "a", 0.7), record("c4", "a", 0.6),
    record("c1", "b", 0.5), record("c2", "b", 0.8), record("c3", "b", 0.2),  # b failed on c4
]


def test_summary_ranks_and_failures():
    board = build_leaderboard(RECORDS, ["b", "a"], {"b": {"c4": "case_prediction: case c4, model b: boom"}})
    assert list(board.table.index) == ["a", "b"] and board.best == "a"
    a, b = board.table.loc["a"], board.table.loc["b"]
    assert (a.n, a.failed, b.n, b.failed) == (4, 0, 3, 1)
    assert a.dice_mean == pytest.approx(0.75) and a.dice_median == pytest.approx(0.75)
    assert a.dice_iqr == pytest.approx(0.825 - 0.675)
    # Dice ranks per case: c1 a=1 b=2; c2 tie 1.5/1.5; c3 a=1 b=2; c4 b missing -> a=1 b=2
    assert a.rank_dice == pytest.approx((1 + 1.5 + 1 + 1) / 4) and b.rank_dice == pytest.approx((2 + 1.5 + 2 + 2) / 4)
    # the other metrics are equal where both have a value; b's missing c4 ranks last
    assert a.rank_avd_ml == pytest.approx((1.5 * 3 + 1) / 4) and b.rank_avd_ml == pytest.approx((1.5 * 3 + 2) / 4)
    assert a.mean_rank == pytest.approx((a.rank_dice + 4 * a.rank_avd_ml) / 5)
    assert board.complete_cases == ["c1", "c2", "c3"]
    assert board.worst["b"] == ["c3", "c1", "c2"]


def test_paired_comparison_is_scipy_wilcoxon_on_the_cases_all_completed():
    board = build_leaderboard(RECORDS, ["a", "b"])
    dice = board.paired.set_index("metric").loc["dice"]
    diff = [0.5 - 0.9, 0.8 - 0.8, 0.2 - 0.7]
    assert (dice.model, dice.against, dice.n) == ("b", "a", 3)
    assert dice.median_diff == pytest.approx(-0.4)
    assert dice.p_value == pytest.approx(wilcoxon(diff, zero_method="wilcox").pvalue)
    assert pd.isna(board.paired.set_index("metric").loc["avd_ml"].p_value)  # every difference is zero
    assert set(board.paired.metric) == set(RANKED_METRICS)


def test_people_see_rounded_numbers_and_files_keep_every_digit(tmp_path):
    records = [record("c1", "a", 0.123456789, avd=1.23456), record("c2", "a", 0.5)]
    board = build_leaderboard(records, ["a"], {})
    row = display_rows(board)[0]
    assert row["dice mean"] == "0.312" and row["avd_ml mean"] == "1.12"
    text = to_markdown(board, {("c1", "a"): "file:///x/overlay.png"})
    assert "[c1 (Dice 0.123)](file:///x/overlay.png)" in text and "None." in text
    paths = write_leaderboard(board, CaseStore(tmp_path))
    saved = pd.read_parquet(paths["leaderboard.parquet"]).set_index("model")
    assert saved.loc["a", "dice_mean"] == (0.123456789 + 0.5) / 2
    assert "0.3117283945" in paths["leaderboard.csv"].read_text()
    assert paths["bland_altman.png"].read_bytes()[:4] == b"\x89PNG" and not list(CaseStore(tmp_path).leftovers())


def test_a_model_with_no_scored_case_is_listed_last_with_its_failures():
    board = build_leaderboard(RECORDS[:4], ["a", "z"], {"z": {"c1": "case_inputs: bad"}})
    assert list(board.table.index) == ["a", "z"] and board.table.loc["z", "n"] == 0
    assert "**z**: 1 case(s): `c1` (case_inputs: bad)" in to_markdown(board)
