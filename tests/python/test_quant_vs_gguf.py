"""Dequantization and dot products of every weight type against the `gguf` package.

Random blocks: every byte random except the half-precision scale fields, which get random
finite values of both signs over 2^-13..2, so every quant bit pattern is exercised and no block
decodes to inf/NaN. Our scalar dequantization must equal gguf.quants.dequantize bit for bit
or within 1e-6 relative (atol 1e-6 x the largest |value| of the block, for values that cancel
to near zero). Dot products must equal a float64 dot over gguf's dequantized weights within
2e-6 (float activation) / 1e-5 (quantized activation) of sum |w_i x_i|.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from conftest import run

# type name -> (ggml type, elements per block, bytes per block, byte offsets of f16 fields)
TYPES = {
    "f32": (Q.F32, 1, 4, []),
    "f16": (Q.F16, 1, 2, []),
    "bf16": (Q.BF16, 1, 2, []),
    "q4_0": (Q.Q4_0, 32, 18, [0]),
    "q4_1": (Q.Q4_1, 32, 20, [0, 2]),
    "q5_0": (Q.Q5_0, 32, 22, [0]),
    "q5_1": (Q.Q5_1, 32, 24, [0, 2]),
    "q8_0": (Q.Q8_0, 32, 34, [0]),
    "q4_k": (Q.Q4_K, 256, 144, [0, 2]),
    "q5_k": (Q.Q5_K, 256, 176, [0, 2]),
    "q6_k": (Q.Q6_K, 256, 210, [208]),
}


def random_blocks(rng, name, n_elements):
    qtype, block, size, halves = TYPES[name]
    n_blocks = n_elements // block
    if name == "f32":
        return rng.standard_normal(n_elements).astype(np.float32).view(np.uint8)
    if name == "f16":
        return rng.standard_normal(n_elements).astype(np.float16).view(np.uint8)
    if name == "bf16":
        bits = rng.standard_normal(n_elements).astype(np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8)
    data = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for offset in halves:
        scale = (1 + rng.random(n_blocks)) * 2.0 ** -rng.integers(0, 14, n_blocks)
        scale *= rng.choice([-1.0, 1.0], n_blocks)
        data[:, offset:offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return data.reshape(-1)


@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_matches_gguf(name, testtool, tmp_path):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    qtype, block, size, _ = TYPES[name]
    n = 256 * 64
    blocks = random_blocks(rng, name, n)
    (tmp_path / "in.bin").write_bytes(blocks.tobytes())
    run(testtool, "dequant", name, tmp_path / "in.bin", tmp_path / "out.f32")
    ours = np.fromfile(tmp_path / "out.f32", dtype=np.float32)
    reference = quants.dequantize(blocks.reshape(1, -1), qtype).reshape(-1).astype(np.float32)
    assert ours.shape == reference.shape
    assert np.all(np.isfinite(ours))
    exact = np.count_nonzero(ours.view(np.uint32) == reference.view(np.uint32))
    block_scale = np.repeat(np.abs(reference).reshape(-1, block).max(axis=1), block)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=0)  if block == 1 else \
        np.testing.assert_array_less(np.abs(ours - reference), 1e-6 * np.maximum(np.abs(reference), block_scale) + 1e-37)
    print(f"{name}: {exact}/{n} values bit-identical")


@pytest.mark.parametrize("name", list(TYPES))
def test_dot_matches_float64(name, testtool, tmp_path):
    rng = np.random.default_rng(7 + abs(hash(name)) % 2**31)
    qtype, block, size, _ = TYPES[name]
    rows, cols = 16, 2048
    blocks = random_blocks(rng, name, rows * cols)
    x = (rng.random(cols, dtype=np.float32) * 2 - 1) * 3
    (tmp_path / "w.bin").write_bytes(blocks.tobytes())
    x.tofile(tmp_path / "x.f32")
    run(testtool, "dot", name, tmp_path / "w.bin", tmp_path / "x.f32", tmp_path / "out.f32")
    ours = np.fromfile(tmp_path / "out.f32", dtype=np.float32).reshape(rows, 3)
    w = quants.dequantize(blocks.reshape(rows, -1), qtype).astype(np.float64)
    reference = w @ x.astype(np.float64)
    magnitude = np.abs(w) @ np.abs(x.astype(np.float64))
    assert np.all(np.abs(ours[:, 0] - reference) <= 2e-6 * magnitude), "dot with a float row"
    if block == 1:
        assert np.all(np.abs(ours[:, 2] - reference) <= 2e-6 * magnitude), "SIMD dot with a float row"
        return
    # the quantized activation as the kernel sees it, dequantized independently
    activation = "q8_0" if block == 32 else "q8_k"
    run(testtool, "quantize", activation, tmp_path / "x.f32", tmp_path / "xq.bin")
    xq = np.fromfile(tmp_path / "xq.bin", dtype=np.uint8)
    if activation == "q8_0":
        x_back = quants.dequantize(xq.reshape(1, -1), Q.Q8_0).reshape(-1).astype(np.float64)
    else:  # Q8_K: float d, 256 int8, 16 int16 sums (292 bytes)
        q8k = xq.reshape(-1, 292)
        d = q8k[:, :4].copy().view(np.float32).astype(np.float64)
        qs = q8k[:, 4:260].copy().view(np.int8).astype(np.float64)
        sums = q8k[:, 260:292].copy().view(np.int16)
        assert np.array_equal(sums, qs.reshape(-1, 16, 16).sum(axis=2)), "q8_k group sums"
        x_back = (d * qs).reshape(-1)
    # half a step, plus (Q8_0) the f16 rounding of the block scale: 2^-11 relative, times up to 127
    allowed = np.max(np.abs(x)) * (0.5 / 127 + (2.0 ** -11 if activation == "q8_0" else 1e-6))
    assert np.max(np.abs(x_back - x)) <= allowed, "activation quantization error"
    reference_q8 = w @ x_back
    magnitude_q8 = np.abs(w) @ np.abs(x_back)
    assert np.all(np.abs(ours[:, 1] - reference_q8) <= 1e-5 * magnitude_q8), "scalar dot with quantized row"
    assert np.all(np.abs(ours[:, 2] - reference_q8) <= 1e-5 * magnitude_q8), "SIMD dot with quantized row"
