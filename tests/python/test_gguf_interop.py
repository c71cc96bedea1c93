"""GGUF interoperability with the `gguf` package, and synthetic models end to end.

- files written by `tensormesh synth` are read by gguf.GGUFReader with identical metadata
  (every key, type and value) and identical tensors (name, type, shape, offset, CRC-32 of bytes);
- a file written by gguf.GGUFWriter with every metadata type (nested arrays included) and
  tensors of several types is read by our reader with the same values, and rewriting it with
  our writer gives the same bytes;
- a synthetic model's activations stay finite through every layer of an independent numpy
  forward pass, and its logits are not degenerate.
"""
import json
import zlib

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter, GGUFValueType
from gguf import GGMLQuantizationType as Q

from conftest import inspect_json, run
from llama_reference import Llama

SCALAR_TYPES = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "UINT64", "INT64", "FLOAT64"}


def reader_value(field, index=None):
    """(type name, python value) of a GGUFReader field, arrays decoded in full."""
    kind = field.types[0].name
    if kind == "STRING":
        return "string", bytes(field.parts[field.data[0]]).decode("utf-8")
    if kind == "ARRAY":
        element = field.types[1].name if len(field.types) > 1 else "UINT8"
        leaf = field.types[-1].name
        if leaf == "STRING":
            items = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        else:
            items = [field.parts[i][0].item() for i in field.data]
        return "array", {"element_type": element.lower(), "items": items}
    value = field.parts[field.data[0]][0].item()
    return kind.lower(), value


def flatten(value):
    """Leaves of a nested array, in order (GGUFReader exposes nested arrays flattened)."""
    if isinstance(value, dict):
        return [leaf for item in value["items"] for leaf in flatten(item)]
    return [value]


def compare_value(kind, ours, theirs, key):
    if kind == "array" and ours["element_type"] == "array":
        assert theirs["element_type"] == "array", key
        assert flatten(ours) == theirs["items"], key
    elif kind == "float32":
        assert np.float32(ours) == np.float32(theirs), key
    elif kind == "bool":
        assert bool(ours) == bool(theirs), key
    elif kind == "array" and theirs["element_type"] in ("float32", "float64"):
        assert ours["element_type"] == theirs["element_type"], key
        assert np.array_equal(np.asarray(ours["items"], dtype=np.float64),
                              np.asarray(theirs["items"], dtype=np.float64)), key
    elif kind == "array" and theirs["element_type"] == "bool":
        assert [bool(v) for v in ours["items"]] == [bool(v) for v in theirs["items"]], key
    else:
        assert ours == theirs, key


def check_same_as_reader(ours, path):
    reader = GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert [m["key"] for m in ours["metadata"]] == list(fields), "keys and their order"
    for m in ours["metadata"]:
        kind, value = reader_value(fields[m["key"]])
        assert m["type"] == kind, m["key"]
        compare_value(kind, m["value"], value, m["key"])
    assert ours["data_offset"] == reader.data_offset
    assert len(ours["tensors"]) == len(reader.tensors)
    for t, rt in zip(ours["tensors"], reader.tensors):
        assert t["name"] == rt.name
        assert t["type_id"] == int(rt.tensor_type)
        assert t["shape"] == [int(d) for d in rt.shape]
        assert reader.data_offset + t["offset"] == rt.data_offset
        assert t["bytes"] == int(rt.n_bytes)
        assert t["crc32"] == zlib.crc32(rt.data.tobytes()), t["name"]


@pytest.mark.parametrize("spec", ["tiny:q4_k_m", "tiny:q8_0", "tiny:f16", "smollm2-135m:q4_k_m"])
def test_synth_read_by_gguf_package(spec, tensormesh, tmp_path):
    preset, kind = spec.split(":")
    path = tmp_path / "model.gguf"
    run(tensormesh, "synth", "--preset", preset, "--type", kind, "-o", path, "--threads", "2")
    size = int(run(tensormesh, "synth", "--preset", preset, "--type", kind, "--size").stdout)
    assert path.stat().st_size == size, "--size predicts the file size"
    ours = inspect_json(tensormesh, path)
    check_same_as_reader(ours, path)
    keys = {m["key"]: m["value"] for m in ours["metadata"]}
    assert keys["general.architecture"] == "llama"
    tokens = keys["tokenizer.ggml.tokens"]["items"]
    assert len(tokens) == keys["llama.vocab_size"] and len(set(tokens)) == len(tokens), "unique vocabulary"
    if keys["tokenizer.ggml.model"] == "gpt2":
        vocab = set(tokens)
        for merge in keys["tokenizer.ggml.merges"]["items"]:
            left, right = merge.split(" ")
            assert left in vocab and right in vocab and left + right in vocab, merge


