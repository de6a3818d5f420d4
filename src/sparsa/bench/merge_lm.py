"""Language-model tasks for ``sparsa bench merge``: SmolLM2-135M fine-tuned on different text.

The base is the embedded SmolLM2-135M in fp32. Each task is a corpus of
:mod:`sparsa.data.corpora` (``wiki``, ``shakespeare``): the top ``tuned_layers`` decoder blocks
(every tensor of them; the embeddings, the final norm and the tied head stay the base's) are
fine-tuned with AdamW on ``train_windows`` windows of ``seqlen`` tokens drawn from the corpus's
calibration part; the test windows open its evaluation part. Windows carry the tokenizer's BOS
token as the ``bos`` setting (a ``--bos`` protocol of :mod:`sparsa.data.tokens`) says. The frozen
blocks below are run once per window, and their outputs (the tuned blocks' inputs) are kept:
training and every evaluation run the tuned blocks and the head only. A task vector therefore
covers the tuned blocks' ``params`` parameters, and bits per parameter count over those.

Fine-tuned blocks are cached as one safetensors file named by a hash of the settings (never
pickle); the first build trains for some minutes on a 2-core CPU.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparsa.compress.sequential import block_inputs, decoder_layers
from sparsa.data.corpora import CORPORA, load_corpus
from sparsa.data.tokens import BOS_PROTOCOLS, bos_for, calibration_windows, eval_windows, tokenize
from sparsa.errors import SparsaError
from sparsa.nn.safetensors_io import read_states, write_states

State = dict[str, torch.Tensor]
LM_SUITE_VERSION = 1


@dataclass(frozen=True)
class LMSuiteSettings:
    """Tasks, the tuned blocks and their fine-tuning.

    Attributes:
        model: the base (a name or path :func:`sparsa.nn.models.load_model` takes).
        tasks: corpora, one task each.
        tuned_layers: top decoder blocks fine-tuned per task.
        seqlen: tokens per window.
        train_windows: windows per task for fine-tuning (also the router's query set).
        test_windows: windows per task scored.
        steps, batch_size, lr: AdamW (constant rate, no weight decay) over the tuned blocks.
        seed: the windows drawn and the batch order.
        bos: the ``--bos`` protocol of every window: auto, once or never.
    """

    model: str = "smollm2-135m"
    tasks: tuple[str, ...] = ("wiki", "shakespeare")
    tuned_layers: int = 2
    seqlen: int = 128
    train_windows: int = 384
    test_windows: int = 16
    steps: int = 90
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    bos: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        bad = [t for t in self.tasks if t not in CORPORA]
        if bad or len(self.tasks) < 2 or len(set(self.tasks)) < len(self.tasks):
            raise SparsaError(f"merge LM suite: tasks {list(self.tasks)}; need two or more of {', '.join(CORPORA)}")
        if self.tuned_layers < 1 or self.seqlen < 2 or min(self.train_windows, self.test_windows, self.batch_size) < 1:
            raise SparsaError("merge LM suite: tuned_layers, train_windows, test_windows and batch_size must be "
                              "positive, seqlen at least 2")
        if self.bos not in BOS_PROTOCOLS:
            raise SparsaError(f"merge LM suite: bos {self.bos!r}; choose from {', '.join(BOS_PROTOCOLS)}")

    def key(self) -> str:
        """16 hex digits naming these settings (and :data:`LM_SUITE_VERSION`) in the cache."""
        text = json.dumps({"version": LM_SUITE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class LMTasks:
    """The LM tasks as ``sparsa bench merge`` scores them (see :mod:`sparsa.bench.merge`).

    A batch is ``(hidden, ids)``: the tuned blocks' inputs [b, seqlen, hidden] fp32 and the
    windows' token ids [b, seqlen] int64. Weights are state dicts of the tuned blocks only, named
    as in the model (``model.layers.28.mlp.up_proj.weight``).
    """

    metric = "perplexity"

    def __init__(self, settings: LMSuiteSettings, *, cache_dir: str | Path | None = None, progress: bool = False):
        from sparsa.nn.models import load_model

        self.settings = settings
        loaded = load_model(settings.model)
        model, tokenizer = loaded.model.float().eval(), loaded.tokenizer
        for p in model.parameters():
            p.requires_grad_(False)
        layers = decoder_layers(model)
        if settings.tuned_layers >= len(layers):
            raise SparsaError(f"merge LM suite: tuned_layers {settings.tuned_layers} must be fewer than the "
                              f"model's {len(layers)} blocks")
        first = len(layers) - settings.tuned_layers
        self.blocks = {f"model.layers.{i}.": layers[i] for i in range(first, len(layers))}
        self.norm, self.head = model.model.norm, model.lm_head
        self.tasks = list(settings.tasks)
        self.base = {p + k: v.detach().clone() for p, b in self.blocks.items() for k, v in b.state_dict().items()}
        self.bos = bos_for(tokenizer, settings.bos)
        self.train, self.test, self.kwargs = {}, {}, {}
        for task in tqdm(self.tasks, desc="merge LM suite: capture", disable=not progress):
            corpus = load_corpus(task)
            ids = {part: tokenize(tokenizer, getattr(corpus, part)) for part in ("calib", "eval")}
            windows = {"train": calibration_windows(ids["calib"], settings.train_windows, settings.seqlen,
                                                    settings.seed, bos=self.bos, source=f"{task} calibration text"),
                       "test": eval_windows(ids["eval"], settings.seqlen, settings.test_windows, bos=self.bos,
                                            source=f"{task} evaluation text")}
            for part, w in windows.items():
                hidden, kwargs = block_inputs(model, w, "cpu", first)
                getattr(self, part)[task] = (torch.cat(hidden), w)
                self.kwargs = dict(zip(self.blocks, kwargs[first:]))  # each tuned block's own
        self.finetuned = self._finetuned(cache_dir, progress)

    @property
    def params(self) -> int:
        return sum(t.numel() for t in self.base.values())

    # -- the model's tuned part ------------------------------------------------------------
    def hidden_out(self, weights: State, hidden: torch.Tensor) -> torch.Tensor:
        """[b, T, D] tuned blocks' inputs -> the final norm's output [b, T, D] under ``weights``."""
        h = hidden
        for prefix, block in self.blocks.items():
            local = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            out = torch.func.functional_call(block, local, (h,), self.kwargs[prefix])
            h = out[0] if isinstance(out, tuple) else out
        return self.norm(h)

    def nll(self, weights: State, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Summed next-token negative log-likelihood (nats) of ``ids`` [b, T] over ``b * (T - 1)`` tokens."""
        logits = self.head(self.hidden_out(weights, hidden))[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")

    # -- what bench merge asks of a task family ----------------------------------------------
    def task_vectors(self) -> dict[str, State]:
        return {t: {k: v - self.base[k] for k, v in s.items()} for t, s in self.finetuned.items()}

    def loss(self, task: str):
        """``loss(weights, step)``: mean next-token loss on batch ``step`` of the task's train windows."""
        hidden, ids = self.train[task]
        s = self.settings

        def loss(weights: State, step: int) -> torch.Tensor:
            rows = self._batch_rows(len(ids), step, f"{task}/{step}")
            return self.nll(weights, hidden[rows], ids[rows]) / (len(rows) * (ids.shape[1] - 1))
        return loss

    def _batch_rows(self, n: int, step: int, salt: str) -> torch.Tensor:
        seed = int(hashlib.sha256(f"{self.settings.seed}/{salt}".encode()).hexdigest()[:8], 16)
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(self.settings.batch_size, n)]

    def test_batches(self, task: str, batch: int):
        hidden, ids = self.test[task]
        return [(hidden[i:i + batch], ids[i:i + batch]) for i in range(0, len(ids), batch)]

    @torch.inference_mode()
    def evaluate(self, weights: State, hidden: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
        """``(summed nll, tokens)`` of one batch."""
        return float(self.nll(weights, hidden, ids)), ids.shape[0] * (ids.shape[1] - 1)

    @staticmethod
    def summarize(total: float, count: int) -> float:
        """Perplexity from a summed nll over ``count`` tokens."""
        return math.exp(total / count)

    @staticmethod
    def normalize(value: float, individual: float) -> float:
        """The individual model's perplexity over this one's (1 = as good, lower = worse)."""
        return individual / value

    def query(self, task: str, n: int) -> torch.Tensor:
        return self.train[task][0][:n]

    @torch.inference_mode()
    def features(self, kind: str, hidden: torch.Tensor) -> torch.Tensor:
        """[b, D] per window: ``input`` the mean of the tuned blocks' inputs, ``output`` the mean of the
        base's final norm output."""
        return (hidden if kind == "input" else self.hidden_out(self.base, hidden)).mean(dim=1)

    # -- fine-tuning -----------------------------------------------------------------------------
    def _finetuned(self, cache_dir, progress: bool) -> dict[str, State]:
        s = self.settings
        path = Path(cache_dir) / f"lm-merge-suite-{s.key()}.safetensors" if cache_dir is not None else None
        if path is not None and path.is_file():
            groups, _ = read_states(path, s.key(), list(self.tasks), list(self.base))
            return groups
        tuned = {}
        with tqdm(total=s.steps * len(self.tasks), desc="merge LM suite: fine-tune", disable=not progress) as bar:
            for task in self.tasks:
                weights = {k: v.clone().requires_grad_(True) for k, v in self.base.items()}
                opt = torch.optim.AdamW(list(weights.values()), lr=s.lr, weight_decay=0.0)
                hidden, ids = self.train[task]
                for step in range(s.steps):
                    rows = self._batch_rows(len(ids), step, f"finetune/{task}/{step}")
                    loss = self.nll(weights, hidden[rows], ids[rows]) / (len(rows) * (ids.shape[1] - 1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    bar.update()
                tuned[task] = {k: v.detach().clone() for k, v in weights.items()}
        if path is not None:
            write_states(path, tuned, {"settings": json.dumps(asdict(s)), "key": s.key()})
        return tuned
