"""tmbench: statistics against numpy/scipy, and the store surviving SIGKILL.

- summary statistics equal numpy's (median, mean, sample stdev, min/max, linear-interpolated
  percentiles) to 1e-12 relative; the bootstrap interval contains the median and narrows with n;
- the Mann-Whitney U p-value equals scipy.stats.mannwhitneyu (two-sided, asymptotic, continuity
  correction) to 1e-9, ties included;
- a child running a suite is killed with SIGKILL at 24 random moments; every time the database
  passes PRAGMA integrity_check, the killed run is left with status 'running' (reported as
  incomplete) and `tmbench runs` leaves it out unless --all.
"""
import json
import os
import random
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import BIN, ROOT, run


@pytest.fixture(scope="module")
def tmbench():
    path = BIN / "tmbench"
    assert path.exists(), f"{path} not built"
    return path


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", ["run", "list", "runs", "report", "diff", "export"])
def test_every_subcommand_answers_help(command, flag, tmbench):
    """`tmbench COMMAND --help` (or -h) prints that command's usage on stdout and succeeds (it is
    not an unknown option, nor a suite file named --help)."""
    result = subprocess.run([str(tmbench), command, flag], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tmbench"), result.stdout
    assert f"tmbench {command}" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("args", [["run", "SUITE", "--filter", "-h", "--dry-run"],
                                  ["run", "SUITE", "--db", "DB", "--tag", "--help", "--dry-run"],
                                  ["runs", "--db", "DB", "--branch", "-h"]])
def test_option_value_that_looks_like_help_is_a_value(args, tmbench, tmp_path):
    """A -h / --help given as an option's value is that value, not a help request: `run --filter -h`
    filters by "-h" (nothing matches: exit 2 with the reason, even under --dry-run), `run --tag --help`
    is a malformed tag, `runs --branch -h` lists the runs of branch "-h" (none)."""
    suite = ROOT / "suites" / "smoke.yaml"
    argv = [str(suite) if a == "SUITE" else str(tmp_path / "r.db") if a == "DB" else a for a in args]
    result = subprocess.run([str(tmbench), *argv], capture_output=True, text=True)
    assert not result.stdout.startswith("usage:"), result.stdout
    if args[0] == "runs":
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.strip().splitlines()) == 1, result.stdout  # the header, no run
    elif "--filter" in args:
        assert result.returncode == 2
        assert "no case matches --filter -h" in result.stderr
    else:
        assert result.returncode == 2
        assert "--tag" in result.stderr and "KEY=VALUE" in result.stderr, result.stderr


@pytest.mark.parametrize("n", [1, 2, 7, 30, 501])
def test_summary_matches_numpy(n, testtool, tmp_path):
    rng = np.random.default_rng(n)
    values = rng.lognormal(3.0, 0.4, n)
    values.astype(np.float64).tofile(tmp_path / "v.f64")
    ours = json.loads(run(testtool, "stats", tmp_path / "v.f64").stdout)
    expected = {
        "median": np.median(values), "mean": np.mean(values), "stdev": np.std(values, ddof=1) if n > 1 else 0.0,
        "min": values.min(), "max": values.max(), "p10": np.percentile(values, 10), "p90": np.percentile(values, 90),
        "p99": np.percentile(values, 99),
    }
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert ours["relative_noise"] == pytest.approx(expected["stdev"] / expected["mean"], rel=1e-12)
    assert ours["median_low"] <= ours["median"] <= ours["median_high"]
    if n >= 30:
        assert ours["median_high"] - ours["median_low"] < values.max() - values.min()


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_matches_scipy(seed, testtool, tmp_path):
    rng = np.random.default_rng(seed)
    a = rng.normal(100, 2, 5 + seed * 3)
    b = rng.normal(100 + seed * 0.7, 2, 4 + seed * 4)
    if seed % 2:  # ties
        a, b = np.round(a), np.round(b)
    a.tofile(tmp_path / "a.f64")
    b.tofile(tmp_path / "b.f64")
    ours = float(run(testtool, "mannwhitney", tmp_path / "a.f64", tmp_path / "b.f64").stdout)
    expected = scipy_stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True).pvalue
    assert ours == pytest.approx(min(expected, 1.0), rel=1e-9, abs=1e-12)


