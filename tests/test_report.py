"""``deepfakemae report``: tables from hand-written results_test.json files in run_plan's layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deepfakemae.cli import main
from deepfakemae.plans import TABLES_DIR, PlanError, load_plan, write_plan_record
from deepfakemae.report import (
    build_table,
    find_table_runs,
    load_paper_results,
    plan_for,
    render_markdown,
)


def _results(path: Path, values: dict) -> None:
    """Write a detector results_test.json: {test set: {metric: value in [0, 1]}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


@pytest.fixture
def table4_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _results(root / "table4/ratio_25/detector/results_test.json",
             {"celebdf": {"fused/auc": 0.8534, "F/auc": 0.5, "num_videos": 10},
              "wilddeepfake": {"fused/auc": 0.79949}, "dfdc": {"fused/auc": float("nan")}})
    _results(root / "table4/ratio_75/detector/results_test.json",
             {"celebdf": {"fused/auc": 0.84}, "wilddeepfake": {"fused/auc": 0.8012},
              "dfdc": {"fused/auc": 0.7371}})
    return root


def test_two_variant_dirs_give_the_table(table4_runs, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["report", str(table4_runs / "table4/ratio_25"), str(table4_runs / "table4/ratio_75"),
                 "--output", str(out_dir)]) == 0
    md = capsys.readouterr().out
    expected = [
        "| Dataset | 25% | 50% | 75% |",
        "|---|---:|---:|---:|",
        "| Celeb-DF (paper) | 85.1 | 86.3 | 84.6 |",
        "| **Celeb-DF (ours)** | 85.3 | — | 84.0 |",
        "| Δ Celeb-DF (ours − paper) | +0.2 | — | -0.6 |",
        "| WildDeepfake (paper) | 80.6 | 81.8 | 79.9 |",
        "| **WildDeepfake (ours)** | 79.9 | — | 80.1 |",
        "| Δ WildDeepfake (ours − paper) | -0.7 | — | +0.2 |",
        "| DFDC (paper) | 74.4 | 75.2 | 73.7 |",
        "| **DFDC (ours)** | — | — | 73.7 |",  # NaN AUC and the unrun 50 % show as missing
        "| Δ DFDC (ours − paper) | — | — | +0.0 |",
    ]
    lines = md.splitlines()
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
    assert "video level" in md
    assert (out_dir / "table4.md").read_text() == md.rstrip("\n") + "\n"
    with (out_dir / "table4.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    row = next(r for r in rows if r["row"] == "Celeb-DF" and r["column"] == "75%")
    assert (row["ours"], row["paper"], row["diff"]) == ("84.0", "84.6", "-0.6")
    assert row["result_file"].endswith("table4/ratio_75/detector/results_test.json")
    assert len(rows) == 9


def test_table_dir_reads_reused_runs(table4_runs):
    # ratio_50 is Table 1's run: given the table's run dir, its cells come from table1/main
    _results(table4_runs / "table1/main/detector/results_test.json",
             {"celebdf": {"fused/auc": 0.861}, "wilddeepfake": {"fused/auc": 0.82},
              "dfdc": {"fused/auc": 0.75}})
    (runs,) = find_table_runs([table4_runs / "table4"])
    report = build_table(load_plan(TABLES_DIR / "table4.yaml"), runs.run_root, runs.variants)
    ours = [r for r in report.blocks[0].rows if r.kind == "ours"]
    assert [r.values for r in ours] == [[85.3, 86.1, 84.0], [79.9, 82.0, 80.1], [None, 75.0, 73.7]]
    diffs = [r.values for r in report.blocks[0].rows if r.kind == "diff"]
    assert diffs[0] == [0.2, -0.2, -0.6]


def test_table6_branch_columns_and_table1_baselines(tmp_path):
    root = tmp_path / "runs"
    _results(root / "table1/main/detector/results_test.json",
             {s: {"fused/auc": 0.9, "F/auc": 0.8, "M/auc": 0.7} for s in ("celebdf", "wilddeepfake")})
    _results(root / "table6/wo_meta/detector/results_test.json", {"celebdf": {"fused/auc": 0.85}})
    _results(root / "table6/unmasked_target/detector/results_test.json",
             {"celebdf": {"fused/auc": 0.88, "M/auc": 0.75}})
    (root / "table6").mkdir(exist_ok=True)
    report = build_table(load_plan(TABLES_DIR / "table6.yaml"), root)
    md = render_markdown(report)
    assert ("| Dataset | F branch | M branch | w/o meta | Two branches | M branch (unmasked target) "
            "| Two branches (unmasked target) | Stage 1 from scratch |") in md
    assert "| **Celeb-DF (ours)** | 80.0 | 70.0 | 85.0 | 90.0 | 75.0 | 88.0 | — |" in md
    # the ablation columns are ours only: the paper has no such cells (*), so no Δ
    assert "| Celeb-DF (paper) | 78.3 | 77.8 | 84.3 | 86.3 | * | * | * |" in md
    assert "| Δ Celeb-DF (ours − paper) | +1.7 | -7.8 | +0.7 | +3.7 | — | — | — |" in md
    assert "| **DFDC (ours)** | — | — | — | — | — | — | — |" in md

    table1 = render_markdown(build_table(load_plan(TABLES_DIR / "table1.yaml"), root))
    assert "| Method | Celeb-DF | WildDeepfake | DFDC | Avg |" in table1
    assert "| HCIL [14] | 79.0 | * | 69.2 | * |" in table1  # the paper's * stays *
    assert "| **DeepfakeMAE (ours)** | 90.0 | 90.0 | — | — |" in table1  # Avg needs every column
    assert "| DeepfakeMAE (paper) | 86.3 | 81.8 | 75.2 | 81.1 |" in table1


def test_table2_blocks_average(tmp_path):
    root = tmp_path / "runs"
    _results(root / "table2/DF/detector/results_test.json",
             {"F2F": {"fused/auc": 0.9}, "FS": {"fused/auc": 0.8}, "NT": {"fused/auc": 0.7}})
    md = render_markdown(build_table(load_plan(TABLES_DIR / "table2.yaml"), root))
    assert "**Train DF**" in md and "**Train NT**" in md
    assert "| **DeepfakeMAE (ours)** | 90.0 | 80.0 | 70.0 | 80.0 |" in md
    assert "| Δ DeepfakeMAE (ours − paper) | +3.4 | +2.8 | +0.6 | +2.3 |" in md
    assert "| RECCE [2] | 70.7 | 74.3 | 67.3 | 70.8 |" in md


def test_pseudo_fake_rows_sit_beside_the_paper_and_sbi(tmp_path):
    root = tmp_path / "runs"
    for variant, auc in (("main", 0.9), ("pseudo", 0.8), ("pseudo_both", 0.85)):
        _results(root / f"table1/{variant}/detector/results_test.json",
                 {s: {"fused/auc": auc} for s in ("celebdf", "wilddeepfake", "dfdc")})
    table1 = render_markdown(build_table(load_plan(TABLES_DIR / "table1.yaml"), root))
    assert "| DeepfakeMAE (paper) | 86.3 | 81.8 | 75.2 | 81.1 |" in table1
    assert "| **DeepfakeMAE (ours)** | 90.0 | 90.0 | 90.0 | 90.0 |" in table1
    assert "| **DeepfakeMAE, pseudo-fakes only (ours)** | 80.0 | 80.0 | 80.0 | 80.0 |" in table1
    assert "| **DeepfakeMAE + pseudo-fakes (ours)** | 85.0 | 85.0 | 85.0 | 85.0 |" in table1
    assert "pseudo-fakes only (paper)" not in table1  # no published counterpart, no Δ row
    assert "| SBI [Shiohara & Yamasaki, CVPR 2022], published | 93.2 | * | 72.4 | * |" in table1
    assert "pseudo" not in load_paper_results()["table1"]["blocks"][0]["rows"]

    _results(root / "table2/pseudo/detector/results_test.json",
             {s: {"fused/auc": 0.7} for s in ("DF", "F2F", "FS", "NT")})
    _results(root / "table2/NT_both/detector/results_test.json",
             {s: {"fused/auc": 0.6} for s in ("DF", "F2F", "FS")})
    table2 = render_markdown(build_table(load_plan(TABLES_DIR / "table2.yaml"), root))
    assert table2.count("| **DeepfakeMAE, pseudo-fakes only (ours)** | 70.0 | 70.0 | 70.0 | 70.0 |") == 4
    assert table2.count("| **DeepfakeMAE + pseudo-fakes (ours)** | 60.0 | 60.0 | 60.0 | 60.0 |") == 1


def test_demo_runs_use_their_plan_record(tmp_path):
    root = tmp_path / "runs"
    write_plan_record(load_plan(TABLES_DIR / "table1.yaml", demo=True), root)
    _results(root / "table1/main/detector/results_test.json", {"SelfBlend": {"fused/auc": 0.625}})
    (runs,) = find_table_runs([root])
    report = build_table(plan_for(runs), runs.run_root)
    md = render_markdown(report)
    assert md.startswith("## Demo: Table 1.")
    assert "| Method | unseen SelfBlend | Avg |" in md
    assert "| **DeepfakeMAE (ours)** | 62.5 | 62.5 |" in md
    assert "(paper)" not in md and "FWA" not in md


def test_paper_results_cover_every_table():
    paper = load_paper_results()
    for i in range(1, 7):
        for block in paper[f"table{i}"]["blocks"]:
            assert all(len(v) == len(block["columns"]) for v in block["rows"].values())
    assert paper["table1"]["blocks"][0]["rows"]["DeepfakeMAE"] == [86.3, 81.8, 75.2, 81.1]
    assert paper["table1"]["blocks"][0]["rows"]["Chen et al. [4]"] == [79.7, None, None, None]


def test_unknown_directory_is_a_clear_error(tmp_path):
    (tmp_path / "misc").mkdir()
    with pytest.raises(PlanError, match="pass --table N"):
        find_table_runs([tmp_path / "misc"])
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_report_on_the_demo_runs_shows_every_test_set(tmp_path, monkeypatch, capsys):
    from deepfakemae.commands.demo_plan import PLAN

    monkeypatch.chdir(tmp_path)
    write_plan_record(load_plan(PLAN, demo=True), "runs")
    results = tmp_path / "runs" / "demo" / "main" / "detector" / "results_test.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({
        "EyesSwap": {"fused/auc": 0.9, "F/auc": 0.8, "M/auc": 0.7, "num_videos": 6.0},
        "LipsSwap": {"fused/auc": 0.6, "F/auc": 0.5, "M/auc": 0.65, "num_videos": 6.0}}))
    assert main(["report", "runs/demo"]) == 0
    out = capsys.readouterr().out
    assert "| test set | fused | F | M |" in out
    assert "EyesSwap (ours)** | 90.0 | 80.0 | 70.0 |" in out and "LipsSwap" in out
    assert "`deepfakemae demo`" in out and "run demo" not in out
    assert "Demo: Demo" not in out
