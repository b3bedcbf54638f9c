"""`python -m benchmarks.moe_dispatch` runs end to end on a small prepared corpus and prints every row (a smoke
test of the command: it times nothing that a test checks)."""

import re

from benchmarks.moe_dispatch import main
from nanogpt_lib.prepare import files_source, prepare


def test_the_benchmark_prints_every_row_and_the_dispatches_agree(tmp_path, bundled_tokenizer, capsys):
    prepare(files_source([]), tmp_path / "tokens", bundled_tokenizer, progress=False)
    main(["--data", str(tmp_path / "tokens"), "--train-steps", "1", "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    diffs = [float(v) for v in re.findall(r"max abs diff ([0-9.e+-]+)", out)]
    assert len(diffs) == 3 and max(diffs) < 1e-5  # grouped vs loop, for each MoE
    for name in ("MoE 8x2", "MoE 8x2, capacity 1.25", "MoE 64x8 fine-grained"):
        for dispatch in ("grouped", "vectorised", "loop"):
            assert f"| {name} | {dispatch} |" in out
        assert f"| {name} | MoE layer |" in out
    row = r"\| MoE 8x2 \| grouped \| [0-9.]+ \| [0-9.]+ \| [0-9,]+ \| [0-9.]+x \| <= 1.10x (met|not met) \|"
    assert re.search(row, out)
