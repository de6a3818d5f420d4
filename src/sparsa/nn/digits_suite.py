"""A small, offline, deterministic multi-task suite for model-merging benchmarks.

Tasks are the same ten-class digit recognition in different input domains
(:mod:`sparsa.data.digits_tasks`). A tiny ViT (:class:`~sparsa.nn.digits_vit.DigitsViT`) is
pretrained briefly on a small pooled share (10%) of every domain's train split, so the base is
clearly worse than a specialist; a copy of the base is then fine-tuned, all parameters, on each
domain's full train split. Both phases: AdamW, cosine decay to 0, label smoothing, and Gaussian
input jitter on every batch (the one regulariser that lifted the ``noise`` domain past 0.9). The
task vector of domain t is ``finetuned[t] - base``. Everything is seeded and trained on one
thread with a fixed batch order: the same settings give bit-identical state dicts on one machine.
Built suites may be cached as one safetensors file named by a hash of the settings (never pickle;
:func:`~sparsa.nn.safetensors_io.write_states`).
"""

import contextlib
import hashlib
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsa.data.digits_tasks import DOMAINS, digits_domain
from sparsa.errors import SparsaError
from sparsa.nn.digits_vit import DigitsViT
from sparsa.nn.safetensors_io import read_states, write_states

State = dict[str, torch.Tensor]
SUITE_VERSION = 1  # bump when training changes, so old cache files are not reused
EVAL_BATCH = 512


