"""tmbench report: a golden-file test of the markdown for a fixed database, and charts when
gnuplot exists. The database is built here from results/schema.sql with fixed runs, cases,
samples and metrics, so the expected guide (tests/golden/PERFORMANCE.md) is exact; rows without
data must say "not measured". Set TM_UPDATE_GOLDEN=1 to rewrite the golden file after a reviewed
change of the report's format.
"""
import os
import shutil
import sqlite3

from conftest import BIN, ROOT, run

GOLDEN = ROOT / "tests" / "golden" / "PERFORMANCE.md"


def fixed_database(path):
    connection = sqlite3.connect(path)
    connection.executescript((ROOT / "results" / "schema.sql").read_text())
    connection.execute(
        "INSERT INTO runs (id, status, started_at, finished_at, suite_names, suite_hash, command_line, git_commit, git_branch, "
        "git_dirty, build_type, host_name, cpu_model, cpu_count, gpu_names, gpu_count, gpu_driver, cuda_version, "
        "gpu_sm_clock_mhz, gpu_memory_clock_mhz, gpu_power_limit_w) VALUES (7, 'complete', '2026-11-25T06:00:00Z', "
        "'2026-11-25T06:05:00Z', 'guide', '0123456789abcdef', 'tmbench run suites/guide.yaml', "
        "'0123456789abcdef0123456789abcdef01234567', 'main', 0, 'Release', 'rig', 'AMD Ryzen 9 7950X', 32, "
        "'NVIDIA GeForce RTX 4090', 4, '550.54.15', '12.4', 2520, 10501, 450.0)")
    connection.execute("INSERT INTO runs (id, status, started_at, suite_names, suite_hash, command_line) "
                       "VALUES (8, 'running', '2026-11-25T07:00:00Z', 'guide', 'x', 'killed run')")
    cases = [
        (1, "throughput", "guide/prompt_tokens=128,batch=1", '{"prompt_tokens": 128, "batch": 1}', "complete"),
        (2, "throughput", "guide/prompt_tokens=512,batch=4", '{"prompt_tokens": 512, "batch": 4}', "complete"),
        (3, "throughput", "guide/prompt_tokens=2048,batch=8", '{"prompt_tokens": 2048, "batch": 8}', "failed"),
        (4, "memory", "guide-memory/batch=8", '{"prompt_tokens": 4096, "batch": 8}', "complete"),
        (5, "kernels", "kernels/head_dim=128,tokens=4096,heads=32,kv_heads=32",
         '{"op": "flash", "causal": 1, "head_dim": 128, "tokens": 4096, "heads": 32, "kv_heads": 32}', "complete"),
        (6, "kernels", "kernels-decode/op=gemv,type=q4_k,rows=4096,tokens=1", '{"op": "gemv", "type": "q4_k", "rows": 4096}',
         "complete"),
        (7, "kernels", "kernels/head_dim=256,tokens=8192,heads=16,kv_heads=16",
         '{"op": "flash", "causal": 1, "head_dim": 256, "tokens": 8192, "heads": 16, "kv_heads": 16}', "failed"),
        (8, "throughput", "guide/prompt_tokens=128,batch=4", '{"prompt_tokens": 128, "batch": 4}', "complete"),
        (9, "memory", "guide-memory/batch=8,kv_type=q8", '{"prompt_tokens": 4096, "batch": 8, "kv_type": "q8"}', "complete"),
        # the same shapes with the 8-bit KV cache: their own rows, compared only with each other
        (10, "throughput", "guide/prompt_tokens=128,batch=4,kv_type=q8", '{"prompt_tokens": 128, "batch": 4, "kv_type": "q8"}',
         "complete"),
        (11, "throughput", "guide/prompt_tokens=512,batch=4,kv_type=q8", '{"prompt_tokens": 512, "batch": 4, "kv_type": "q8"}',
         "complete"),
        # case 1's shape sampled (a param the other throughput cases do not set): its own row and chart line, labelled
        (12, "throughput", "guide/prompt_tokens=128,batch=1,temperature=0.8,top_k=40",
         '{"prompt_tokens": 128, "batch": 1, "temperature": 0.8, "top_k": 40}', "complete"),
    ]
    for case_id, kind, name, params, status in cases:
        connection.execute("INSERT INTO cases (id, run_id, suite, kind, name, params, model, status, started_at) "
                           "VALUES (?, 7, 'guide', ?, ?, ?, 'synthetic:llama2-70b:q4_k_m', ?, '2026-11-25T06:00:00Z')",
                           (case_id, kind, name, params, status))
    metrics = {
        # case 1 with the roofline (its ceiling), the bytes a step reads and the energy; case 8 without an energy
        # counter; case 2 with a roofline only (so the longer prompt's roofline change against case 8 shows); the
        # others from a run before those metrics: "not measured"
        1: {"decode_tokens_per_s": (61.2, 0.012, 72.0), "step_latency_p50_ms": (16.3, 0, None),
            "step_latency_p90_ms": (16.9, 0, None), "step_latency_p99_ms": (17.4, 0, None),
            "time_to_first_token_ms": (51.0, 0, None), "prompt_tokens_per_s": (2510.0, 0, None),
            "decode_gb_per_s": (2531.4, 0, 2978.0), "decode_joules_per_token": (10.2, 0.031, None)},
        2: {"decode_tokens_per_s": (230.5, 0.02, 283.0), "step_latency_p50_ms": (17.3, 0, None),
            "step_latency_p90_ms": (18.0, 0, None), "step_latency_p99_ms": (19.2, 0, None),
            "time_to_first_token_ms": (3424.0, 0, None), "prompt_tokens_per_s": (12488.0, 0, None)},  # no exponents
        8: {"decode_tokens_per_s": (250.0, 0.01, 287.0), "step_latency_p50_ms": (16.0, 0, None),
            "step_latency_p90_ms": (16.5, 0, None), "step_latency_p99_ms": (17.0, 0, None),
            "time_to_first_token_ms": (210.0, 0, None), "prompt_tokens_per_s": (2440.0, 0, None),
            "decode_gb_per_s": (2594.0, 0, 2978.0)},
        5: {"time_us": (3477.0, 0.004, None), "gb_per_s": (19.3, 0, 2978.0), "tflop_per_s": (316.2, 0, 749.0),
            "pct_of_copy_bandwidth": (0.6, 0, None), "pct_of_gemm_flops": (42.2, 0, None)},
        6: {"time_us": (4.1, 0.02, None), "gb_per_s": (2305.0, 0, 2978.0), "tflop_per_s": (8.2, 0, 749.0),
            "pct_of_copy_bandwidth": (77.4, 0, None), "pct_of_gemm_flops": (1.1, 0, None),
            "pct_of_same_size_read": (88.5, 0, 2604.0),  # case 5 has none: a run from before the metric
            # measured under a sustained load (power_seconds): its own table; case 5 was not, so it has no row there
            "power_w": (412.5, 0.013, None), "joules_per_gb": (0.1791, 0, None), "sm_clock_mhz": (2505.0, 0, None),
            "sustained_gb_per_s": (2303.0, 0, None)},
        4: {"weight_bytes": (41.38e9, 0, None), "kv_bytes_allocated": (10.74e9, 0, None),
            "kv_bytes_used": (10.73e9, 0, None), "total_bytes": (52.12e9, 0, None),
            "process_peak_rss_bytes": (1.2e9, 0, None)},
        10: {"decode_tokens_per_s": (262.0, 0.01, None), "step_latency_p50_ms": (15.3, 0, None),
             "step_latency_p90_ms": (15.8, 0, None), "step_latency_p99_ms": (16.1, 0, None),
             "time_to_first_token_ms": (212.0, 0, None), "prompt_tokens_per_s": (2430.0, 0, None)},
        11: {"decode_tokens_per_s": (251.5, 0.02, None), "step_latency_p50_ms": (15.9, 0, None),
             "step_latency_p90_ms": (16.4, 0, None), "step_latency_p99_ms": (17.5, 0, None),
             "time_to_first_token_ms": (826.0, 0, None), "prompt_tokens_per_s": (2488.0, 0, None)},
        12: {"decode_tokens_per_s": (60.4, 0.01, 72.0), "step_latency_p50_ms": (16.5, 0, None),
             "step_latency_p90_ms": (17.0, 0, None), "step_latency_p99_ms": (17.6, 0, None),
             "time_to_first_token_ms": (51.2, 0, None), "prompt_tokens_per_s": (2505.0, 0, None)},
        9: {"weight_bytes": (41.38e9, 0, None), "kv_bytes_allocated": (5.55e9, 0, None),
            "kv_bytes_used": (5.54e9, 0, None), "total_bytes": (46.92e9, 0, None),
            "process_peak_rss_bytes": (1.2e9, 0, None)},
    }
    for case_id, by_metric in metrics.items():
        for metric, (median, noise, ceiling) in by_metric.items():
            connection.execute(
                "INSERT INTO metrics (case_id, metric, unit, higher_is_better, n, median, mean, stdev, min, max, p10, p90, "
                "p99, relative_noise, median_low, median_high, ceiling) VALUES (?, ?, 'u', 1, 5, ?, ?, 0, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?)", (case_id, metric, median, median, median, median, median, median, median, noise, median, median,
                             ceiling))
    # CUPTI records of case 1 (tmbench run --profile): two timed repetitions and a warm-up, which the report leaves out;
    # one kernel in two launch shapes (two products of different sizes), which the report keeps apart; the norm starts
    # 1 us before the record ahead of it ends (a dependent launch waiting inside), so 0.5 of its 1.5 us are exposed
    records = []
    for repetition in (-1, 0, 1):
        start = 1_000_000 * (repetition + 2)
        for name, grid, launches, ns, early in (("mmvq_kernel<12, 1, 1>", "4096,1,1", 4, 9000, 0),
                                                ("rmsnorm_kernel", "1,1,1", 2, 1500, 1000), ("sample_kernel", "1,1,1", 1, 4000, 0),
                                                ("mmvq_kernel<12, 1, 1>", "1024,1,1", 2, 2500, 0)):
            for _ in range(launches):
                records.append((1, repetition, name, grid, "128,1,1", start - early, start - early + ns))
                start += ns - early
        records.append((1, repetition, "memcpy DtoH 4 B", None, None, start, start + 2000))
    connection.executemany("INSERT INTO kernel_records (case_id, repetition, name, grid, block, start_ns, end_ns) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", records)
    connection.commit()
    connection.close()


