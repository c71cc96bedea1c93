#!/usr/bin/env python3
"""block_stamps.py - reads the block timelines a TM_BLOCK_STAMPS build writes (kernels/cuda/stamps.cuh,
TM_BLOCK_STAMPS_FILE) and prints the last decode step as the GPU ran it: per launch, when its first
block started, when its blocks' waits for the previous kernel returned, when its last block ended,
and how much of that the step saw (exposed: its last end after the previous launch's); then each
kind of launch over the step's layers (medians), and each kernel's phases (thread 0 of every block).

usage: block_stamps.py STAMPS_FILE [--step-from-end K]   (K = 0: the last whole step)
Times are microseconds. Needs numpy.
"""
import argparse
import sys

import numpy as np

KINDS = {1: "pairs", 2: "pairs+rope", 3: "attention", 4: "norm", 5: "swiglu", 6: "attention-chunks", 7: "sample-greedy",
         8: "sample-top-k", 9: "sample-selection"}
POINTS = ["start", "waited", "a", "b", "c", "d", "e", "end"]
RECORD = np.dtype([("kind", "<u4"), ("block", "<u4"), ("smid", "<u4"), ("tag", "<u4"), ("t", "<u8", (8,))])
END = 7
GAP_NS = 200_000  # blocks of one launch start within this of each other (a later wave starts as an earlier one ends)


def launches(records):
    """Split the records into launches: same kind and tag, starts within GAP_NS of the previous block's,
    and a block index seen once (launches of one tag a layer apart, as the SwiGLU's, and a launch
    repeated back to back, TM_STAMPS_TWICE, split where their blocks repeat)."""
    order = np.lexsort((records["t"][:, 0], records["tag"], records["kind"]))
    r = records[order]
    t0 = r["t"][:, 0].astype(np.int64)
    new = np.ones(len(r), dtype=bool)
    new[1:] = (r["kind"][1:] != r["kind"][:-1]) | (r["tag"][1:] != r["tag"][:-1]) | (t0[1:] - t0[:-1] > GAP_NS)
    bounds = np.flatnonzero(new).tolist() + [len(r)]
    out = []
    for i in range(len(bounds) - 1):
        group = r[bounds[i]:bounds[i + 1]]
        seen, start = set(), 0
        for j, b in enumerate(group["block"].tolist()):
            if b in seen:
                out.append(group[start:j])
                seen, start = set(), j
            seen.add(b)
        out.append(group[start:])
    out.sort(key=lambda l: int(l["t"][:, 0].min()))
    return out


def summary(l):
    t = l["t"].astype(np.int64)
    waited = t[:, 1][t[:, 1] > 0]
    return {
        "kind": KINDS.get(int(l["kind"][0]), str(int(l["kind"][0]))),
        "tag": int(l["tag"][0]),
        "blocks": len(l),
        "first_start": int(t[:, 0].min()),
        "first_waited": int(waited.min()) if len(waited) else 0,
        "median_waited": int(np.median(waited)) if len(waited) else 0,
        "last_end": int(t[:, END].max()),
        "records": l,
    }