def test_store_survives_sigkill(tmbench, tmp_path):
    suite = tmp_path / "kill.yaml"
    suite.write_text(
        "name: kill\nkind: throughput\nmodel: synthetic:tiny:q8_0\nparams: {threads: 1, gen_tokens: 4, prompt_tokens: 8}\n"
        "axes: {batch: [1, 2, 3, 4]}\nwarmup: 0\nstop: {min_repetitions: 40, max_relative_noise: 0, timeout_seconds: 0.5}\n")
    db = tmp_path / "results.db"
    rng = random.Random(5)
    killed = 0
    for trial in range(24):
        child = subprocess.Popen([str(tmbench), "run", str(suite), "--db", str(db)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(rng.uniform(0.0, 1.2))
        finished = child.poll() is not None
        if not finished:
            os.kill(child.pid, signal.SIGKILL)
            killed += 1
        child.wait()
        connection = sqlite3.connect(db)
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"trial {trial}"
        row = connection.execute("SELECT id, status FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        connection.close()
        if row is None:  # killed before the run row was written
            continue
        assert row[1] == ("complete" if finished else "running"), (trial, finished, row)
        listed = run(tmbench, "runs", "--db", db).stdout
        listed_all = run(tmbench, "runs", "--db", db, "--all").stdout
        line_of = lambda text: [l for l in text.splitlines() if l.split() and l.split()[0] == str(row[0])]
        assert bool(line_of(listed)) == finished, listed
        assert line_of(listed_all) and ("incomplete" in line_of(listed_all)[0]) == (not finished)
    assert killed >= 20


def test_interrupt_marks_run_interrupted(tmbench, tmp_path):
    suite = tmp_path / "int.yaml"
    suite.write_text("name: int\nkind: throughput\nmodel: synthetic:tiny:q8_0\nparams: {threads: 1, gen_tokens: 4}\n"
                     "axes: {batch: [1, 2]}\nwarmup: 0\nstop: {min_repetitions: 100000, timeout_seconds: 30}\n")
    db = tmp_path / "int.db"
    child = subprocess.Popen([str(tmbench), "run", str(suite), "--db", str(db)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    # interrupt once the first case has stored a sample (not after a fixed sleep: on a loaded CI
    # machine 1.5 s was sometimes too short for the first repetition, and nothing was stored yet)
    deadline = time.monotonic() + 50
    stored = 0
    while time.monotonic() < deadline and child.poll() is None and not stored:
        time.sleep(0.1)
        try:
            reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            stored = reader.execute("SELECT count(*) FROM samples").fetchone()[0]
            reader.close()
        except sqlite3.OperationalError:  # not created yet, or its schema not yet written
            pass
    assert stored > 0 and child.poll() is None, "the first case stored no sample within 50 s"
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=30) == 130
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    assert connection.execute("SELECT status, message FROM cases ORDER BY id DESC LIMIT 1").fetchone() == ("failed", "interrupted")
    assert connection.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    connection.close()


def _run_tiny_throughput(tmbench, tmp_path, name, params, axes="", stop="min_repetitions: 2, timeout_seconds: 30"):
    """Run a throughput suite on the tiny synthetic model on the CPU; returns the finished process
    and the database path."""
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(f"name: {name}\nkind: throughput\nmodel: synthetic:tiny:q8_0\n"
                     f"params: {{threads: 1, device: cpu, {params}}}\n" + (f"axes: {{{axes}}}\n" if axes else "") +
                     f"warmup: 0\nstop: {{{stop}}}\n")
    db = tmp_path / f"{name}.db"
    return subprocess.run([str(tmbench), "run", str(suite), "--db", str(db)], capture_output=True, text=True), db


def test_step_events_param_is_taken_and_times_nothing_on_the_cpu(tmbench, tmp_path):
    """step_events: 1 reaches the engine (a case that takes it runs) and a backend that times no
    step stores no device_idle_us_per_step (NaN is not a sample); a value outside 0..1 is refused."""
    result, db = _run_tiny_throughput(tmbench, tmp_path, "events", "gen_tokens: 4, prompt_tokens: 8", "step_events: [0, 1]")
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(db) as connection:
        statuses = [row[0] for row in connection.execute("SELECT status FROM cases")]
        metrics = {row[0] for row in connection.execute("SELECT DISTINCT metric FROM metrics")}
    assert statuses == ["complete", "complete"]
    assert "decode_tokens_per_s" in metrics and "device_idle_us_per_step" not in metrics
    result, _ = _run_tiny_throughput(tmbench, tmp_path, "bad", "gen_tokens: 4, prompt_tokens: 8", "step_events: [2]")
    assert result.returncode != 0 and "step_events" in result.stdout + result.stderr


def test_sampling_params_are_taken_and_checked(tmbench, tmp_path):
    """A throughput case samples as its params say (top-k at a temperature, a repetition penalty,
    overlapped or not: each case runs to the end), and a value out of range is refused naming it."""
    quick = "min_repetitions: 2, min_seconds: 0, max_relative_noise: 1, timeout_seconds: 30"
    result, db = _run_tiny_throughput(tmbench, tmp_path, "sampling", "gen_tokens: 6, prompt_tokens: 8, batch: 2, temperature: 0.8, "
                                      "top_k: 40, top_p: 0.95, min_p: 0.05, penalty_last_n: 4",
                                      "overlap: [0, 1], repetition_penalty: [1, 1.3]", quick)
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(db) as connection:
        statuses = [row[0] for row in connection.execute("SELECT status FROM cases")]
    assert statuses == ["complete"] * 4
    for name, bad in (("top_p", "1.5"), ("repetition_penalty", "0"), ("temperature", "hot"), ("top_k", "-1")):
        result, _ = _run_tiny_throughput(tmbench, tmp_path, f"bad-{name}", f"gen_tokens: 2, prompt_tokens: 4, {name}: {bad}", "", quick)
        assert result.returncode != 0 and f"parameter {name} = '{bad}'" in result.stdout + result.stderr, result.stdout + result.stderr


def test_bad_database_is_refused_and_untouched(tmbench, tmp_path):
    db = tmp_path / "other.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE mine (x)")
    connection.commit()
    connection.close()
    before = db.read_bytes()
    result = subprocess.run([str(tmbench), "runs", "--db", str(db)], capture_output=True, text=True)
    assert result.returncode == 1 and "not a TensorMesh results database" in result.stderr
    assert db.read_bytes() == before
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    result = subprocess.run([str(tmbench), "runs", "--db", str(garbage)], capture_output=True, text=True)
    assert result.returncode == 1 and "garbage.db" in result.stderr


def test_run_diff_export_round_trip(tmbench, tmp_path):
    suite = tmp_path / "pair.yaml"
    suite.write_text("name: pair\nkind: throughput\nmodel: synthetic:tiny:q8_0\nparams: {threads: 1, gen_tokens: 4}\n"
                     "axes: {batch: [1, 2]}\nwarmup: 0\nstop: {min_repetitions: 5, timeout_seconds: 5}\n")
    db = tmp_path / "pair.db"
    for _ in range(2):
        run(tmbench, "run", suite, "--db", db, "--tag", "job=test")
    ids = run(tmbench, "runs", "--db", db, "--tag", "job=test", "--ids").stdout.split()
    assert ids == ["1", "2"]
    diff = subprocess.run([str(tmbench), "diff", "1", "2", "--db", str(db), "--format", "json"], capture_output=True, text=True)
    result = json.loads(diff.stdout)
    assert diff.returncode == (1 if result["slower"] else 0)
    # a case's metrics: the six timed ones and decode GB/s, and the energy per token where this host's counter is readable
    with sqlite3.connect(db) as connection:
        (per_case,) = connection.execute("SELECT count(*) FROM metrics WHERE case_id = 1").fetchone()
    assert per_case in (7, 8)
    assert len(result["rows"]) == 2 * per_case and result["same_hardware"]
    same = subprocess.run([str(tmbench), "diff", "2", "2", "--db", str(db)], capture_output=True, text=True)
    assert same.returncode == 0 and "0 SLOWER" in same.stdout and f"{2 * per_case} SAME" in same.stdout
    missing = subprocess.run([str(tmbench), "diff", "1", "no-such-branch", "--db", str(db)], capture_output=True, text=True)
    assert missing.returncode == 1 and "no-such-branch" in missing.stderr
    dump = run(tmbench, "export", "--format", "sql", "--db", db).stdout
    copy = sqlite3.connect(tmp_path / "copy.db")
    copy.executescript(dump)
    original = sqlite3.connect(db)
    for table in ("runs", "cases", "samples", "metrics"):
        assert copy.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() == \
            original.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall(), table
    csv = run(tmbench, "export", "--format", "csv", "--db", db).stdout.splitlines()
    assert len(csv) == 1 + 2 * 2 * per_case  # a row per (run, case, metric)


def test_diff_says_changed_for_a_metric_with_no_better_direction(tmbench, tmp_path):
    """A metric stored with higher_is_better = 2 (a board's power, an SM clock: descriptive) that moves
    a lot is CHANGED, never SLOWER, and the exit status stays 0; the same move of a directed metric is
    SLOWER and exits 1. Run 2 is run 1 copied in SQL with one metric's samples halved."""
    suite = tmp_path / "one.yaml"  # 8 repetitions: Mann-Whitney's p of two disjoint sets well under 0.01
    suite.write_text("name: one\nkind: throughput\nmodel: synthetic:tiny:q8_0\nparams: {threads: 1, gen_tokens: 4}\n"
                     "warmup: 0\nstop: {min_repetitions: 8, timeout_seconds: 5}\n")
    db = tmp_path / "one.db"
    run(tmbench, "run", suite, "--db", db)
    with sqlite3.connect(db) as c:
        columns = [row[1] for row in c.execute("PRAGMA table_info(runs)") if row[1] != "id"]
        c.execute(f"INSERT INTO runs (id, {', '.join(columns)}) SELECT 2, {', '.join(columns)} FROM runs WHERE id = 1")
        columns = [row[1] for row in c.execute("PRAGMA table_info(cases)") if row[1] not in ("id", "run_id")]
        c.execute(f"INSERT INTO cases (id, run_id, {', '.join(columns)}) SELECT 2, 2, {', '.join(columns)} FROM cases WHERE id = 1")
        c.execute("INSERT INTO samples SELECT 2, metric, repetition, CASE WHEN metric = 'decode_tokens_per_s' THEN value / 2 "
                  "ELSE value END FROM samples WHERE case_id = 1")
        columns = [row[1] for row in c.execute("PRAGMA table_info(metrics)") if row[1] != "case_id"]
        c.execute(f"INSERT INTO metrics (case_id, {', '.join(columns)}) SELECT 2, {', '.join(columns)} FROM metrics WHERE case_id = 1")
        c.execute("UPDATE metrics SET higher_is_better = 2 WHERE metric = 'decode_tokens_per_s'")

    def diff():
        out = subprocess.run([str(tmbench), "diff", "1", "2", "--db", str(db), "--format", "json"], capture_output=True, text=True)
        rows = {row["metric"]: row["verdict"] for row in json.loads(out.stdout)["rows"]}
        return out.returncode, rows

    status, rows = diff()
    assert rows["decode_tokens_per_s"] == "CHANGED" and status == 0
    assert all(verdict == "SAME" for metric, verdict in rows.items() if metric != "decode_tokens_per_s")
    with sqlite3.connect(db) as c:
        c.execute("UPDATE metrics SET higher_is_better = 1 WHERE metric = 'decode_tokens_per_s'")
    status, rows = diff()
    assert rows["decode_tokens_per_s"] == "SLOWER" and status == 1


def tiny_suite(path, name, device="cpu", gen_tokens=2, warmup=0, repetitions=1, timeout=30, model="synthetic:tiny:q4_k_m",
               extra="", prompt_tokens=8):
    """A one-case throughput suite on the tiny synthetic model (model=None: the caller's `extra` gives axes)."""
    path.write_text(
        f"name: {name}\nkind: throughput\n" + (f"model: {model}\n" if model else "") +
        f"params:\n  device: {device}\n  gen_tokens: {gen_tokens}\n  prompt_tokens: {prompt_tokens}\n" +
        ("  threads: 1\n" if device == "cpu" else "") + extra +
        f"warmup: {warmup}\nstop:\n  min_repetitions: {repetitions}\n  min_seconds: 0\n  max_relative_noise: 1\n"
        f"  timeout_seconds: {timeout}\n")
    return path


def test_model_axis_runs_each_model(tmbench, tmp_path):
    """A `model` axis: every case runs its own model (recorded per case), the suite needs no
    top-level model, and a kv_bytes budget is taken."""
    suite = tiny_suite(tmp_path / "models.yaml", "models", model=None,
                       extra="  kv_bytes: 16777216\naxes:\n  model: [synthetic:tiny:q4_k_m, synthetic:tiny:q8_0]\n")
    db = tmp_path / "r.db"
    run(tmbench, "run", suite, "--db", db)
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT model, status FROM cases ORDER BY id").fetchall()
    assert rows == [("synthetic:tiny:q4_k_m", "complete"), ("synthetic:tiny:q8_0", "complete")]


def run_tiny_batch(tmbench, tmp_path, name, **suite_options):
    """Run a one-case tiny-model suite; its case's status and tmbench's output."""
    suite = tiny_suite(tmp_path / f"{name}.yaml", name, **suite_options)
    db = tmp_path / f"{name}.db"
    result = subprocess.run([str(tmbench), "run", str(suite), "--db", str(db)], capture_output=True, text=True)
    with sqlite3.connect(db) as connection:
        (status,) = connection.execute("SELECT status FROM cases").fetchone()
    return status, result.stdout + result.stderr


def test_throughput_case_whose_batch_does_not_fit_fails_clearly(tmbench, tmp_path):
    """A throughput case measures its batch decoding together: with a KV budget of one sequence
    (8 pages of 4 KiB: the tiny model's 4 layers x 2 pages) the second waits for the first, and
    the case fails naming the budget instead of storing another workload's figure; with room for
    both it completes, also when every request ends with its prompt's token (gen_tokens 1)."""
    for kv_bytes, gen_tokens, expected in ((32768, 2, "failed"), (16777216, 2, "complete"), (16777216, 1, "complete")):
        status, output = run_tiny_batch(tmbench, tmp_path, f"fit{kv_bytes}-{gen_tokens}", gen_tokens=gen_tokens,
                                        extra=f"  batch: 2\n  kv_bytes: {kv_bytes}\n")
        assert status == expected, output
        if expected == "failed":
            assert "only 1 of its 2 sequences ran at once" in output
            assert "raise kv_bytes" in output


def test_throughput_case_whose_pool_runs_full_while_decoding_fails_clearly(tmbench, tmp_path):
    """Both 25-token prompts fit the tiny model's 32-page pool (4 pages a layer each), but at 33
    tokens each needs a fifth: the engine preempts one (recomputed from its prompt later), and the
    case fails saying so; with a pool for the whole generation it completes."""
    for kv_bytes, expected in ((131072, "failed"), (16777216, "complete")):
        status, output = run_tiny_batch(tmbench, tmp_path, f"full{kv_bytes}", gen_tokens=16, prompt_tokens=24,
                                        extra=f"  batch: 2\n  kv_bytes: {kv_bytes}\n")
        assert status == expected, output
        if expected == "failed":
            assert "ran full while its 2 sequences decoded: 1 preemptions" in output


def test_run_records_the_build_commit_not_the_cwd(tmbench, tmp_path):
    """The run's git columns are the source's state when tmbench was built, even when the run
    starts outside any checkout (as on a machine the binaries were carried to)."""
    suite = tiny_suite(tmp_path / "one.yaml", "one")
    db = tmp_path / "r.db"
    subprocess.run([str(tmbench), "run", str(suite), "--db", str(db)], cwd=tmp_path, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with sqlite3.connect(db) as connection:
        (commit,) = connection.execute("SELECT git_commit FROM runs").fetchone()
    assert commit == head


def _cuda_device_present():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.startswith("GPU ")
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_profile_without_a_device_says_so_and_keeps_timing(tmbench, tmp_path):
    """--profile where CUPTI cannot collect: one clear line, and the timing run completes."""
    if _cuda_device_present():
        pytest.skip("a CUDA device is present: test_profile_records_kernels_and_ranges covers --profile")
    suite = tiny_suite(tmp_path / "p.yaml", "p")
    db = tmp_path / "r.db"
    result = subprocess.run([str(tmbench), "run", str(suite), "--profile", "--db", str(db)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--profile" in result.stderr and ("no CUDA device" in result.stderr or "no CUPTI" in result.stderr)
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT status FROM cases").fetchall() == [("complete",)]
        assert connection.execute("SELECT count(*) FROM kernel_records").fetchone() == (0,)


def run_profiled_on_gpu(tmbench, tmp_path, gen_tokens, repetitions):
    """`tmbench run --profile` of the tiny model on the GPU (one warm-up); the database's path."""
    suite = tiny_suite(tmp_path / "p.yaml", "p", device="cuda", gen_tokens=gen_tokens, warmup=1, repetitions=repetitions, timeout=60)
    db = tmp_path / "r.db"
    result = subprocess.run([str(tmbench), "run", str(suite), "--profile", "--db", str(db)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return db


def test_profile_records_kernels_and_ranges(tmbench, tmp_path):
    """On a GPU: --profile stores the kernels of every repetition and the engine's NVTX ranges."""
    if not _cuda_device_present():
        pytest.skip("no CUDA device")
    db = run_profiled_on_gpu(tmbench, tmp_path, gen_tokens=4, repetitions=2)
    with sqlite3.connect(db) as connection:
        kernels = dict(connection.execute(
            "SELECT repetition, count(*) FROM kernel_records WHERE grid IS NOT NULL GROUP BY repetition").fetchall())
        names = {row[0] for row in connection.execute("SELECT name FROM kernel_records")}
        ranges = {row[0] for row in connection.execute("SELECT name FROM nvtx_ranges")}
    assert kernels.get(0, 0) > 0 and kernels.get(1, 0) == kernels.get(0, 0), kernels  # same work, same kernels
    assert any("rmsnorm" in name for name in names) and any(name.startswith("memcpy") for name in names)
    assert {"prefill step", "decode step", "sampling"} <= ranges


def test_profile_decode_step_kernels_match_the_engine(tmbench, tmp_path):
    """On a GPU: the kernels recorded inside one timed decode step are the engine's launches for
    that step: the forward pass as one CUDA graph (a single graph id) plus the sampling kernel
    launched after it, and per layer exactly one rope + KV append and one decode attention, so
    their counts equal the model's layer count (tiny: 4)."""
    if not _cuda_device_present():
        pytest.skip("no CUDA device")
    db = run_profiled_on_gpu(tmbench, tmp_path, gen_tokens=6, repetitions=1)
    with sqlite3.connect(db) as connection:
        steps = connection.execute("SELECT start_ns, end_ns FROM nvtx_ranges WHERE name = 'decode step' AND repetition = 0 "
                                   "ORDER BY start_ns").fetchall()
        assert len(steps) >= 3, steps
        start, end = steps[2]  # a step after the graph for one sequence was captured
        kernels = connection.execute("SELECT name, graph_id FROM kernel_records WHERE repetition = 0 AND grid IS NOT NULL "
                                     "AND start_ns >= ? AND end_ns <= ?", (start, end)).fetchall()
    names = [name for name, _ in kernels]
    in_graph = [(name, graph) for name, graph in kernels if graph]
    outside = [name for name, graph in kernels if not graph]
    assert len({graph for _, graph in in_graph}) == 1 and len(in_graph) > 10, kernels
    assert len(outside) == 1 and "sample" in outside[0], outside
    assert sum("rope_kv_append" in name for name in names) == 4, names
    assert sum("paged_attention" in name for name in names) == 4, names
    assert any("embed" in name for name, _ in in_graph), names


def kernels_suite(path, name, **params):
    """A one-case kernels suite (one repetition, no warm-up)."""
    body = ", ".join(f"{key}: {value}" for key, value in params.items())
    path.write_text(f"name: {name}\nkind: kernels\nparams: {{{body}}}\nwarmup: 0\n"
                    "stop: {min_repetitions: 1, min_seconds: 0, max_relative_noise: 1, timeout_seconds: 60}\n")
    return path


def counters_of(db, key):
    """{scope: value} of one counter over the kernels of the counter pass."""
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT scope, value FROM hardware_counters WHERE counter = ? AND scope LIKE 'kernel %'",
                                       (key,)).fetchall())


def test_counters_see_the_bytes_of_a_copy(tmbench, tmp_path):
    """On a GPU: --counters on a kernel copying N bytes reports DRAM bytes within 5 % of 2N for it
    (the L2 flush before it is a kernel of its own)."""
    if not _cuda_device_present():
        pytest.skip("no CUDA device")
    n = 1 << 30
    db = tmp_path / "r.db"
    result = subprocess.run([str(tmbench), "run", str(kernels_suite(tmp_path / "c.yaml", "c", op="copy_kernel", rows=n)),
                             "--counters", "--db", str(db)], capture_output=True, text=True)
    assert result.returncode == 0 and "counters:" in result.stdout, result.stdout + result.stderr
    dram = counters_of(db, "dram_bytes")
    copies = [value for scope, value in dram.items() if "copy_kernel" in scope]
    assert len(copies) == 1, dram
    assert abs(copies[0] - 2 * n) <= 0.05 * 2 * n, (copies[0], 2 * n)


def test_counters_see_the_flops_of_a_gemm(tmbench, tmp_path):
    """On a GPU: --counters on a cuBLAS f16 GEMM of 4096^3 reports tensor flops (over the pass's
    kernels) within 5 % of 2 * 4096^3."""
    if not _cuda_device_present():
        pytest.skip("no CUDA device")
    db = tmp_path / "r.db"
    result = subprocess.run([str(tmbench), "run", str(kernels_suite(tmp_path / "g.yaml", "g", op="gemm_f16", rows=4096)),
                             "--counters", "--db", str(db)], capture_output=True, text=True)
    assert result.returncode == 0 and "counters:" in result.stdout, result.stdout + result.stderr
    flops = sum(counters_of(db, "tensor_flops").values())
    expected = 2.0 * 4096 ** 3
    assert abs(flops - expected) <= 0.05 * expected, (flops, expected)


def test_counters_without_a_device_keep_timing(tmbench, tmp_path):
    """--counters where no GPU is present: one clear line, and the run still times every case."""
    if _cuda_device_present():
        pytest.skip("a CUDA device is present")
    db = tmp_path / "r.db"
    result = subprocess.run([str(tmbench), "run", str(tiny_suite(tmp_path / "t.yaml", "t")), "--counters", "--db", str(db)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--counters" in result.stderr and ("no CUDA device" in result.stderr or "no CUPTI" in result.stderr), result.stderr
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT status FROM cases").fetchall() == [("complete",)]
        assert connection.execute("SELECT count(*) FROM samples").fetchone()[0] > 0


def test_kernels_suite_without_a_device_fails_clearly(tmbench, tmp_path):
    """The kernels kind on a machine without a GPU: every case fails with the reason, the run
    is stored, and tmbench exits 1."""
    if _cuda_device_present():
        pytest.skip("a CUDA device is present")
    db = tmp_path / "k.db"
    result = subprocess.run([str(tmbench), "run", str(ROOT / "suites" / "kernels.yaml"), "--filter", "*causal=1,head_dim=256*", "--db",
                             str(db)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "needs a CUDA device" in result.stderr or "needs a CUDA build" in result.stderr
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT status FROM cases").fetchall() == [("failed",)]


def test_ncu_missing_is_reported(tmbench, tmp_path):
    """--ncu where Nsight Compute is not installed: one clear line, exit 1, nothing run."""
    import shutil
    if shutil.which("ncu") or os.access("/usr/local/cuda/bin/ncu", os.X_OK):
        pytest.skip("Nsight Compute is installed here")
    result = subprocess.run([str(tmbench), "run", str(ROOT / "suites" / "smoke.yaml"), "--ncu", "smoke/*", "--db",
                             str(tmp_path / "r.db")], capture_output=True, text=True)
    assert result.returncode == 1 and "Nsight Compute (ncu) is not installed" in result.stderr
    assert not (tmp_path / "r.db").exists() or sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT count(*) FROM runs").fetchone() == (0,)


def decode_bytes_from_the_file(path, batch, prompt_tokens, gen_tokens):
    """The bytes a decode step of the real model reads, from the GGUF itself (the `gguf` package's reader): every tensor
    but the token-embedding table, which counts when there is no output.weight (tied embeddings), plus each sequence's
    f16 keys and values over all layers at the decode steps' mean context, prompt + gen / 2 positions."""
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    weights = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight" or tied)
    def field(key):
        f = reader.fields[key]
        return int(f.parts[f.data[0]][0])
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    layers, heads = field(f"{arch}.block_count"), field(f"{arch}.attention.head_count")
    kv_heads, embd = field(f"{arch}.attention.head_count_kv"), field(f"{arch}.embedding_length")
    kv_per_position = layers * 2 * kv_heads * (embd // heads) * 2
    return weights + kv_per_position * batch * (prompt_tokens + gen_tokens / 2)


def test_roofline_counts_the_bytes_a_decode_step_reads(tmbench, tmp_path, smollm2):
    """On the real SmolLM2 file: decode GB/s is the bytes a step reads (counted here from the GGUF, independently) times
    the steps a second, decode tokens/s is stored with batch x the measured bandwidth ceiling / those bytes as its
    ceiling (the roofline), and the energy per decode token is either not stored (no readable counter) or positive."""
    batch, prompt_tokens, gen_tokens = 2, 16, 6
    suite = tmp_path / "roofline.yaml"
    suite.write_text(f"name: roofline\nkind: throughput\nmodel: {smollm2}\n"
                     f"params: {{device: cpu, threads: 1, batch: {batch}, prompt_tokens: {prompt_tokens}, gen_tokens: {gen_tokens}}}\n"
                     "warmup: 0\nstop: {min_repetitions: 2, min_seconds: 0, max_relative_noise: 1, timeout_seconds: 60}\n")
    db = tmp_path / "r.db"
    out = run(tmbench, "run", suite, "--db", db).stdout
    assert "ceiling: host memory read" in out and "roofline:" in out, out
    with sqlite3.connect(db) as connection:
        metrics = {m: (median, ceiling) for m, median, ceiling in connection.execute(
            "SELECT metric, median, ceiling FROM metrics")}
        samples = connection.execute("SELECT s.repetition, s.metric, s.value FROM samples s").fetchall()
    expected = decode_bytes_from_the_file(smollm2, batch, prompt_tokens, gen_tokens)
    rate, roofline = metrics["decode_tokens_per_s"]
    gb_per_s, ceiling = metrics["decode_gb_per_s"]
    assert rate > 0 and ceiling > 0
    # per repetition: GB/s = bytes a step x steps a second, steps = tokens / batch
    by_repetition = {}
    for repetition, metric, value in samples:
        by_repetition.setdefault(repetition, {})[metric] = value
    assert len(by_repetition) == 2
    for values in by_repetition.values():
        bytes_per_step = values["decode_gb_per_s"] * 1e9 * batch / values["decode_tokens_per_s"]
        assert bytes_per_step == pytest.approx(expected, rel=1e-9)
    assert roofline == pytest.approx(batch * ceiling * 1e9 / expected, rel=1e-9)
    assert rate < roofline * 1.5  # a step cannot stream much faster than memory (the model is 78 MB: caches help a little)
    if "decode_joules_per_token" in metrics:
        assert metrics["decode_joules_per_token"][0] > 0