def test_report_matches_golden(tmp_path):
    db = tmp_path / "fixed.db"
    fixed_database(db)
    out = tmp_path / "report"
    run(BIN / "tmbench", "report", "--db", db, "-o", out, "--roadmap", ROOT / "reports" / "ROADMAP.md", cwd=ROOT)
    text = (out / "PERFORMANCE.md").read_text().replace(str(db), "DATABASE")
    charts = shutil.which("gnuplot") is not None
    if charts:
        for name in ("throughput_vs_batch", "latency_percentiles", "roofline"):
            for extension in ("svg", "png"):
                chart = out / "charts" / f"{name}.{extension}"
                assert chart.exists() and chart.stat().st_size > 1000, chart
    else:  # the same guide, with the line that says charts were not drawn
        text = text.replace("Charts: not drawn (gnuplot is not installed).\n", "CHARTS\n")
        text = text.replace("Roofline chart: not drawn (gnuplot is not installed).\n", "ROOFLINE\n")
    if os.environ.get("TM_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    expected = GOLDEN.read_text()
    if not charts:
        start = expected.index("![decode throughput")
        end = expected.index("Decode tokens/s counts")
        expected = expected[:start] + "CHARTS\n\n" + expected[end:]
        start = expected.index("![kernels on the roofline]")
        end = expected.index("### 2.2")
        expected = expected[:start] + "ROOFLINE\n\n" + expected[end:]
    assert text == expected
    assert "not measured" in text and "run 7 (complete" in text and "| 61.2 ± 1.2 % | 72 (85 %) | 2531 | 10.2 ± 3.1 % |" in text
    assert "| `rmsnorm_kernel` | 1,1,1 | 128,1,1 | 2.0 | 1.50 us | 0.50 us | 3.0 us |" in text  # its exposed part
    assert "| `sample_kernel` | 1,1,1 | 128,1,1 | 1.0 | 4.00 us | 4.00 us |" in text
    assert "| 3420 | 12490 |" in text  # large figures at their significant digits, not "3.42e+03 | 1.249e+04"
    # a case of case 1's shape with sampling params the others do not set: a row and a chart line of its own, labelled
    assert "| synthetic:llama2-70b:q4_k_m (temperature=0.8, top_k=40) | 128 | 1 | f16 | 60.4 ± 1.0 % |" in text
    data = out / "charts" / "throughput.dat"
    if data.exists():
        assert "# synthetic:llama2-70b:q4_k_m kv_type=f16 prompt_tokens=128 temperature=0.8, top_k=40\n1 60.4 " in data.read_text()
    # decode at a longer prompt against the shortest of the same batch (512 x4 against 128 x4; the failed
    # 2048 x8 has no row, and batch 1 has one prompt only)
    assert "| guide | synthetic:llama2-70b:q4_k_m | f16 | 4 | 512 | 230.5 | 128 | 250 | -7.8 % |" in text
    # the 8-bit cache's rows against their own shortest prompt, never against the f16 cache's
    assert "| guide | synthetic:llama2-70b:q4_k_m | q8 | 4 | 512 | 251.5 | 128 | 262 | -4.0 % |" in text
    assert "| 512 | 251.5 | 128 | 250 |" not in text and "| 512 | 230.5 | 128 | 262 |" not in text
    assert "| 2048 |" not in text.split("Decode at a longer prompt")[1].split("###")[0]
    # the profile's kernels by launch shape: per repetition, per launch, share of the 48 us of kernels
    assert "| `mmvq_kernel<12, 1, 1>` | 4096,1,1 | 128,1,1 | 4.0 | 9.00 us | 9.00 us | 36.0 us | 75.0 % |" in text
    assert "| `mmvq_kernel<12, 1, 1>` | 1024,1,1 | 128,1,1 | 2.0 | 2.50 us | 2.50 us | 5.0 us | 10.4 % |" in text


def test_report_refuses_when_nothing_complete(tmp_path):
    db = tmp_path / "empty.db"
    connection = sqlite3.connect(db)
    connection.executescript((ROOT / "results" / "schema.sql").read_text())
    connection.close()
    import subprocess
    result = subprocess.run([str(BIN / "tmbench"), "report", "--db", str(db), "-o", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "no complete run" in result.stderr