def step_of(ls):
    """The launches of one decode step: the period after which the last launch's kind, tag and size recur."""
    last = ls[-1]
    for back in range(2, len(ls) + 1):
        c = ls[-back]
        if c["kind"] == last["kind"] and c["tag"] == last["tag"] and c["blocks"] == last["blocks"]:
            return back - 1
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="the file a TM_BLOCK_STAMPS build wrote (TM_BLOCK_STAMPS_FILE)")
    p.add_argument("--step-from-end", type=int, default=0, help="0: the last whole step, 1: the one before, ...")
    p.add_argument("--save-step", help="write the step's records (the same layout) to this file")
    args = p.parse_args()
    records = np.fromfile(args.file, dtype=RECORD)
    records = records[(records["kind"] > 0) & (records["t"][:, 0] > 0) & (records["t"][:, END] > 0)]
    if len(records) == 0:
        sys.exit(f"{args.file}: no block records (a build without TM_BLOCK_STAMPS, or no instrumented kernel ran)")
    ls = [summary(l) for l in launches(records)]
    period = step_of(ls)
    if not period:
        sys.exit(f"{args.file}: no repeating decode step among {len(ls)} launches")
    end = len(ls) - period * args.step_from_end
    step = ls[end - period:end]
    # the launch before the step (the previous step's last) gives the first launch's boundary
    before = ls[end - period - 1] if end - period - 1 >= 0 else None
    t_base = step[0]["first_start"]
    if args.save_step:
        np.concatenate([s["records"] for s in ([before] if before else []) + step]).tofile(args.save_step)
    print(f"{args.file}: {len(records)} block records, {len(ls)} launches; a step is {period} launches; step {args.step_from_end} from the end,"
          f" {(step[-1]['last_end'] - step[0]['first_start']) / 1000:.1f} us first start to last end")
    print()
    print("| # | launch | blocks | first start | first wait returns | median wait returns | last end | exposed | started before the previous ended | wait after the previous ended | last end after first wait |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    prev = before
    rows = []
    for i, s in enumerate(step):
        us = lambda ns: (ns - t_base) / 1000
        # the step's first launch follows the previous step's sampling and the host's copies: not a boundary of the step
        exposed = (s["last_end"] - prev["last_end"]) / 1000 if prev and i > 0 else float("nan")
        early = (prev["last_end"] - s["first_start"]) / 1000 if prev else float("nan")
        boundary = (s["first_waited"] - prev["last_end"]) / 1000 if prev and s["first_waited"] else float("nan")
        span = (s["last_end"] - s["first_waited"]) / 1000 if s["first_waited"] else float("nan")
        print(f"| {i} | {s['kind']} | {s['blocks']} | {us(s['first_start']):.2f} | {us(s['first_waited']):.2f} | {us(s['median_waited']):.2f} |"
              f" {us(s['last_end']):.2f} | {exposed:.2f} | {early:.2f} | {boundary:.2f} | {span:.2f} |")
        rows.append((s, exposed, early, boundary, span))
        prev = s
    # each kind of launch over the layers: the launch's place is its kind and block count
    print()
    print("| launch (kind, blocks) | a step | exposed (median) | started before the previous ended | wait after the previous ended | last end after first wait |")
    print("|---|---|---|---|---|---|")
    groups = {}
    for s, exposed, early, boundary, span in rows:
        groups.setdefault((s["kind"], s["blocks"]), []).append((exposed, early, boundary, span))
    total = 0.0
    for (kind, blocks), v in sorted(groups.items(), key=lambda kv: -np.nansum([x[0] for x in kv[1]])):
        a = np.array(v, dtype=float)
        total += np.nansum(a[:, 0])
        med = np.nanmedian(a, axis=0)
        print(f"| {kind}, {blocks} | {len(v)} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} |")
    print(f"\nexposed in all (the first launch left out): {total:.1f} us")
    phases(step)


PHASES = {
    "attention": [("start", "waited", 0, 1), ("waited", "query arrived", 1, 2), ("query", "slice arrived", 2, 3),
                  ("slice", "attended", 3, 4), ("attended", "block merged", 4, 5), ("merged", "pushed / all arrived", 5, 6),
                  ("pushed", "end", 6, 7)],
    "attention-chunks": [("start", "waited", 0, 1), ("waited", "query in shared", 1, 2), ("query", "attended", 2, 3),
                         ("attended", "block merged", 3, 4), ("merged", "end", 4, 7)],
    "norm": [("start", "waited", 0, 1), ("waited", "loads arrived", 1, 2), ("loads", "sum of squares", 2, 3), ("sum", "end", 3, 7)],
    "swiglu": [("start", "waited", 0, 1), ("waited", "loads arrived", 1, 2), ("loads", "end", 2, 7)],
    "pairs": [("start", "waited", 0, 1), ("waited", "row summed", 1, 2), ("summed", "end", 2, 7)],
    "pairs+rope": [("start", "waited", 0, 1), ("waited", "row summed", 1, 2), ("summed", "end", 2, 7)],
    "sample-greedy": [("start", "end", 0, 7)],
    "sample-top-k": [("start", "penalized", 0, 1), ("penalized", "threads' largest", 1, 2), ("largest", "bound", 2, 3),
                     ("bound", "compacted, gathered", 3, 4), ("compacted", "sorted, weighed", 4, 5), ("weighed", "drawn", 5, 6), ("drawn", "end", 6, 7)],
    "sample-selection": [("start", "penalized, grouped", 0, 1), ("grouped", "range", 1, 2), ("range", "top-p histogram", 2, 3),
                         ("top-p histogram", "top-p cut", 3, 4), ("cut", "draw histogram", 4, 5), ("draw histogram", "drawn", 5, 6),
                         ("drawn", "end", 6, 7)],
}


def phases(step):
    """Each kind's phases, thread 0 of every block of the step's launches: median / p90, us. A launch
    repeated back to back (TM_STAMPS_TWICE) is shown apart: first and second."""
    for kind, cols in PHASES.items():
        ks = [s for s in step if s["kind"] == kind]
        if not ks:
            continue
        sets = [("", ks)]
        twice = [i for i in range(1, len(step))
                 if step[i]["kind"] == kind and all(step[i][k] == step[i - 1][k] for k in ("kind", "tag", "blocks"))]
        if twice:
            second = {id(step[i]) for i in twice}
            sets = [(" (alone, or the first of two)", [s for s in ks if id(s) not in second]), (" (second of two)", [s for s in ks if id(s) in second])]
        for label, group in sets:
            if not group:
                continue
            r = np.concatenate([s["records"] for s in group])
            t = r["t"].astype(np.int64)
            subsets = [("", np.ones(len(r), dtype=bool))]
            if kind == "attention":
                subsets = [(", cluster block 0", r["block"] % 8 == 0), (", other blocks", r["block"] % 8 != 0)]
            for sub, sel in subsets:
                parts = []
                for a_name, b_name, i, j in cols:
                    ok = sel & (t[:, i] > 0) & (t[:, j] > 0)
                    if not ok.any():
                        continue
                    d = (t[ok, j] - t[ok, i]) / 1000
                    parts.append(f"{a_name}->{b_name} {np.median(d):.2f} / {np.percentile(d, 90):.2f}")
                print(f"\n{kind}{label}{sub} ({sel.sum()} blocks; median / p90 us): " + ", ".join(parts))


if __name__ == "__main__":
    main()
