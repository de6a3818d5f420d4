"""``sparsa bench merge``: compressed task vectors and routed merging on offline multi-task suites.

Two task families, each scored by every method:

* digits (:mod:`sparsa.nn.digits_suite`, scored through :mod:`sparsa.bench.merge_digits`): a small ViT pretrained briefly on pooled digits, then
  fine-tuned separately per input domain (:mod:`sparsa.data.digits_tasks`); accuracy.
* language (:mod:`sparsa.bench.merge_lm`, full run only): SmolLM2-135M's top blocks fine-tuned
  per corpus (wiki, shakespeare); perplexity.

Each task vector is ``theta_t - theta_base``. Methods:

* ``pretrained`` and ``individual`` (each fine-tuned model on its own task: the normalizer);
* static merges (one model for all tasks): task arithmetic, TIES, DARE;
* per-task reconstructions with the task id known (oracle): EMR-Merging, TALL-masks, T-Switch,
  FlexSwitch (:mod:`sparsa.merge.methods.flexswitch`, trained on each task's own training data);
* Auto-Switch: T-Switch vectors mixed per batch by the KNN router on the base model's output
  features (the paper's mean neighbour shares, and a vote: all weight on the largest share), by
  the KNN router voting in a learned low-rank metric of the base's input features, and by the
  centroid router on the input features per batch and per sample (ours;
  :mod:`sparsa.merge.router`); Auto-FlexSwitch: FlexSwitch vectors chosen by the learned-metric
  KNN vote; on the digits, the centroid row again with the task vectors as sparse side branches of
  the linear layers instead of rebuilt weights (:mod:`sparsa.merge.switch_linear`). Routed rows never
  see the task: only the batch's inputs.

Per method: the metric per task and normalized to ``individual`` (accuracy over individual's;
individual's perplexity over the method's), their means, stored bits per parameter per task
(format bytes for T-Switch and FlexSwitch, plus the router's for routed rows; the methods'
storage formulas for the baselines), and the median time of one batch including choosing and
rebuilding the weights.

A family (``DigitsTasks``, ``LMTasks``) provides: ``tasks``, ``base``, ``finetuned``, ``params``,
``metric``, ``task_vectors()``, ``loss(task)`` (FlexSwitch's), ``test_batches(task, batch)``,
``evaluate(weights, inputs, targets) -> (total, count)``, ``summarize(total, count)``,
``normalize(value, individual)``, ``query(task, n)`` (router memory inputs) and
``features(kind, inputs)`` (``output`` or ``input``, [b, d]).
"""

from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from sparsa.bench.merge_digits import DigitsTasks
from sparsa.bench.merge_lm import LMSuiteSettings, LMTasks
from sparsa.bench.merge_report import figure, markdown
from sparsa.bench.results import machine, write_results
from sparsa.bench.timing import median, timed
from sparsa.merge.bank import SwitchBank
from sparsa.merge.config import FlexSwitchConfig, RouterConfig, TSwitchConfig
from sparsa.merge.methods.flexswitch import flexswitch
from sparsa.merge.methods.tswitch import compress_task_vector
from sparsa.merge.registry import METHODS, get_method, storage_bits
from sparsa.merge.router import CentroidRouter, KNNRouter, MetricKNNRouter
from sparsa.merge.task_vector import apply_task_vector
from sparsa.nn.digits_suite import SuiteSettings, build_suite

STATIC = tuple(n for n, m in METHODS.items() if m.kind == "static")  # task_arithmetic, ties, dare
PER_TASK = tuple(n for n, m in METHODS.items() if m.kind == "per_task")  # emr, tall_masks
ROUTED = ("auto_switch", "auto_switch_vote", "auto_switch_metric", "auto_switch_centroid", "auto_switch_per_sample",
          "auto_flexswitch")


