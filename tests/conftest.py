"""Shared fixtures: a tiny random Llama with a word-level tokenizer, and paths to real artefacts.

Without a CUDA device the Triton kernels run under the interpreter on the CPU: the variable
must be set before any kernel module is imported (``triton.jit`` reads it at decoration).
"""

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def tiny_tokenizer():
    """Word-level tokenizer over words ``w0`` .. ``w120`` (vocab 128 with specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{f"w{i}": i + 2 for i in range(121)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


@pytest.fixture
def bpe_tokenizer():
    """A byte-level BPE tokenizer of 128 tokens, 3 of them merges (GGUF stores GPT-2 style BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())[:124]
    merges = [(chars[2 * i], chars[2 * i + 1]) for i in range(3)]  # llama.cpp loads a BPE vocab only with merges
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(chars)},
             **{a + b: 125 + i for i, (a, b) in enumerate(merges)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture
def tiny_llama():
    """A 2-layer random Llama (hidden 64, GQA 4/2 heads, tied embeddings), fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def word_text(n_words: int, seed: int = 0) -> str:
    """``n_words`` random vocabulary words of the tiny tokenizer, space separated."""
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{i}" for i in torch.randint(0, 121, (n_words,), generator=g).tolist())


def word_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of 6 to 12 tiny-vocabulary words, each ending in a full stop."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 13, (n,), generator=g).tolist()
    return [f"w{i} " + word_text(length - 1, seed * 100_003 + i) + "." for i, length in enumerate(lengths)]


@pytest.fixture
def tiny_encoder():
    """A 2-layer random BERT (hidden 32) with a word-level tokenizer ([PAD]=0, [CLS] ... [SEP])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from sparsa.nn.encoders import Encoder

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i + 4 for i in range(121)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return Encoder(BertModel(config).eval(), tokenizer, "tiny-bert")


def run_cli(capsys, *argv):
    """Run ``sparsa argv`` in-process; return (exit code, stdout, stderr)."""
    from sparsa.cli import main

    capsys.readouterr()  # what fixtures printed while setting up is not this run's output
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    """The JSON object on the last line of a command's stdout."""
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def hf_dir(tiny_llama, tiny_tokenizer, tmp_path):
    """The tiny Llama saved as a Hugging Face model directory."""
    path = tmp_path / "tiny-hf"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def make_scene(spec: str):
    """(start, truth) of a synthetic bundle-adjustment scene."""
    from sparsa.data.synthetic_scene import SyntheticSpec, synthetic_scene
    from sparsa.sfm.cameras import project

    return synthetic_scene(SyntheticSpec.parse(spec), project)


@pytest.fixture(scope="session")
def small_scene():
    """(start, truth) with 6 cameras, 80 points, SIMPLE_RADIAL."""
    return make_scene("synthetic:cameras=6,points=80,seed=3")


@pytest.fixture(scope="session")
def scene_factory():
    """``make(spec) -> (start, truth)`` for a synthetic spec string."""
    return make_scene


def all_parsers(parser=None, path: tuple[str, ...] = ()):
    """(command words, parser) of ``sparsa`` and of every command and subcommand below it, depth first."""
    import argparse

    from sparsa.cli import build_parser

    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


# A tiny decoder of any family transformers builds: 2 layers, hidden 64, 4 query / 2 key-value heads
# of 16, vocab 128 (the tiny tokenizer's; its [EOS] is 1)
TINY_DECODER = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}


def tiny_decoder(config_cls: str, model_cls: str, overrides: dict):
    """A seeded random tiny decoder (transformers class names, config overrides), fp32, eval mode."""
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**TINY_DECODER, **overrides})
    return getattr(transformers, model_cls)(config).eval()


@pytest.fixture
def one_thread():
    """Run on one CPU thread: tiny ops gain nothing from more, and OpenMP threads spin-waiting for a
    descheduled peer on a busy 2-core machine made tiny-model tests 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_cached():
    """SmolLM2's GGUF converted once into the cache, so a test that reads a command's stderr sees the
    command's own output, not the one-time conversion's progress bar (transformers' own tqdm)."""
    from sparsa.nn.models import DEFAULT_MODEL, cached_gguf, smollm2_gguf

    return cached_gguf(smollm2_gguf(), DEFAULT_MODEL)


def synthetic_database(directory: Path, images: int = 30, points: int = 300, seed: int = 0,
                       pixel_noise: float = 1.0) -> tuple[Path, Path]:
    """(database.db, ground-truth model dir) written by ``pycolmap.synthesize_dataset``: one
    SIMPLE_RADIAL camera, exhaustive matches (inlier ratio 0.7 in ``matches``), keypoints with
    ``pixel_noise`` px of Gaussian noise."""
    import pycolmap

    directory.mkdir(parents=True, exist_ok=True)
    pycolmap.set_random_seed(seed)
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, images
    options.num_points3D, options.inlier_match_ratio = points, 0.7
    db = pycolmap.Database.open(str(directory / "database.db"))
    truth = pycolmap.synthesize_dataset(options, db)
    noise = pycolmap.SyntheticNoiseOptions()
    noise.point2D_stddev = pixel_noise
    pycolmap.synthesize_noise(noise, truth, db)
    db.close()
    (directory / "truth").mkdir()
    truth.write(str(directory / "truth"))
    return directory / "database.db", directory / "truth"


@pytest.fixture(scope="session")
def colmap_database(tmp_path_factory):
    """(database.db, ground-truth model) of 30 images and 300 points (see :func:`synthetic_database`);
    read-only: copy it before changing it."""
    return synthetic_database(tmp_path_factory.mktemp("colmap_db"))
