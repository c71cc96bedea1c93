-- TensorMesh results database: the single source of truth for reports and diffs.
-- Version: PRAGMA user_version = 1. tmbench applies this file to an empty database and refuses
-- a database of a newer version; migrations from older versions live in harness/store.c.
-- Every write of tmbench is its own transaction, so a process killed at any moment leaves a
-- consistent database; a run that did not finish keeps status 'running' (shown as incomplete)
-- and reports leave it out unless asked.

CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY,
    status        TEXT NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'complete', 'interrupted', 'failed')),
    started_at    TEXT NOT NULL,          -- UTC, ISO 8601
    finished_at   TEXT,
    suite_names   TEXT NOT NULL,          -- comma-separated suite names of the run
    suite_hash    TEXT NOT NULL,          -- FNV-1a 64 of the suite files' bytes, hex
    command_line  TEXT NOT NULL,
    git_commit    TEXT, git_branch TEXT, git_dirty INTEGER,
    build_type    TEXT, build_flags TEXT,
    host_name     TEXT, cpu_model TEXT, cpu_count INTEGER,
    gpu_names     TEXT, gpu_count INTEGER, gpu_driver TEXT, cuda_version TEXT,
    gpu_sm_clock_mhz INTEGER, gpu_memory_clock_mhz INTEGER, gpu_power_limit_w REAL,
    tags          TEXT                    -- JSON object of --tag K=V
);

CREATE TABLE IF NOT EXISTS cases (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    suite         TEXT NOT NULL,
    kind          TEXT NOT NULL,          -- throughput, memory, kernels, ipc, scaling
    name          TEXT NOT NULL,          -- suite/key=value,key=value (stable across runs)
    params        TEXT NOT NULL,          -- JSON object of the case's parameters
    model         TEXT,
    status        TEXT NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'complete', 'failed', 'timeout', 'skipped')),
    message       TEXT,
    started_at    TEXT NOT NULL,
    finished_at   TEXT
);
CREATE INDEX IF NOT EXISTS cases_by_run ON cases(run_id);
CREATE INDEX IF NOT EXISTS cases_by_name ON cases(name);

-- Every measured repetition of every metric.
CREATE TABLE IF NOT EXISTS samples (
    case_id       INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    metric        TEXT NOT NULL,          -- e.g. decode_tokens_per_s
    repetition    INTEGER NOT NULL,
    value         REAL NOT NULL,
    PRIMARY KEY (case_id, metric, repetition)
);

-- Summary of each metric of each case (written when the case completes).
CREATE TABLE IF NOT EXISTS metrics (
    case_id       INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    metric        TEXT NOT NULL,
    unit          TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL,  -- 1 higher is better, 0 lower, 2 neither (descriptive: diff says CHANGED)
    n             INTEGER NOT NULL,
    median REAL, mean REAL, stdev REAL, min REAL, max REAL, p10 REAL, p90 REAL, p99 REAL,
    relative_noise REAL, median_low REAL, median_high REAL,
    ceiling       REAL,                   -- the measured ceiling this metric compares to, if any
    PRIMARY KEY (case_id, metric)
);

-- Filled by the profiling issue (CUPTI activity, NVTX, hardware counters).
CREATE TABLE IF NOT EXISTS kernel_records (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    repetition INTEGER, name TEXT NOT NULL, grid TEXT, block TEXT, registers INTEGER,
    shared_memory INTEGER, start_ns INTEGER, end_ns INTEGER, stream INTEGER, graph_id INTEGER
);
CREATE TABLE IF NOT EXISTS nvtx_ranges (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    repetition INTEGER, name TEXT NOT NULL, start_ns INTEGER, end_ns INTEGER
);
CREATE TABLE IF NOT EXISTS hardware_counters (
    id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    scope TEXT NOT NULL, counter TEXT NOT NULL, value REAL NOT NULL
);

PRAGMA user_version = 1;
