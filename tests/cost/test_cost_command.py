"""``manifold-nas cost``: the measured per-op table of a config's or run's search space."""

from __future__ import annotations

import json

import yaml
from support import TINY_VISION

from manifold_nas.cli import main
from manifold_nas.cost.table import LUT_FILENAME


def table_rows(out: str) -> list[list[str]]:
    """The data rows of the printed per-op table."""
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| normal") or line.startswith("| reduce"):
            rows.append(cells)
    return rows


def write_config(tmp_path) -> str:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY_VISION))
    return str(cfg)


def test_cost_prints_every_candidate_op_with_a_positive_latency_and_writes_the_lut(
    tmp_path, capsys
):
    out = tmp_path / "lut"
    assert main(["cost", write_config(tmp_path), "--out", str(out), "--repeats", "3"]) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    # 2 cell types x 5 edges x 8 ops of the tiny DARTS space
    assert len(rows) == 80
    assert all(float(row[-1]) > 0 for row in rows if row[2] != "none")
    assert "device cpu" in printed and "threads" in printed and "latency_repeats 3" in printed
    lut = json.loads((out / LUT_FILENAME).read_text())
    entries = lut["entries"].values()
    assert entries and all(e["latency"]["median_ms"] >= 0 for e in entries)
    assert all("measured_at" in e and "host" in e for e in entries)


def test_a_second_cost_call_reuses_the_lut_and_measures_nothing(tmp_path, capsys):
    out = tmp_path / "lut"
    cfg = write_config(tmp_path)
    assert main(["cost", cfg, "--out", str(out), "--repeats", "2", "--no-latency"]) == 0
    first = capsys.readouterr().out
    before = (out / LUT_FILENAME).read_text()
    assert main(["cost", cfg, "--out", str(out), "--repeats", "2", "--no-latency"]) == 0
    second = capsys.readouterr().out
    assert ", 0 measured)" in second and ", 0 measured)" not in first
    assert table_rows(first) == table_rows(second)
    assert json.loads((out / LUT_FILENAME).read_text()) == json.loads(before)


def test_cost_of_a_run_directory_measures_its_derived_network(tmp_path, capsys):
    run = tmp_path / "run"
    config = dict(TINY_VISION, strategy={"name": "random", "trials": 1, "epochs": 1})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert main(["search", str(cfg), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["cost", str(run), "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert (run / LUT_FILENAME).is_file()
    derived = printed.split("derived network (the run's genotype)")[1]
    params = next(line for line in derived.splitlines() if line.startswith("| params"))
    summary = json.loads((run / "summary.json").read_text())
    assert params.split("|")[2].strip() == f"{summary['parameters']['derived']:,}"
    assert "latency: median" in derived


def test_cost_of_a_missing_target_is_one_line(tmp_path, capsys):
    assert main(["cost", str(tmp_path / "nothing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
