"""bench/sass_waits.py: the softmax instructions between the two WGMMA waits of a loop."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("sass_waits", Path(__file__).parent.parent / "bench" / "sass_waits.py")
sass_waits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sass_waits)


def _loop(between: list[str], after: list[str], hgmma: int = 16) -> str:
    body = ["HGMMA.64x128x16.F32.BF16 R88, gdesc[UR8], R88 ;"] * hgmma
    body += ["WARPGROUP.DEPBAR.LE gsb0, 0x1 ;", *between, "WARPGROUP.DEPBAR.LE gsb0, 0x0 ;", *after]
    lines = [f"        /*{16 * i:04x}*/                   {ins}" for i, ins in enumerate(body)]
    lines.append(f"        /*{16 * len(body):04x}*/                   @P0 BRA 0x0 ;")
    return "\n".join(lines)


def test_counts_the_softmax_on_each_side_of_the_pv_wait():
    text = _loop(["FMNMX R1, R2, R3, !PT ;"] * 3 + ["FFMA R4, R4, UR3, -R1 ;"] * 2,
                 ["MUFU.EX2 R4, R4 ;"] * 2 + ["F2FP.BF16.F32.PACK_AB R5, R4, R4 ;"])
    (row,) = sass_waits.loops_between_waits(text)
    assert row["between_waits"] == {"FFMA": 2, "FMNMX": 3}
    assert row["after_pv_wait"] == {"MUFU": 2, "F2FP": 1}


def test_a_loop_without_the_two_gemms_is_not_reported():
    assert sass_waits.loops_between_waits(_loop(["FMNMX R1, R2, R3, !PT ;"], [], hgmma=8)) == []
