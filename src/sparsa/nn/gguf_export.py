"""``sparsa export CKPT --to gguf -o FILE.gguf``: a sparsa checkpoint as a GGUF file llama.cpp runs.

Weights that a ggml type holds exactly (:mod:`sparsa.formats.ggml`: ``Quant`` on a Q4_0, Q4_1,
Q5_0, Q5_1 or Q8_0 grid; :class:`~sparsa.formats.kquant.KQuant`: Q4_K, Q5_K, Q6_K; as ``sparsa
compress --grid`` writes them) go out as those bytes, so
llama.cpp decodes what sparsa decodes: an export, not a requantization. Dense matrices go out as
``dense_type``: ``auto`` (the default) keeps the stored dtype (F32, F16 or BF16: the file then
decodes to exactly the checkpoint's weights), ``f16`` or ``f32`` cast, or ``q8_0`` quantized by the
``gguf`` package's own Q8_0 quantizer (what ``llama-quantize`` gives the embedding of a tied model,
for files laid out as llama.cpp's); vectors (norms) go out as F32. A compressed weight with no ggml type
(SpQR, sparse formats, other grids) stops the export naming it, unless
``dequantize_unsupported`` gives the type to write its dense weight in.

The file is written with the ``gguf`` package (its writer, its tensor-name map and its vocab
readers): the architecture's metadata from ``config.json`` (llama, qwen2 with its Q/K/V biases,
qwen3 with its Q/K norms and head width), the tokenizer from the checkpoint's ``tokenizer.json``
(GPT-2 style BPE: tokens, types, merges, special ids), and every tensor. For llama, Q and K rows
are permuted to ggml's interleaved rotary layout as llama.cpp's converter does
(``W.reshape(heads, 2, head_dim / 2, in).swapaxes(1, 2)``; transformers' GGUF loader undoes it);
llama.cpp runs qwen2 and qwen3 with the half-split (NEOX) rotary of Hugging Face's own layout, so
their rows go out as they are.
"""

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sparsa.atomic import check_output_file, output_file
from sparsa.errors import SparsaError
from sparsa.formats.ggml import block_type_of, to_blocks
from sparsa.formats.kquant import KQuant
from sparsa.formats.quant import Quant
from sparsa.nn.checkpoint import load_checkpoint, unique_tensors
from sparsa.nn.surgery import sparse_linears

DENSE_TYPES = ("auto", "f16", "f32", "q8_0")
AUTO_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}  # dense_type auto
# transformers class -> GGUF architecture
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
INTERLEAVED_ROTARY = {"llama"}  # architectures whose Q/K rows ggml stores in interleaved rotary order
# sha256[:16] of token ids of PRE_PROBE under a tokenizer -> llama.cpp's pre-tokenizer name (llama.cpp
# refuses a name it does not know and falls back to its default when none is written)
PRE_PROBE = "Hello World!\n\n 3.14159 naïve café   tabs\tand 1234567 numbers 🙂 ''' don't"
PRE_TOKENIZERS = {"a8d6ad8ed8a623f9": "smollm"}  # SmolLM2 (the embedded model)


@dataclass
class ExportSummary:
    """What ``sparsa export`` wrote: the file, its bytes, tensors per ggml type, and the tokenizer's
    pre-tokenizer name (``None`` when unknown: llama.cpp then uses its default)."""

    out: str
    file_bytes: int
    architecture: str
    tensor_types: dict
    pre_tokenizer: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    def brief(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.tensor_types.items()))
        return (f"wrote {self.out} ({self.file_bytes:,} bytes, {self.architecture}): {types}; pre-tokenizer "
                f"{self.pre_tokenizer or 'unknown (llama.cpp uses its default)'}")


