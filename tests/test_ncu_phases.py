"""bench/ncu_phases.py: stall samples per phase of the hottest loop, from an ncu source-page CSV."""

import csv
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("ncu_phases", Path(__file__).parent.parent / "bench" / "ncu_phases.py")
ncu_phases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ncu_phases)

HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Warp Stall Sampling (Not-issued Samples)",
          "Instructions Executed", "stall_wait", "stall_mio", "stall_wait (Not Issued)"]


def _csv(tmp_path, rows) -> str:
    """rows: (source, samples, executed, wait, mio)"""
    path = tmp_path / "src.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Kernel Name", "k"])
        w.writerow(HEADER)
        for i, (src, samples, executed, wait, mio) in enumerate(rows):
            w.writerow([hex(16 * i), src, samples, 0, executed, wait, mio, 0])
    return str(path)


def test_splits_the_hot_loop_at_its_gemms_and_waits(tmp_path):
    loop = [("SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2", 7, 100, 1, 0),
            ("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ", 5, 100, 5, 0),
            ("FMNMX R1, R2, R3, !PT", 3, 100, 3, 0),
            ("FFMA R4, R4, UR3, -R1", 2, 100, 2, 0),
            ("MUFU.EX2 R4, R4", 11, 100, 0, 11),
            ("WARPGROUP.DEPBAR.LE gsb0, 0x0", 13, 100, 13, 0),
            ("@!P0 MUFU.EX2 R5, R5", 17, 100, 6, 11)]
    cold = [("EXIT", 1000, 10, 0, 0)]  # executed too rarely to be in the loop
    header, rows = ncu_phases.read_rows(_csv(tmp_path, loop + cold))
    got = {name: (n, samples, dict(stalls)) for name, n, samples, stalls in ncu_phases.phases(header, rows)}
    assert got["before issue"] == (1, 7, {"wait": 1, "mio": 0})
    assert got["GEMM issue"][:2] == (1, 5)
    assert got["row max"][:2] == (1, 3)
    assert got["exp2 before PV wait"] == (2, 13, {"wait": 2, "mio": 11})
    assert got["after PV wait"] == (2, 30, {"wait": 19, "mio": 11})