def test_real_model_read_like_gguf_package(tensormesh, smollm2):
    """The real SmolLM2-135M-Instruct file: every key, every tensor, every tensor's bytes."""
    ours = inspect_json(tensormesh, smollm2)
    check_same_as_reader(ours, smollm2)
    assert len(ours["tensors"]) == 272


def test_gguf_package_file_read_by_us(tensormesh, testtool, tmp_path):
    path = tmp_path / "theirs.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -100)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -30000)
    writer.add_uint32("t.u32", 4000000000)
    writer.add_int32("t.i32", -2000000000)
    writer.add_float32("t.f32", 1.5e-3)
    writer.add_uint64("t.u64", 2**63 + 5)
    writer.add_int64("t.i64", -2**62)
    writer.add_float64("t.f64", 2.718281828459045)
    writer.add_bool("t.bool", True)
    writer.add_string("t.string", "héllo wörld 中文 😀")
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, -0.25])
    writer.add_array("t.strings", ["a", "bc", "", "ü"])
    writer.add_array("t.nested", [[1, 2], [3, 4, 5]])
    writer.add_array("t.nested_strings", [["x", "y"], ["z"]])
    rng = np.random.default_rng(3)
    writer.add_tensor("w.f32", rng.standard_normal((3, 64)).astype(np.float32))
    writer.add_tensor("w.f16", rng.standard_normal((2, 128)).astype(np.float16))
    q8 = rng.integers(0, 256, size=(4, 2 * 34), dtype=np.uint8)
    q8[:, 0:2] = np.array([0.01], dtype=np.float16).view(np.uint8)
    q8[:, 34:36] = np.array([-0.02], dtype=np.float16).view(np.uint8)
    writer.add_tensor("w.q8_0", q8, raw_dtype=Q.Q8_0)
    q4k = rng.integers(0, 256, size=(2, 144), dtype=np.uint8)
    q4k[:, 0:4] = np.array([0.001, 0.002], dtype=np.float16).view(np.uint8)
    writer.add_tensor("w.q4_k", q4k, raw_dtype=Q.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = inspect_json(tensormesh, path)
    check_same_as_reader(ours, path)
    values = {m["key"]: m["value"] for m in ours["metadata"]}
    assert values["t.nested"]["items"][1]["items"] == [3, 4, 5]
    assert values["t.nested_strings"]["items"][0]["items"] == ["x", "y"]
    assert values["t.u64"] == 2**63 + 5 and values["t.i64"] == -2**62
    shapes = {t["name"]: t["shape"] for t in ours["tensors"]}
    assert shapes["w.q8_0"] == [64, 4] and shapes["w.q4_k"] == [256, 2]

    copy = tmp_path / "copy.gguf"
    run(testtool, "copy", path, copy)
    assert copy.read_bytes() == path.read_bytes(), "our writer reproduces the file byte for byte"


@pytest.mark.parametrize("spec", ["tiny:q4_k_m", "tiny:q8_0", "tiny:f16", "smollm2-135m:q4_k_m"])
def test_synthetic_activations_stay_finite(spec, tensormesh, tmp_path):
    preset, kind = spec.split(":")
    path = tmp_path / "model.gguf"
    run(tensormesh, "synth", "--preset", preset, "--type", kind, "-o", path)
    model = Llama(str(path))
    rms = []
    logits = model.forward([1, 300, 301, 500, 77, 2, 999, 42],
                           layer_callback=lambda layer, x: rms.append(float(np.sqrt(np.mean(x * x)))))
    assert len(rms) == model.n_layer
    assert all(np.isfinite(r) and r < 1e3 for r in rms), f"residual rms per layer: {rms}"
    assert np.all(np.isfinite(logits))
    assert 0.1 < np.std(logits) < 100, "logits neither vanish nor explode"
