"""bench/sass_vs_fa4.py: opcode counts of a kernel and of its steady-state loop, and the diff."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("sass_vs_fa4", Path(__file__).parent.parent / "bench" / "sass_vs_fa4.py")
sass_vs_fa4 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sass_vs_fa4)


def _kernel(loop: list[str], tail: list[str]) -> str:
    """A prologue, a loop (backward branch to 0x0010), then an mbarrier retry block at the end that
    branches back into the loop across everything (as ptxas lays out a wait's slow path)."""
    body = ["S2R R0, SR_TID.X ;", *loop, "@P0 BRA 0x10 ;", *tail, "NANOSLEEP.SYNCS 0x20 ;", "BRA 0x20 ;"]
    return "\n".join(f"        /*{16 * i:04x}*/                   {ins}" for i, ins in enumerate(body))


def test_the_steady_loop_is_the_one_that_issues_hgmma_and_never_sleeps():
    text = _kernel(["HGMMA.64x128x16.F32.BF16 R88, gdesc[UR8], R88 ;"] * 2 + ["SHFL.BFLY PT, R1, R2, 0x2, 0x1f ;"] * 3,
                   ["STG.E [R2], R4 ;", "HGMMA.64x64x16.F32.BF16 R24, R8, gdesc[UR4], R24 ;"])
    whole, loop = sass_vs_fa4.opcode_counts(text)
    assert loop == {"HGMMA": 2, "SHFL": 3, "BRA": 1}  # not the retry span from 0x20 to the end
    assert whole["HGMMA"] == 3 and whole["NANOSLEEP"] == 1 and whole["BRA"] == 2


def test_the_diff_lists_what_differs_largest_loop_gap_first():
    hgmma, isetp = "HGMMA.64x128x16 R8, gdesc[UR8], R8 ;", "ISETP.GE.AND P1, PT, R1, R2, PT ;"
    ffma = "FFMA R1, R2, R3, R4 ;"
    ours = sass_vs_fa4.opcode_counts(_kernel([hgmma] * 4 + [isetp] * 5 + [ffma] * 10, ["CS2R R4, SRZ ;"] * 16))
    fa4 = sass_vs_fa4.opcode_counts(_kernel([hgmma] * 4 + [isetp] + [ffma] * 10 + ["R2P PR, R3, 0x7f ;"] * 2, []))
    rows = sass_vs_fa4.diff_rows(ours, fa4)
    assert rows[0] == ("ISETP", 5, 1, 5, 1)
    assert ("CS2R", 0, 0, 16, 0) in rows and ("R2P", 0, 2, 0, 2) in rows
    assert all(r[0] not in ("FFMA", "HGMMA") for r in rows)  # equal on both sides


def test_a_loop_that_keeps_its_wait_slow_path_inside_is_still_the_steady_loop():
    body = ["HGMMA.64x80x16.F32.BF16 R24, gdesc[UR4], R24 ;", "NANOSLEEP.SYNCS 0x20 ;", "MUFU.EX2 R1, R1 ;"]
    whole, loop = sass_vs_fa4.opcode_counts(_kernel(body, []))
    assert loop["HGMMA"] == 1 and loop["MUFU"] == 1 and loop["NANOSLEEP"] == 1
