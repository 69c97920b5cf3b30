"""Run-config types are checked key by key before anything is written."""

from pathlib import Path

import pytest

from avo.config import ConfigError, load_config
from avo.evolve import main

TINY = Path(__file__).resolve().parent.parent / "configs" / "evolve_tiny.yaml"

BAD = {
    "budget.candidates=abc": "config key budget.candidates: 'abc' is a string, expected an integer",
    "evaluation.timeout_s=ten": "config key evaluation.timeout_s: 'ten' is a string, expected a number",
    "budget=5": "config key budget: 5 is an integer, expected a section (a mapping with keys wall_hours, "
                "candidates, tokens)",
    "budget.candidates=2.5": "config key budget.candidates: 2.5 is a number, expected an integer",
    "budget.candidates=true": "config key budget.candidates: True is a boolean, expected an integer",
    "evaluation.gpus=[0, x]": "config key evaluation.gpus[1]: 'x' is a string, expected an integer",
    "endpoint.temperature=[1]": "config key endpoint.temperature: [1] is a list, expected a number",
    "endpoint.base_url=8000": "config key endpoint.base_url: 8000 is an integer, expected a string or null",
    "seed.knobs=3": "config key seed.knobs: 3 is an integer, expected a mapping",
    "random_seed=yes": "config key random_seed: True is a boolean, expected an integer",
}


@pytest.mark.parametrize("override", list(BAD))
def test_a_wrong_type_names_the_key_the_value_and_the_type(override):
    with pytest.raises(ConfigError) as exc:
        load_config(TINY, [override])
    assert str(exc.value) == BAD[override]


def test_right_types_are_kept_or_widened():
    config = load_config(TINY, ["budget.wall_hours=2", "evaluation.baselines=fa4", "evaluation.gpus=[0, 1]",
                                "endpoint.base_url=null", "evaluation.timeout_s=60"])
    assert config.budget.wall_hours == 2.0 and isinstance(config.budget.wall_hours, float)
    assert config.evaluation.baselines == ("fa4",) and config.evaluation.gpus == (0, 1)
    assert config.endpoint.base_url is None and config.evaluation.timeout_s == 60.0


def test_a_bad_type_writes_nothing(tmp_path, capsys):
    """The run dir, its config and a pending seed node are all written after validation."""
    run_dir, archive = tmp_path / "run", tmp_path / "archive"
    code = main(["--config", str(TINY), "--set", f"run_dir={run_dir}", "--set", f"archive={archive}",
                 "--set", "evaluation.timeout_s=ten"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "avo.evolve: config key evaluation.timeout_s: 'ten' is a string, expected a number\n"
    assert not run_dir.exists() and not archive.exists()