@dataclass(frozen=True)
class MergeBenchSettings:
    """The suites, the method configs, the batch sizes and the seed of DARE's drops and the metric.

    ``lm``: the language tasks (None skips them); ``lm_flexswitch``: FlexSwitch there, allocation
    and fit without gate training (a step costs about a second on 2 cores; 2026-11-23, 40 steps
    traded wiki for shakespeare, perplexity 19.01 / 44.70 against 18.04 / 45.90 untrained, 0.956
    against 0.968 normalized); ``lm_batch``: windows per routed batch.
    """

    suite: SuiteSettings = field(default_factory=SuiteSettings)
    tswitch: TSwitchConfig = field(default_factory=TSwitchConfig)
    flexswitch: FlexSwitchConfig = field(default_factory=FlexSwitchConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    batch: int = 32
    lm: LMSuiteSettings | None = field(default_factory=LMSuiteSettings)
    lm_flexswitch: FlexSwitchConfig = field(default_factory=lambda: FlexSwitchConfig(steps=0))
    lm_batch: int = 4
    seed: int = 0

    @classmethod
    def quick(cls) -> "MergeBenchSettings":
        """The digits tasks only, with half the fine-tuning."""
        return cls(suite=SuiteSettings.quick(), lm=None)


def score(name: str, family, predict, batch: int, bits: float, individual: dict | None) -> dict:
    """One method's row. ``predict(task, inputs, targets) -> (total, count)`` scores a batch, choosing
    its weights first (the task is given for oracle methods only; routed ones ignore it)."""
    values, seconds = {}, []
    for task in family.tasks:
        total = count = 0
        for inputs, targets in family.test_batches(task, batch):
            (t, c), elapsed = timed(lambda: predict(task, inputs, targets))
            seconds.append(elapsed)
            total, count = total + t, count + c
        values[task] = family.summarize(total, count)
    individual = individual or values
    norm = {t: family.normalize(values[t], individual[t]) for t in values}
    return {"method": name, family.metric: values, "normalized": norm,
            f"mean_{family.metric}": sum(values.values()) / len(values),
            "mean_normalized": sum(norm.values()) / len(norm), "bits_per_param": bits,
            "batch_ms": 1e3 * median(seconds)}


def fixed(family, states):
    """A predictor evaluating each task with ``states(task)``."""
    return lambda task, x, y: family.evaluate(states(task), x, y)


def rebuilt(family, bank: SwitchBank):
    """``run(task_weights, x, y)``: rebuild the bank's weights once for the batch, then evaluate it."""
    return lambda w, x, y: family.evaluate(bank.weights(w), x, y)


def routed(family, router, kind: str, run):
    """A predictor for a routed row: embed the batch with the base model, let the router weigh the
    tasks, then ``run(task_weights, x, y)`` (:func:`rebuilt`, or a family's side-branch model)."""
    def predict(task, x, y):
        w = router.batch_weights(family.features(kind, x))
        return run({t: float(wt) for t, wt in zip(family.tasks, w)}, x, y)
    return predict


def per_sample(family, router, kind: str, bank: SwitchBank):
    """A predictor routing each sample to its own task: one weight rebuild per task present in the batch."""
    def predict(task, x, y):
        tasks = router.route(family.features(kind, x))
        total = count = 0
        for t in tasks.unique().tolist():
            rows = tasks == t
            a, b = family.evaluate(bank.task(family.tasks[t]), x[rows], y[rows])
            total, count = total + a, count + b
        return total, count
    return predict


@torch.inference_mode()
def router_accuracy(family, router, kind: str, batch: int) -> float:
    """Share of single test samples the router sends to their own task."""
    right = total = 0
    for i, task in enumerate(family.tasks):
        for x, _ in family.test_batches(task, batch):
            right += int((router.route(family.features(kind, x)) == i).sum())
            total += len(x)
    return right / total


def run_family(family, s: MergeBenchSettings, flex_config: FlexSwitchConfig, batch: int, *,
               progress: bool = True) -> list[dict]:
    """Every method's row on one task family."""
    tasks, taus, numel = family.tasks, family.task_vectors(), family.params
    gen = lambda: torch.Generator().manual_seed(s.seed)  # noqa: E731
    per_param = lambda nbytes: 8 * nbytes / numel / len(tasks)  # noqa: E731
    rows = []
    steps = tqdm(total=4 + len(STATIC) + len(PER_TASK) + len(ROUTED) + hasattr(family, "side_branch"),
                 desc=f"bench merge {family.metric}",
                 disable=not progress)

    individual = score("individual", family, fixed(family, lambda t: family.finetuned[t]), batch, 32.0, None)

    def add(name, predict, bits):
        rows.append(score(name, family, predict, batch, bits, individual[family.metric]))
        steps.update()
        return rows[-1]

    add("pretrained", fixed(family, lambda t: family.base), 0.0)
    rows.append(individual)
    steps.update()
    for name in STATIC:
        merged = apply_task_vector(family.base, get_method(name)(taus, generator=gen()))
        add(name, fixed(family, lambda t, m=merged: m), storage_bits(name, numel, len(tasks)) / numel / len(tasks))
    for name in PER_TASK:
        per = {t: apply_task_vector(family.base, v) for t, v in get_method(name)(taus, generator=gen()).items()}
        add(name, fixed(family, lambda t, p=per: p[t]), storage_bits(name, numel, len(tasks)) / numel / len(tasks))

    compressed = {t: compress_task_vector(taus[t], s.tswitch) for t in tasks}
    bank = SwitchBank(family.base, compressed)
    tswitch_bits = per_param(sum(c.nbytes for c in compressed.values()))
    add("tswitch", fixed(family, bank.task), tswitch_bits)
    flex = {t: flexswitch(family.base, taus[t], family.loss(t), flex_config, progress=progress)[0] for t in tasks}
    flex_bank = SwitchBank(family.base, flex)
    flex_bits = per_param(sum(c.nbytes for c in flex.values()))
    add("flexswitch", fixed(family, flex_bank.task), flex_bits)

    r = s.router
    inputs = {t: family.query(t, r.samples_per_task) for t in tasks}
    query = {kind: torch.cat([family.features(kind, inputs[t]) for t in tasks]) for kind in ("output", "input")}
    labels = torch.arange(len(tasks)).repeat_interleave(torch.tensor([len(inputs[t]) for t in tasks]))
    routers = {"knn": (KNNRouter(query["output"], labels, len(tasks), r.k), "output"),
               "knn_vote": (KNNRouter(query["output"], labels, len(tasks), r.k, "vote"), "output"),
               "centroid": (CentroidRouter(query["input"], labels, len(tasks)), "input"),
               "metric": (MetricKNNRouter(query["input"], labels, len(tasks), r.k, "vote", r.rank, r.metric_steps,
                                          seed=s.seed), "input")}
    accuracy = {key: router_accuracy(family, router, kind, batch) for key, (router, kind) in routers.items()}
    rows_routed = [("auto_switch", "knn", routed, rebuilt(family, bank), tswitch_bits),
                   ("auto_switch_vote", "knn_vote", routed, rebuilt(family, bank), tswitch_bits),
                   ("auto_switch_metric", "metric", routed, rebuilt(family, bank), tswitch_bits),
                   ("auto_switch_centroid", "centroid", routed, rebuilt(family, bank), tswitch_bits),
                   ("auto_switch_per_sample", "centroid", per_sample, bank, tswitch_bits),
                   ("auto_flexswitch", "metric", routed, rebuilt(family, flex_bank), flex_bits)]
    if hasattr(family, "side_branch"):
        rows_routed.append(("auto_switch_side", "centroid", routed, family.side_branch(compressed), tswitch_bits))
    for name, key, predictor, weights, bits in rows_routed:
        router, kind = routers[key]
        row = add(name, predictor(family, router, kind, weights), bits + per_param(router.nbytes))
        row["router_accuracy"] = accuracy[key]
    steps.close()
    return rows


def run_merge(s: MergeBenchSettings, *, cache_dir=None, progress: bool = True) -> dict:
    """Build (or load) the suites, score every method, return the payload (see the module docstring)."""
    digits = DigitsTasks(build_suite(s.suite, cache_dir=cache_dir, progress=progress))
    payload = {"settings": asdict(s), "machine": machine("cpu"), "params": digits.params, "domains": digits.tasks,
               "rows": run_family(digits, s, s.flexswitch, s.batch, progress=progress)}
    if s.lm is not None:
        lm = LMTasks(s.lm, cache_dir=cache_dir, progress=progress)
        payload["lm"] = {"params": lm.params, "tasks": lm.tasks, "bos": lm.bos.to_dict(),
                         "rows": run_family(lm, s, s.lm_flexswitch, s.lm_batch, progress=progress)}
    return payload


def run_merge_bench(s: MergeBenchSettings, *, out_dir="bench/results", name: str = "merge", cache_dir=None,
                    progress: bool = True) -> dict:
    """:func:`run_merge`, then write ``<name>.{json,md,png}`` under ``out_dir``."""
    payload = run_merge(s, cache_dir=cache_dir, progress=progress)
    write_results(out_dir, name, payload, markdown(payload), figure(payload))
    return payload
