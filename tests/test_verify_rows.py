"""Which query rows verification checks on a long sequence (CPU): the rows drawn over the whole
sequence must land on any one tile most of the time, where the windows seldom do."""

from __future__ import annotations

import torch

from avo.verify import scattered_rows

TILE = 128  # query rows per CTA tile of the seed at d128 (192 at d64: easier to hit)


def test_rows_are_distinct_ascending_in_range_and_seeded():
    rows = scattered_rows(32768, seed=3)
    assert rows.dtype == torch.long and rows.numel() == 512
    assert torch.all(rows[1:] > rows[:-1]) and 0 <= int(rows[0]) and int(rows[-1]) < 32768
    assert torch.equal(rows, scattered_rows(32768, seed=3))
    assert not torch.equal(rows, scattered_rows(32768, seed=4))
    assert torch.equal(scattered_rows(300, seed=1), torch.arange(300))  # short: every row


def test_rows_land_on_most_tiles_of_a_32k_sequence():
    tiles = scattered_rows(32768, seed=11) // TILE
    assert tiles.unique().numel() / (32768 // TILE) > 0.8  # 1 - e^-2 = 0.865 expected


def test_one_middle_tile_of_a_16k_sequence_is_seen_by_almost_every_check():
    # the zoo's one_middle_tile_skipped_on_long_sequences: tile 65 of 128
    first = (16384 // TILE // 2 + 1) * TILE
    seen = sum(bool(((scattered_rows(16384, seed) >= first) & (scattered_rows(16384, seed) < first + TILE)).any())
               for seed in range(200))
    assert seen / 200 > 0.93  # 1 - (1 - 1/128)^512 = 0.98 expected


def _attention_of(sq: int, causal: bool):
    from avo.reference import reference_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, sq, 2, 64, generator=gen).to(torch.bfloat16) for _ in range(3))
    out, lse = reference_attention(q, k, v, causal=causal, softmax_scale=0.125)
    return q, k, v, out.to(torch.bfloat16), lse


def test_the_scattered_rows_pass_a_right_output_and_name_the_row_of_a_wrong_tile():
    from avo.verify import check_rows

    sq = 4096
    q, k, v, out, lse = _attention_of(sq, causal=True)
    diagnosis, err, bound = check_rows(out, lse, q, k, v, True, 0.125, scattered_rows(sq, 5))
    assert diagnosis == "" and 0 < err <= bound
    wrong = out.clone()
    wrong[:, 1920:2048] = 0  # one 128-row tile of zeros, right elsewhere (the zoo's skipped tile)
    hits = scattered_rows(sq, 5)
    assert ((hits >= 1920) & (hits < 2048)).any()  # 512 of 4096 rows: this seed lands there
    diagnosis, err, bound = check_rows(wrong, lse, q, k, v, True, 0.125, scattered_rows(sq, 5))
    row = int(diagnosis.rsplit("query row ", 1)[1].split(" of ")[0])
    assert "output error" in diagnosis and err > bound and 1920 <= row < 2048 and diagnosis.endswith(f"of {sq}")
