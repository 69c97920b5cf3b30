"""`python -m avo.tool`: the registry from a shell. A step spans commands (its state is in the run
directory), the same confinement holds, submit lands the candidate in the lineage, and mistakes
are one line with no traceback."""

import json
import subprocess
import sys

from avo.lineage import Lineage
from avo.tool import main
from tests.test_evolve import REPO, TINY


def _tool(tmp_path, capsys, *argv):
    code = main(["--config", str(TINY), "--set", f"run_dir={tmp_path / 'run'}", "--set",
                 f"archive={tmp_path / 'archive'}", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_step_over_several_commands_lands_in_the_lineage(tmp_path, capsys):
    code, out, _ = _tool(tmp_path, capsys, "read_candidate", "max_lines=20")
    assert code == 0 and "TILE_N" in out and out.splitlines()[0].startswith("    1  ")
    code, out, _ = _tool(tmp_path, capsys, "edit_candidate", "old=TILE_N = 32", "new=TILE_N = 16")
    assert code == 0 and out.startswith("edited at line")
    code, out, _ = _tool(tmp_path, capsys, "write_candidate", "text=pwned", "path=../../../escape.py")
    assert code == 1 and "refused" in json.loads(out)["error"]
    (tmp_path / "notes.txt").write_text("16 halves shared memory")
    code, out, _ = _tool(tmp_path, capsys, "write_notes", "text=@" + str(tmp_path / "notes.txt"))
    assert code == 0
    code, out, _ = _tool(tmp_path, capsys, "--json", json.dumps({"rationale": "TILE_N 32 -> 16"}), "submit")
    assert code == 0 and json.loads(out)["status"] == "screened"

    seed, step = Lineage.load(tmp_path / "archive").nodes()
    assert (step.operator, step.status, step.parents, step.extra["via"]) == ("agent", "screened", [seed.id], "cli")
    assert "+TILE_N = 16" in step.extra["diff"] and step.extra["tool_calls"] == {
        "read_candidate": 1, "edit_candidate": 1, "write_candidate": 1, "write_notes": 1, "submit": 1}
    assert [r["tool"] for r in step.extra["refused"]] == ["write_candidate"]
    assert (tmp_path / "run" / "notes" / f"{step.id}.md").read_text() == "16 halves shared memory\n"
    # the next command opens the next step (from the newest screened node) and reads the notes left
    code, out, _ = _tool(tmp_path, capsys, "read_notes")
    assert code == 0 and "16 halves shared memory" in out
    assert [n.status for n in Lineage.load(tmp_path / "archive").nodes()] == ["screened", "screened", "pending"]


def test_mistakes_are_one_line(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nowhere"), "compile"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avo.tool: ") and "not a run directory" in err and len(err.strip().splitlines()) == 1
    assert main(["--run", str(tmp_path), "no_such_tool"]) == 2
    assert "unknown tool 'no_such_tool'" in capsys.readouterr().err
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "profile config=<string>? incumbent=<boolean>?" in listed and "submit rationale=<string>\n" in listed


def test_the_cli_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "avo.tool", "--list"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "instruction_mix" in proc.stdout


def test_values_are_read_by_the_tools_schema(tmp_path, capsys):
    code, out, _ = _tool(tmp_path, capsys, "give_up", "reason=no")  # YAML would have made this False
    assert code == 0
    assert Lineage.load(tmp_path / "archive").nodes()[-1].rationale == "no"
    code, out, _ = _tool(tmp_path, capsys, "read_candidate", "start_line=2", "max_lines=1")
    assert code == 0 and out.startswith("    2  ") and "    3  " not in out
