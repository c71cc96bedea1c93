"""An independent llama forward pass in numpy, over weights dequantized by the `gguf` package.

It shares no code with the engine: GGUF parsing is gguf.GGUFReader, dequantization is
gguf.quants.dequantize, and the math is written out plainly in float64 from the llama
definition as llama.cpp's GGUF files expect it (RMSNorm; "normal" RoPE rotating adjacent pairs
(2i, 2i+1) with theta = pos * base^(-2i/head_dim); grouped-query attention; SwiGLU FFN; a tied
LM head when the file has no output.weight). Full causal attention, no cache: O(T^2) per layer.
"""
import numpy as np
from gguf import GGUFReader
from gguf import quants


def _field(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    if field.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return value[0].item()


class Llama:
    def __init__(self, path):
        self.reader = GGUFReader(path)
        r = self.reader
        self.n_embd = _field(r, "llama.embedding_length")
        self.n_layer = _field(r, "llama.block_count")
        self.n_head = _field(r, "llama.attention.head_count")
        self.n_head_kv = _field(r, "llama.attention.head_count_kv")
        self.eps = _field(r, "llama.attention.layer_norm_rms_epsilon")
        self.rope_base = _field(r, "llama.rope.freq_base") if "llama.rope.freq_base" in r.fields else 10000.0
        self.head_dim = self.n_embd // self.n_head
        self.tensors = {t.name: t for t in r.tensors}
        self._cache = {}

    def weight(self, name):
        if name not in self._cache:
            t = self.tensors[name]
            self._cache[name] = quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(
                tuple(int(d) for d in reversed(t.shape)))
        return self._cache[name]

    def rmsnorm(self, x, name):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * self.weight(name)

    def rope(self, x, positions):
        # x: (T, heads, head_dim); rotate pairs (2i, 2i+1)
        half = self.head_dim // 2
        inv_freq = self.rope_base ** (-np.arange(half) * 2.0 / self.head_dim)
        angles = positions[:, None] * inv_freq[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    @staticmethod
    def kv_q8(x):
        """An 8-bit KV cache's rounding of head vectors (last axis): q = rint(x / d), d = max |x| / 127."""
        d = np.max(np.abs(x), axis=-1, keepdims=True) / 127
        return np.rint(x / np.where(d > 0, d, 1)) * d

    def forward(self, tokens, layer_callback=None, cache=None, kv_q8=False):
        """Logits (T, vocab) for every position of `tokens`. With `cache` (a dict this method
        fills), tokens continue the sequence held there instead of starting a new one. kv_q8: keys
        and values through the 8-bit cache's rounding (Llama.kv_q8)."""
        T = len(tokens)
        past = cache.get("length", 0) if cache is not None else 0
        positions = np.arange(past, past + T, dtype=np.float64)
        x = self.weight("token_embd.weight")[np.asarray(tokens)]
        group = self.n_head // self.n_head_kv
        mask = np.triu(np.full((T, past + T), -np.inf), k=past + 1)
        for layer in range(self.n_layer):
            p = f"blk.{layer}."
            h = self.rmsnorm(x, p + "attn_norm.weight")
            q = (h @ self.weight(p + "attn_q.weight").T).reshape(T, self.n_head, self.head_dim)
            k = (h @ self.weight(p + "attn_k.weight").T).reshape(T, self.n_head_kv, self.head_dim)
            v = (h @ self.weight(p + "attn_v.weight").T).reshape(T, self.n_head_kv, self.head_dim)
            q, k = self.rope(q, positions), self.rope(k, positions)
            if kv_q8:
                k, v = self.kv_q8(k), self.kv_q8(v)
            if cache is not None:
                if layer in cache:
                    k = np.concatenate([cache[layer][0], k])
                    v = np.concatenate([cache[layer][1], v])
                cache[layer] = (k, v)
            out = np.empty((T, self.n_head, self.head_dim))
            for head in range(self.n_head):
                kv = head // group
                scores = q[:, head, :] @ k[:, kv, :].T / np.sqrt(self.head_dim) + mask
                scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                scores /= scores.sum(axis=1, keepdims=True)
                out[:, head, :] = scores @ v[:, kv, :]
            x = x + out.reshape(T, -1) @ self.weight(p + "attn_output.weight").T
            h = self.rmsnorm(x, p + "ffn_norm.weight")
            gate = h @ self.weight(p + "ffn_gate.weight").T
            up = h @ self.weight(p + "ffn_up.weight").T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ self.weight(p + "ffn_down.weight").T
            if layer_callback:
                layer_callback(layer, x)
        if cache is not None:
            cache["length"] = past + T
        x = self.rmsnorm(x, "output_norm.weight")
        head = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        return x @ self.weight(head).T

    def greedy(self, tokens, n):
        """n greedy tokens after `tokens` (argmax, lowest id on ties), decoding with a cache."""
        cache = {}
        logits = self.forward(tokens, cache=cache)[-1]
        out = []
        for _ in range(n):
            out.append(int(np.argmax(logits)))
            logits = self.forward([out[-1]], cache=cache)[-1]
        return out
