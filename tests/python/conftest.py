"""Shared fixtures for the Python interoperability tests.

The binaries come from $TM_BIN (set by ctest) or ./build/bin. The tests compare TensorMesh
against the `gguf` package (its reader, writer and numpy dequantization), an implementation
we did not write.
"""
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("TM_BIN", ROOT / "build" / "bin"))


def run(*args, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def tensormesh():
    path = BIN / "tensormesh"
    assert path.exists(), f"{path} not built"
    return path


@pytest.fixture(scope="session")
def testtool():
    path = pathlib.Path(os.environ.get("TM_TESTTOOL", BIN / "tm_testtool"))
    assert path.exists(), f"{path} not built"
    return path


def inspect_json(tensormesh, path):
    return json.loads(run(tensormesh, "inspect", path, "--json", "--hash").stdout)


@pytest.fixture(scope="session")
def smollm2():
    """Path of the real SmolLM2-135M-Instruct Q4_1 GGUF (ci/test fetches it into the cache)."""
    path = os.environ.get("TM_SMOLLM2")
    if not path or not pathlib.Path(path).exists():
        pytest.skip("TM_SMOLLM2 is not set to the SmolLM2 GGUF: run ci/test, which fetches it")
    return pathlib.Path(path)
