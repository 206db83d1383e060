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


# --- which cases count: done (scored or failed) by every model; not run is coverage --------------

CASES = [f"c{i}" for i in range(1, 9)]


def test_a_model_not_yet_run_on_some_cases_is_ranked_on_the_cases_both_ran_and_the_better_one_wins():
    # "old" ran all 8 cases; "new" ran only the first 4, and is better on each of them
    records = [record(c, "old", 0.6, avd=2.0) for c in CASES] + [record(c, "new", 0.8, avd=0.5) for c in CASES[:4]]
    board = build_leaderboard(records, ["old", "new"], {}, expected=CASES)
    assert board.ranked_cases == CASES[:4] and board.complete_cases == CASES[:4] and board.expected_cases == CASES
    assert list(board.table.index) == ["new", "old"] and board.best == "new"
    new, old = board.table.loc["new"], board.table.loc["old"]
    assert new.mean_rank == pytest.approx(1.3) and old.mean_rank == pytest.approx(1.7)  # 3 of 5 metrics tie at 1.5
    # the statistics are over the ranked cases; the 4 cases "new" has not run are coverage, not losses
    assert (new.n, new.scored, new.failed, new.not_run, new.expected) == (4, 4, 0, 4, 8)
    assert (old.n, old.scored, old.failed, old.not_run, old.expected) == (4, 8, 0, 0, 8)
    assert old.dice_mean == pytest.approx(0.6)
    row = {r["model"]: r for r in display_rows(board)}
    assert (row["new"]["scored / expected"], row["new"]["not run"], row["old"]["scored / expected"]) == ("4 / 8", 4, "8 / 8")
    text = to_markdown(board)
    assert text.startswith("## Leaderboard: 2 models, ranked on the 4 cases every model has scored or failed (c1, c2, c3, c4), of 8 expected")
    paired = board.paired.set_index("metric").loc["dice"]
    assert (paired.model, paired.against, paired.n, paired.median_diff) == ("old", "new", 4, pytest.approx(-0.2))


def test_a_case_a_model_failed_counts_against_it():
    # "flaky" is a little better on c1 and failed c2 and c3; "steady" scored all three
    records = [record(c, "steady", 0.7) for c in CASES[:3]] + [record("c1", "flaky", 0.75)]
    failed = {"flaky": {"c2": "case_prediction: out of memory", "c3": "case_prediction: out of memory"}}
    board = build_leaderboard(records, ["flaky", "steady"], failed)
    assert board.ranked_cases == ["c1", "c2", "c3"] and board.complete_cases == ["c1"]
    assert board.best == "steady"
    # Dice ranks: c1 flaky 1, steady 2; c2, c3 flaky failed -> last
    assert board.table.loc["flaky", "rank_dice"] == pytest.approx((1 + 2 + 2) / 3)
    assert (board.table.loc["flaky", "failed"], board.table.loc["flaky", "not_run"]) == (2, 0)
    # had flaky not run c2 and c3 (no failure), they would be coverage, and it would win on c1
    assert build_leaderboard(records, ["flaky", "steady"], {}).best == "flaky"


def test_a_model_that_has_done_no_case_is_listed_unranked_and_does_not_empty_the_ranking():
    board = build_leaderboard(RECORDS, ["a", "b", "fresh"], {"b": {"c4": "boom"}})
    assert board.ranked_cases == ["c1", "c2", "c3", "c4"] and board.ranked_models == ["a", "b"]
    assert list(board.table.index) == ["a", "b", "fresh"] and pd.isna(board.table.loc["fresh", "mean_rank"])
    assert (board.table.loc["fresh", "scored"], board.table.loc["fresh", "not_run"]) == (0, 4)
    assert "Not ranked yet (no case scored or failed): `fresh`." in to_markdown(board)
    assert set(board.paired.model) == {"b"}


def test_a_case_scored_after_an_earlier_failure_is_scored():
    board = build_leaderboard(RECORDS, ["a", "b"], {"a": {"c1": "an old failure"}})
    assert board.failures["a"] == {} and board.table.loc["a", "failed"] == 0


def test_the_leaderboard_says_when_its_data_are_synthetic_and_which_revision():
    synthetic = {"data_repo": "org/isles", "data_revision": "0123456789abcdef", "data_synthetic": True, "data_grid": "tiny"}
    board = build_leaderboard([{**r, **synthetic} for r in RECORDS], ["a", "b"])
    text = to_markdown(board)
    assert "**Synthetic data.**" in text
    assert "- `org/isles` @ `0123456789ab` (synthetic replica, grid tiny): 6 (case, model) results" in text  # 3 ranked cases x 2 models
    assert "Synthetic" not in to_markdown(build_leaderboard(RECORDS, ["a", "b"]))
