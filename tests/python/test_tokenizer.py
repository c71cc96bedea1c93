"""Tokenizer ids equal those of the Hugging Face tokenizer built from the same GGUF file.

Vocabularies: the real SmolLM2-135M-Instruct (byte-level BPE, "smollm" pre-tokenizer), a
synthetic SentencePiece vocabulary (llama2-7b preset) and a synthetic Llama 3 BPE vocabulary
("llama-bpe"), the last two written with `synth --vocab-only`. Strings: a hand-written list
(ASCII, accents, CJK, emoji, code, whitespace runs, contractions, numbers, special tokens) plus
seeded random mixtures of those pieces, a few hundred in all. Also: decode(encode(s)) == s for
every string, and invalid UTF-8 is tokenized and round-trips without a crash.
"""
import json
import random

import pytest

from conftest import run
from hf_tokenizer import build

BASE = [
    "Hello world", "hello, World!", "  leading spaces", "trailing   ", "a  b   c    d", " ", "   ", "x",
    "café naïve résumé façade", "ÀÉÎÕÜ ß ﬁ Æsir", "中文字符测试", "日本語のテキスト、句読点。", "한국어 문장입니다",
    "Ελληνικά και русский текст", "עברית ועוד", "العربية ٣٤٥", "emoji 😀🎉👍🏽 👨‍👩‍👧", "🙂", "ＡＢＣ full width",
    "def f(x):\n\treturn x**2  # square", "#include <stdio.h>\nint main(void) { return 0; }",
    "for (int i = 0; i < n; ++i) sum += a[i];", "SELECT * FROM t WHERE id=42;", "https://example.com/a?b=c&d=e",
    "a\n\nb\n\n\nc", "tabs\t\tand\r\nCRLF\r\n", "line\n  indented\n    more", "\n\n", "\t",
    "I'm you're we've they'll he'd it's", "DON'T I'M YOU'RE", " 'll 's", "12345 678901 3.14159 1e-9",
    "mixed123abc456", "phone: +1 (555) 010-9999", "$100.00 €50 ¥1000", "~!@#$%^&*()_+{}|:\"<>?",
    "The quick brown fox jumps over the lazy dog.", "supercalifragilisticexpialidocious",
    "x" * 60, "ab" * 40, "🙂" * 10, "  \n  \n", "word\u00a0nbsp", "zero\u200bwidth", "e\u0301 combining",
]
SPECIAL_SAMPLES = {
    "smollm": ["<|im_start|>user\nhi<|im_end|>\n", "text<|endoftext|>more", "<|im_start|><|im_end|>"],
    "llama-bpe": ["<|begin_of_text|>hi<|eot_id|>", "a<|start_header_id|>user<|end_header_id|>\n\nb"],
    "spm": [],
}


def corpus(kind, n_random=250, seed=7):
    rng = random.Random(seed)
    strings = list(BASE) + SPECIAL_SAMPLES[kind]
    pieces = [s for s in BASE if s.strip()]
    separators = ["", " ", "  ", "\n", "\t", ", ", "-"]
    for _ in range(n_random):
        k = rng.randint(1, 4)
        strings.append(rng.choice(separators).join(rng.choice(pieces)[: rng.randint(1, 30)] for _ in range(k)))
    return strings


def encode_with_tensormesh(testtool, model, strings, tmp_path):
    (tmp_path / "in.bin").write_bytes(b"\0".join(s.encode("utf-8") for s in strings))
    run(testtool, "tokenize", model, tmp_path / "in.bin", tmp_path / "out.jsonl")
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def compare(testtool, model, kind, tmp_path):
    tokenizer, _, _ = build(str(model))
    strings = corpus(kind)
    ours = encode_with_tensormesh(testtool, model, strings, tmp_path)
    assert len(ours) == len(strings)
    mismatches = []
    for s, o in zip(strings, ours):
        reference = tokenizer.encode(s, add_special_tokens=False).ids
        if reference != o["ids"]:
            mismatches.append((s, reference[:24], o["ids"][:24]))
        assert o["roundtrip"], f"decode(encode({s!r})) != input"
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, e.g. {mismatches[:3]}"
    return len(strings)


def test_smollm2_real_vocabulary(testtool, smollm2, tmp_path):
    assert compare(testtool, smollm2, "smollm", tmp_path) >= 250


@pytest.mark.parametrize("preset,kind", [("llama2-7b", "spm"), ("llama3-8b", "llama-bpe")])
def test_synthetic_vocabulary(preset, kind, tensormesh, testtool, tmp_path):
    model = tmp_path / f"{preset}-vocab.gguf"
    run(tensormesh, "synth", "--preset", preset, "--vocab-only", "-o", model)
    assert compare(testtool, model, kind, tmp_path) >= 250


@pytest.mark.parametrize("preset", ["llama2-7b", "llama3-8b"])
def test_invalid_utf8_round_trips(preset, tensormesh, testtool, tmp_path):
    model = tmp_path / "vocab.gguf"
    run(tensormesh, "synth", "--preset", preset, "--vocab-only", "-o", model)
    samples = [b"\xff\xfe", b"abc\xc3", b"\xe2\x82", b"ok \x80 ok", b"\xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80"]
    (tmp_path / "in.bin").write_bytes(b"\0".join(samples))
    run(testtool, "tokenize", model, tmp_path / "in.bin", tmp_path / "out.jsonl")
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(results) == len(samples)
    assert all(r["roundtrip"] and r["ids"] for r in results)
