"""A Hugging Face tokenizer built from a GGUF file, without torch.

transformers builds tokenizers from GGUF metadata in transformers.integrations.gguf; its file
reader needs torch, so the metadata is read here with the `gguf` package and handed to the same
builder (convert_gguf_tokenizer) under the key names transformers uses.

Two corrections, where transformers' GGUF builder departs from the models' own tokenizers:
- tokenizer.ggml.pre = "smollm": the builder has no entry for it and falls back to GPT-2's split,
  while SmolLM2's own tokenizer.json (and llama.cpp) put every digit alone first. We install
  SmolLM2's published pre-tokenizer, Sequence[Digits(individual_digits=True), ByteLevel].
- tokenizer.ggml.pre = "llama-bpe": Llama 3's tokenizer.json sets "ignore_merges": true (a word
  that is itself in the vocabulary is not split), and llama.cpp does the same; the builder leaves
  it off. We turn it on.
- SentencePiece ("llama") vocabularies: the builder uses Metaspace(prepend_scheme="first"), which
  adds no U+2581 to text that already starts with a space, while Llama 2's own tokenizer.json
  (normalizer Prepend("\u2581") + Replace(" ", "\u2581")) and llama.cpp always add it. We install
  that normalizer, as transformers itself does for Phi-3's vocabulary.
"""
import importlib

from gguf import GGUFReader
from tokenizers import normalizers, pre_tokenizers


def _value(field):
    kind = field.types[0].name
    if kind == "ARRAY":
        if field.types[-1].name == "STRING":
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    if kind == "STRING":
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]][0].item()


def build(path):
    """(tokenizers.Tokenizer, add_bos, bos_id) for the GGUF at path."""
    mapping = importlib.import_module("transformers.integrations.gguf.gguf_tokenizer_mapping")
    reader = GGUFReader(path)
    fields = {k: _value(f) for k, f in reader.fields.items() if k.startswith("tokenizer.") or k == "general.architecture"}
    tokenizer_dict = {
        name: fields[f"tokenizer.{key}"]
        for key, name in mapping.GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in fields
    }
    backend, _ = mapping.convert_gguf_tokenizer(fields["general.architecture"], tokenizer_dict)
    if tokenizer_dict.get("pre_tokenizer_type") == "smollm":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if tokenizer_dict.get("pre_tokenizer_type") == "llama-bpe":
        backend.model.ignore_merges = True
    if tokenizer_dict["tokenizer_type"] == "llama" and tokenizer_dict.get("add_prefix_space", True):
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend(prepend="\u2581"), normalizers.Replace(pattern=" ", content="\u2581")])
        backend.pre_tokenizer = None
    add_bos = fields.get("tokenizer.ggml.add_bos_token", tokenizer_dict["tokenizer_type"] == "llama")
    return backend, add_bos, tokenizer_dict.get("bos_token_id")
