"""tools/block_stamps.py: the block timelines of a TM_BLOCK_STAMPS build, read from a file built here
with known times (the record layout of kernels/cuda/stamps.cuh), so every printed figure is exact.
Three decode steps of one layer (norm, Q/K/V with the rope, the attention launched twice, the
output product) and an output head; the last step's launches must come out in order with their
exposed times, the repeated attention split into two launches, and a file without records must
fail with a message naming it.
"""
import re
import subprocess
import sys

import numpy as np

from conftest import ROOT

TOOL = ROOT / "tools" / "block_stamps.py"
RECORD = np.dtype([("kind", "<u4"), ("block", "<u4"), ("smid", "<u4"), ("tag", "<u4"), ("t", "<u8", (8,))])
PAIRS, ROPE, ATTENTION, NORM = 1, 2, 3, 4

# (kind, tag, blocks, first start, wait returns, last end) of one step, ns from the step's start;
# each launch's blocks start together and end together except the last block, which ends at `end`
STEP = [
    (NORM, 11, 16, 0, 900, 3000),
    (ROPE, 22, 300, 1500, 3500, 14000),
    (ATTENTION, 33, 128, 12500, 14500, 18500),
    (ATTENTION, 33, 128, 17000, 19000, 22000),  # the same launch again (TM_STAMPS_TWICE)
    (PAIRS, 44, 200, 20000, 22500, 25500),
    (PAIRS, 99, 400, 24000, 26000, 60000),      # the output head: once a step
]
STEP_NS = 1_000_000


def write(path, steps):
    records = []
    for s in range(steps):
        base = 10_000_000 + s * STEP_NS
        for kind, tag, blocks, start, waited, end in STEP:
            for b in range(blocks):
                t = [base + start, base + waited, base + waited + 100, base + waited + 200, base + waited + 300,
                     base + waited + 400, base + waited + 500, base + end - (0 if b == blocks - 1 else 50)]
                records.append((kind, b, b % 132, tag, t))
    np.array(records, dtype=RECORD).tofile(path)


def tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True)


def test_last_step_launch_by_launch(tmp_path):
    path = tmp_path / "stamps.bin"
    write(path, 3)
    result = tool(path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "a step is 6 launches" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [r[1].strip() for r in rows] == ["norm", "pairs+rope", "attention", "attention", "pairs", "pairs"]
    assert [int(r[2]) for r in rows] == [16, 300, 128, 128, 200, 400]
    # exposed: each launch's last end after the previous launch's (the first launch has none)
    exposed = [r[7].strip() for r in rows]
    assert exposed == ["nan", "11.00", "4.50", "3.50", "3.50", "34.50"]
    # the step's first launch follows the previous step's output head, which ended at 60 us
    assert [r[9].strip() for r in rows][1:] == ["0.50", "0.50", "0.50", "0.50", "0.50"]
    assert "second of two" in out and "alone, or the first of two" in out


def test_earlier_step_and_saved_records(tmp_path):
    path, saved = tmp_path / "stamps.bin", tmp_path / "step.bin"
    write(path, 3)
    result = tool(path, "--step-from-end", 1, "--save-step", saved)
    assert result.returncode == 0, result.stderr
    records = np.fromfile(saved, dtype=RECORD)
    # the step's launches and the launch before it (the previous step's output head)
    assert len(records) == sum(blocks for _, _, blocks, _, _, _ in STEP) + 400
    assert records["t"][:, 0].min() == 10_000_000 + 24000  # the first step's head started at 24 us
    assert records["t"][:, 0].max() < 10_000_000 + 2 * STEP_NS


def test_no_records(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    result = tool(path)
    assert result.returncode != 0
    assert str(path) in result.stderr and "no block records" in result.stderr
