"""The benchmark report: what BENCHMARKS.md quotes must be computed right from the raw numbers."""

import pytest

from avo.bench import _resolve, format_report
from avo.lineage import Candidate, Lineage, LineageError


def _report(compare=False):
    report = {"device": "NVIDIA H200", "date": "2026-11-22T00:00:00+00:00", "torch": "2.11", "cutlass_dsl": "4.8.1",
              "scores": {"a": 600.0, "b": 400.0}, "baselines": {"fa4": {"a": 650.0, "b": 500.0}, "cudnn": {"a": 600.0}},
              "geomean": {"avo": (600 * 400) ** 0.5, "fa4": (650 * 500) ** 0.5}, "compile_seconds": {"x": 2.0},
              "kernel": "v0002"}
    if compare:
        report["compare"] = {"kernel": "v0000", "scores": {"a": 500.0, "b": 400.0}, "ratio": 1.0954,
                             "ratio_ci": [1.0911, 1.0998], "pairs": 64, "excluded": 2}
        report["geomean"]["compare"] = (500 * 400) ** 0.5
    return report


def test_report_rows_and_ratios():
    text = format_report(_report())
    lines = text.splitlines()
    row_a = next(line for line in lines if line.startswith("a "))
    assert row_a.split()[1:] == ["600.0", "650.0", "600.0", "0.923", "1.000"]
    geo = next(line for line in lines if line.startswith("geomean"))
    assert geo.split()[1:] == ["489.9", "570.1", "-", "0.859", "-"]  # cuDNN missed a config: no geomean


def test_report_with_a_kernel_compared_in_the_same_run():
    text = format_report(_report(compare=True))
    row_b = next(line for line in text.splitlines() if line.startswith("b "))
    assert row_b.split()[1:] == ["400.0", "400.0", "500.0", "-", "1.000", "0.800", "-"]
    assert ("v0002 / v0000 in the same run (paired, speed): 1.0954x [1.0911, 1.0998] 95% CI, 64 pairs, "
            "2 excluded") in text


def test_shaped_inputs_are_named_in_the_report_and_unknown_ones_refused(capsys):
    from avo.bench import main

    first = format_report(_report()).splitlines()[0]
    assert first == "NVIDIA H200, 2026-11-22T00:00:00+00:00, torch 2.11, cutlass-dsl 4.8.1"
    shaped = {**_report(), "inputs": "sink"}
    assert format_report(shaped).splitlines()[0].endswith("cutlass-dsl 4.8.1, sink logits")
    crossed = {**_report(), "crossover": True}
    assert format_report(crossed).splitlines()[0].endswith("4.8.1, buffers crossed over every other round")
    assert main(["--kernel", "best", "--crossover"]) == 2  # without --compare: nothing to cross with
    assert "it needs --compare" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--inputs", "spiky"])
    assert "invalid choice: 'spiky'" in capsys.readouterr().err


def test_resolve_best_and_errors(tmp_path):
    lineage = Lineage.load(tmp_path)
    with pytest.raises(LineageError, match="no committed kernel"):
        _resolve("best", lineage)
    lineage.add(Candidate(id="v0000", status="committed"), source_text="KERNEL = 1\n")
    lineage.add(Candidate(id="v0001", parents=["v0000"], status="committed"), source_text="KERNEL = 2\n")
    assert _resolve("best", lineage) == (tmp_path / "sources" / "v0001.py", "v0001")
    # with suites: the suite's newest committed node, else the archive's newest
    lineage.add(Candidate(id="v0002", parents=["v0001"], status="committed", suite="paper"), source_text="K = 3\n")
    lineage.add(Candidate(id="v0003", parents=["v0001"], status="committed", suite="hdim64"), source_text="K = 4\n")
    lineage.add(Candidate(id="v0004", parents=["v0002"], status="rejected", suite="paper"), source_text="K = 5\n")
    assert _resolve("best", lineage, "paper")[1] == "v0002"
    assert _resolve("best", lineage, "hdim64")[1] == "v0003"
    assert _resolve("best", lineage, "gqa")[1] == "v0003"
    assert _resolve("flash_fwd_sm90", lineage)[1] == "flash_fwd_sm90"
    with pytest.raises(FileNotFoundError, match="neither a kernel file"):
        _resolve("v9999", lineage)
