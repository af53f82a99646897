"""bench.shared_weights end to end, shortened: three real workers (private, shared, guarded) of
the MobileNet example on one model store, Busy-Ms read from their answers."""

from __future__ import annotations

import json
from pathlib import Path

from bench import shared_weights


def test_shared_weights_bench_compares_a_private_and_a_mapped_copy(tmp_path: Path) -> None:
    out = tmp_path / "sw.json"
    shared_weights.main(["--quick", "--rounds", "2", "--requests", "3", "--json", str(out)])
    result = json.loads(out.read_text())
    configs = result["functions"]["mobilenet"]["configs"]
    # what is compared: the private worker has its own weights, the other two map the store's
    assert {n: c["maps_store"] for n, c in configs.items()} == {
        "private": False, "shared": True, "guard": True}
    for c in configs.values():
        assert len(c["round_medians_ms"]) == 2 and all(x > 0 for x in c["round_medians_ms"])
    assert configs["private"]["ratio_to_private_median"] == 1.0
    assert out.with_suffix(".png").stat().st_size > 0
