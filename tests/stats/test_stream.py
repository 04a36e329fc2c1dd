"""Streaming: statistics of a trace read in batches keep memory at about one batch."""

from __future__ import annotations

import pyarrow as pa

from placer.core.trace import TraceReader
from tests.stats.conftest import write_synth


def test_reading_keeps_no_earlier_row_groups_alive(tmp_path):
    path, _, b = write_synth(tmp_path / "t.parquet", tokens=8000, layers=8, experts=64, top_k=4)
    r = TraceReader(path)  # row groups of 1000 tokens
    column_bytes = b.experts_TLK.nbytes  # 8000 x 8 x 4 ids of one byte
    held = []
    for batch in r.iter_batches(batch_size=1000, fields=("experts", "present")):
        held.append(pa.total_allocated_bytes())
    # Arrow's memory does not grow with the rows read (it would by the column's size if it kept them).
    assert max(held) - held[0] < column_bytes / 4, (held, column_bytes)