@dataclass(frozen=True)
class SuiteSettings:
    """Domains, model size and training of the suite.

    Attributes:
        domains: the tasks, names from :data:`sparsa.data.digits_tasks.DOMAINS`.
        dim, depth, heads: the :class:`DigitsViT`.
        pretrain_share: share of each domain's train split pooled for pretraining.
        pretrain_steps, finetune_steps: AdamW steps (cosine decay to 0) of each phase.
        batch_size, lr, weight_decay: AdamW, both phases.
        label_smoothing: of the cross-entropy, both phases.
        jitter: std of the Gaussian noise added to every training batch's pixels, both phases.
        seed: initialisation, the pretraining share and batch order.
    """

    domains: tuple[str, ...] = DOMAINS[:5]
    dim: int = 64
    depth: int = 2
    heads: int = 4
    pretrain_share: float = 0.1
    pretrain_steps: int = 300
    finetune_steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    label_smoothing: float = 0.1
    jitter: float = 0.15
    seed: int = 0

    def __post_init__(self):
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad or not self.domains or len(set(self.domains)) < len(self.domains):
            raise SparsaError(f"merge suite: bad domains {list(self.domains)}; known: {', '.join(DOMAINS)}")
        if self.dim % self.heads:
            raise SparsaError(f"merge suite: dim {self.dim} is not a multiple of heads {self.heads}")
        object.__setattr__(self, "domains", tuple(self.domains))

    @classmethod
    def quick(cls) -> "SuiteSettings":
        """Half the fine-tuning steps (same base): about half the time, a little lower accuracy."""
        return cls(finetune_steps=300)

    def key(self) -> str:
        """16 hex digits naming these settings (and :data:`SUITE_VERSION`) in the cache."""
        text = json.dumps({"version": SUITE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Suite:
    """A built suite: the base and the per-domain fine-tuned state dicts, and their test accuracies.

    Attributes:
        settings: what built it.
        base: the pretrained model's state dict (float32 tensors).
        finetuned: per domain, the state dict fine-tuned on that domain.
        base_accuracy: per domain, the base's accuracy on that domain's test split.
        finetuned_accuracy: per domain, that domain's fine-tuned model's accuracy on its test split.
    """

    settings: SuiteSettings
    base: State
    finetuned: dict[str, State]
    base_accuracy: dict[str, float] = field(default_factory=dict)
    finetuned_accuracy: dict[str, float] = field(default_factory=dict)

    def task_vectors(self) -> dict[str, State]:
        """Per domain, ``finetuned[domain] - base``, tensor by tensor."""
        return {d: {k: v - self.base[k] for k, v in s.items()} for d, s in self.finetuned.items()}


def make_model(settings: SuiteSettings, state: State | None = None) -> DigitsViT:
    """A :class:`DigitsViT` of ``settings``' size, in eval mode, holding ``state`` when given."""
    model = DigitsViT(settings.dim, settings.depth, settings.heads)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


@torch.inference_mode()
def features(state: State, x: torch.Tensor, settings: SuiteSettings) -> torch.Tensor:
    """x: float32 [n, 8, 8] -> the CLS features of the model holding ``state``, float32 [n, dim]."""
    model = make_model(settings, state)
    return torch.cat([model.features(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


@torch.inference_mode()
def accuracy(state: State, x: torch.Tensor, y: torch.Tensor, settings: SuiteSettings) -> float:
    """Share of ``x`` (float32 [n, 8, 8]) the model holding ``state`` labels as ``y`` (int64 [n])."""
    model = make_model(settings, state)
    right = sum(int((model(x[i:i + EVAL_BATCH]).argmax(-1) == y[i:i + EVAL_BATCH]).sum())
                for i in range(0, len(x), EVAL_BATCH))
    return right / len(x)


def task_loss(settings: SuiteSettings, domain: str):
    """``loss(weights, step) -> scalar``: the fine-tuning loss of ``domain`` (label-smoothed
    cross-entropy on ``batch_size`` train rows with ``jitter`` pixel noise) for a whole state dict
    ``weights``, differentiable in it; batch ``step`` is drawn from a generator seeded by the
    domain and ``step``, so it is the same on every call."""
    x, y = digits_domain(domain, "train")
    model = make_model(settings)
    batch = min(settings.batch_size, len(x))

    def loss(weights: State, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_seed(settings, f"{domain}/flex/{step}"))
        rows = torch.randperm(len(x), generator=gen)[:batch]
        inputs = x[rows] + settings.jitter * torch.randn(x[rows].shape, generator=gen)
        logits = torch.func.functional_call(model, weights, (inputs,))
        return F.cross_entropy(logits, y[rows], label_smoothing=settings.label_smoothing)
    return loss


def _seed(settings: SuiteSettings, phase: str) -> int:
    """A seed for ``phase`` (pretrain or a domain), independent of the order phases run in."""
    return zlib.crc32(f"{settings.seed}/{phase}".encode())


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, settings: SuiteSettings, seed: int,
           bar: tqdm) -> None:
    """AdamW on all parameters for ``steps`` batches of (x [n, 8, 8], y [n]), cosine decay to 0.

    Batches walk permutations of the rows drawn from ``seed`` (a new one when too few rows are
    left); each batch gets ``settings.jitter`` Gaussian pixel noise from the same generator.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))))
    batch = min(settings.batch_size, len(x))
    order, at = torch.randperm(len(x), generator=gen), 0
    model.train()
    for _ in range(steps):
        if at + batch > len(x):
            order, at = torch.randperm(len(x), generator=gen), 0
        rows, at = order[at:at + batch], at + batch
        inputs = x[rows] + settings.jitter * torch.randn(x[rows].shape, generator=gen)
        loss = F.cross_entropy(model(inputs), y[rows], label_smoothing=settings.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update()
    model.eval()


def _pretrain_data(settings: SuiteSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """``pretrain_share`` of every domain's train split (seeded rows per domain), pooled."""
    xs, ys = [], []
    for domain in settings.domains:
        x, y = digits_domain(domain, "train")
        take = max(1, round(settings.pretrain_share * len(x)))
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(_seed(settings, f"share/{domain}")))
        xs.append(x[rows[:take]])
        ys.append(y[rows[:take]])
    return torch.cat(xs), torch.cat(ys)


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _snapshot(model: nn.Module) -> State:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def train_suite(settings: SuiteSettings, *, progress: bool = False) -> Suite:
    """Pretrain the base, fine-tune a copy per domain, measure test accuracies (one thread)."""
    total = settings.pretrain_steps + settings.finetune_steps * len(settings.domains)
    with _one_thread(), tqdm(total=total, desc="merge suite: train", disable=not progress) as bar:
        with torch.random.fork_rng(devices=[]):  # seed the initialisation, leave the caller's RNG alone
            torch.manual_seed(settings.seed)
            model = make_model(settings)
        _train(model, *_pretrain_data(settings), settings.pretrain_steps, settings, _seed(settings, "pretrain"), bar)
        base, finetuned = _snapshot(model), {}
        for domain in settings.domains:
            model.load_state_dict(base)
            x, y = digits_domain(domain, "train")
            _train(model, x, y, settings.finetune_steps, settings, _seed(settings, f"finetune/{domain}"), bar)
            finetuned[domain] = _snapshot(model)
        tests = {d: digits_domain(d, "test") for d in settings.domains}
        base_acc = {d: accuracy(base, *tests[d], settings) for d in settings.domains}
        tuned_acc = {d: accuracy(finetuned[d], *tests[d], settings) for d in settings.domains}
    return Suite(settings, base, finetuned, base_acc, tuned_acc)


def cache_path(settings: SuiteSettings, cache_dir: str | Path) -> Path:
    """Where ``settings``' suite is cached under ``cache_dir``."""
    return Path(cache_dir) / f"digits-merge-suite-{settings.key()}.safetensors"


def save_suite(suite: Suite, path: str | Path) -> None:
    """Write ``suite`` to ``path`` (:func:`write_states`)."""
    groups = {"base": suite.base, **{f"finetuned/{d}": s for d, s in suite.finetuned.items()}}
    write_states(path, groups, {"settings": json.dumps(asdict(suite.settings)), "key": suite.settings.key(),
                                "base_accuracy": json.dumps(suite.base_accuracy),
                                "finetuned_accuracy": json.dumps(suite.finetuned_accuracy)})


def load_suite(path: str | Path, settings: SuiteSettings) -> Suite:
    """The suite saved at ``path``; an error when it was built with other settings or is unreadable."""
    names = list(make_model(settings).state_dict())
    groups, meta = read_states(path, settings.key(), ["base", *(f"finetuned/{d}" for d in settings.domains)], names)
    finetuned = {d: groups[f"finetuned/{d}"] for d in settings.domains}
    return Suite(settings, groups["base"], finetuned, json.loads(meta["base_accuracy"]),
                 json.loads(meta["finetuned_accuracy"]))


def build_suite(settings: SuiteSettings, *, cache_dir: str | Path | None = None, progress: bool = False) -> Suite:
    """The suite of ``settings``: loaded from ``cache_dir`` when cached there, else trained (and cached).

    Args:
        settings: domains, model and training.
        cache_dir: folder of cached suites (one safetensors file per settings hash); None: no cache.
        progress: show a tqdm bar over the training steps.

    Returns:
        The :class:`Suite`; trained suites are bit-identical across runs on one machine.
    """
    path = None if cache_dir is None else cache_path(settings, cache_dir)
    if path is not None and path.exists():
        return load_suite(path, settings)
    suite = train_suite(settings, progress=progress)
    if path is not None:
        save_suite(suite, path)
    return suite
