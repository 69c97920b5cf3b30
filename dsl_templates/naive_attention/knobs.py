"""Knob space of the naive attention template: one thread per query row, K/V tiles staged in
shared memory. It exists to exercise the render -> compile -> run pipeline and as a simple,
obviously-correct reference kernel; it is far from the tensor-core path (no WGMMA)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Knobs:
    block_m: int = 128  # query rows per CTA = threads per CTA
    tile_n: int = 32  # keys staged in shared memory per step


SPACE = {"block_m": (64, 128, 256), "tile_n": (16, 32, 64)}


def default_knobs(spec) -> Knobs:
    return Knobs()