def rotary_rows(out_features: int, heads: int) -> torch.Tensor:
    """Row order of ggml's rotary layout: new row ``r`` is HF row ``order[r]`` ([out] int64)."""
    return torch.arange(out_features).reshape(heads, 2, out_features // heads // 2).transpose(1, 2).reshape(-1)


def pre_tokenizer(tokenizer) -> str | None:
    """llama.cpp's name for ``tokenizer``'s pre-tokenizer, by the ids it gives :data:`PRE_PROBE`."""
    ids = tokenizer(PRE_PROBE, add_special_tokens=False)["input_ids"]
    return PRE_TOKENIZERS.get(hashlib.sha256(str(ids).encode()).hexdigest()[:16])


def tensor_data(name: str, tensor, dense_type: str, dequantize_unsupported: str | None, rows=None):
    """``(array, ggml type)`` of one weight: a format's ggml blocks, or dense values (``rows``: a row order)."""
    import gguf

    if not isinstance(tensor, torch.Tensor):  # a format
        if isinstance(tensor, KQuant):  # its array is ggml's bytes already
            blocks = tensor.blocks.numpy()
            return (blocks if rows is None else blocks[rows.numpy()]), gguf.GGMLQuantizationType[tensor.ktype.name]
        if isinstance(tensor, Quant):
            try:
                t = block_type_of(tensor, name)
                blocks = to_blocks(tensor, name)
                return (blocks if rows is None else blocks[rows.numpy()]), gguf.GGMLQuantizationType[t.name]
            except SparsaError:
                if dequantize_unsupported is None:
                    raise
        elif dequantize_unsupported is None:
            raise SparsaError(f"{name}: {tensor.format_name} has no ggml type; compress with --method rtn or gptq "
                              "and --grid, or add --dequantize-unsupported f16")
        tensor, dense_type = tensor.to_dense(torch.float32), dequantize_unsupported
    values = tensor.detach()
    if rows is not None:
        values = values[rows]
    kind = "F32" if values.dim() == 1 else AUTO_TYPES.get(values.dtype, "F32") if dense_type == "auto" else dense_type
    kind = kind.upper()
    if kind == "Q8_0":
        if values.shape[-1] % 32:
            raise SparsaError(f"{name}: {values.shape[-1]} columns; --dense-type q8_0 needs a multiple of 32")
        return gguf.quants.quantize(values.float().numpy(), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    if kind == "BF16":  # numpy has no bfloat16: the gguf package takes its bits as uint16
        return values.view(torch.int16).numpy().view(np.uint16), gguf.GGMLQuantizationType.BF16
    return values.to(torch.float32 if kind == "F32" else torch.float16).numpy(), gguf.GGMLQuantizationType[kind]


def export_gguf(checkpoint, out, *, dense_type: str = "auto", dequantize_unsupported: str | None = None,
                force: bool = False) -> ExportSummary:
    """Write the checkpoint ``checkpoint`` as the GGUF file ``out`` (see the module docstring).

    Raises:
        SparsaError: an architecture GGUF cannot name, a weight no ggml type holds (without
            ``dequantize_unsupported``), a bad type name, or an ``out`` that exists (without ``force``).
    """
    import gguf

    for flag, value, allowed in (("--dense-type", dense_type, DENSE_TYPES),
                                 ("--dequantize-unsupported", dequantize_unsupported, DENSE_TYPES[1:3])):
        if value is not None and value not in allowed:
            raise SparsaError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
    check_output_file(Path(out), force=force)  # before the checkpoint loads
    model, tokenizer, _ = load_checkpoint(checkpoint)
    arch = ARCHITECTURES.get(type(model).__name__)
    if arch is None:
        raise SparsaError(f"{checkpoint}: a {type(model).__name__}; GGUF export writes "
                          f"{', '.join(ARCHITECTURES)} (as llama.cpp names them: {', '.join(ARCHITECTURES.values())})")
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(c, "rope_theta")}
    if rope.get("rope_type", "default") != "default":
        raise SparsaError(f"{checkpoint}/config.json: rope type {rope['rope_type']!r}; GGUF export writes default rope")
    if getattr(c, "use_sliding_window", False):
        raise SparsaError(f"{checkpoint}/config.json: use_sliding_window; llama.cpp's {arch} attends to the whole context")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    sparse = dict(sparse_linears(model))
    arrays = {f"{fqn}.{a}" for fqn, m in sparse.items() for a in m.weight_format.arrays()}
    tensors = {n: t for n, t in unique_tensors(model).items() if n not in arrays}  # dense ones and biases
    tensors.update({f"{fqn}.weight": m.weight_format for fqn, m in sparse.items()})
    pre = pre_tokenizer(tokenizer)
    counts = Counter()
    with output_file(out, force=force) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(Path(checkpoint).name)
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(c.num_hidden_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_rope_freq_base(float(rope["rope_theta"]))
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
        w.add_vocab_size(c.vocab_size)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_tokenizer(w, Path(checkpoint), pre, c.vocab_size)
        for hf_name, tensor in tensors.items():
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise SparsaError(f"{checkpoint}: tensor {hf_name} has no GGUF name in the {arch} architecture")
            rows = None
            if arch in INTERLEAVED_ROTARY and gguf_name.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias",
                                                                  "attn_k.bias")):
                heads = c.num_attention_heads if "attn_q" in gguf_name else c.num_key_value_heads
                rows = rotary_rows(tensor.shape[0], heads)
            data, qtype = tensor_data(hf_name, tensor, dense_type, dequantize_unsupported, rows)
            w.add_tensor(gguf_name, data, raw_dtype=qtype)
            counts[qtype.name] += 1
        w.add_file_type(file_type(counts))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return ExportSummary(str(out), Path(out).stat().st_size, arch, dict(counts), pre)


def file_type(counts: Counter) -> int:
    """``general.file_type``: the llama.cpp file type of the most common matrix type."""
    import gguf

    top = max((t for t in counts if t != "F32"), key=lambda t: counts[t], default="F32")
    return {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}.get(
        top, getattr(gguf.LlamaFileType, f"MOSTLY_{top}", gguf.LlamaFileType.GUESSED))


def add_tokenizer(w, directory: Path, pre: str | None, vocab_size: int) -> None:
    """The tokenizer fields from ``directory``'s ``tokenizer.json`` (GPT-2 style BPE)."""
    import gguf

    try:
        vocab = gguf.vocab.BpeVocab(directory)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise SparsaError(f"{directory}: no BPE tokenizer GGUF can store ({err})") from None
    tokens, types = [], []
    for text, _, kind in vocab.all_tokens():
        tokens.append(text)
        types.append(kind)
    if len(tokens) > vocab_size:
        raise SparsaError(f"{directory}: the tokenizer has {len(tokens)} tokens, the model {vocab_size} embeddings")
    tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), vocab_size)]
    types += [gguf.TokenType.UNUSED] * (vocab_size - len(types))
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size).add_to_gguf(w, quiet=True)
