"""``sparsa bench merge``: compressed task vectors and routed merging on an offline multi-task suite.

The suite (:mod:`sparsa.bench.merge_suite`): a small ViT pretrained briefly on pooled digits,
then fine-tuned separately per input domain (:mod:`sparsa.data.digits_tasks`); each task
vector is ``theta_t - theta_base``. Every method is scored on every domain's test split:

* ``pretrained`` and ``individual`` (each fine-tuned model on its own domain: the normalizer);
* static merges (one model for all domains): task arithmetic, TIES, DARE;
* per-task reconstructions with the task id known (oracle): EMR-Merging, TALL-masks, T-Switch,
  FlexSwitch (:mod:`sparsa.merge.flexswitch`, trained on each domain's own train split);
* Auto-Switch: T-Switch vectors mixed per batch by the KNN router on the base model's output
  features (the paper's mean neighbour shares, and a vote: all weight on the largest share), by
  the KNN router voting in a learned low-rank metric of the patch embeddings, and by the centroid
  router on the patch embeddings per batch and per sample (ours; :mod:`sparsa.merge.router`);
  Auto-FlexSwitch: FlexSwitch vectors chosen by the learned-metric KNN vote. Routed rows never
  see the domain: only the batch's inputs.

Per method: accuracy and accuracy normalized to ``individual`` per domain (and their means),
stored bits per parameter per task (format bytes for T-Switch; the methods' storage formulas for
the baselines), and for the switch methods the latency of one batch including the weight rebuild.
"""

import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from sparsa.bench.merge_report import figure, markdown
from sparsa.bench.merge_suite import SuiteSettings, build_suite, make_model, task_loss
from sparsa.bench.results import machine, write_results
from sparsa.data.digits_tasks import digits_domain
from sparsa.merge.bank import SwitchBank
from sparsa.merge.baselines import storage_bits
from sparsa.merge.config import FlexSwitchConfig, RouterConfig, TSwitchConfig
from sparsa.merge.flexswitch import flexswitch
from sparsa.merge.registry import get_method
from sparsa.merge.router import CentroidRouter, KNNRouter, MetricKNNRouter
from sparsa.merge.task_vector import apply_task_vector
from sparsa.merge.tswitch import compress_task_vector

STATIC = ("task_arithmetic", "ties", "dare")
PER_TASK = ("emr", "tall_masks")


@dataclass(frozen=True)
class MergeBenchSettings:
    """The suite, T-Switch, FlexSwitch and router configs, the routed batch size and the seed of DARE's drops."""

    suite: SuiteSettings = field(default_factory=SuiteSettings)
    tswitch: TSwitchConfig = field(default_factory=TSwitchConfig)
    flexswitch: FlexSwitchConfig = field(default_factory=FlexSwitchConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    batch: int = 32
    seed: int = 0

    @classmethod
    def quick(cls) -> "MergeBenchSettings":
        return cls(suite=SuiteSettings.quick())


@dataclass
class Domains:
    """Each domain's test split and the router's query set (train samples)."""

    test: dict[str, tuple[torch.Tensor, torch.Tensor]]
    query: dict[str, torch.Tensor]

    @classmethod
    def load(cls, domains, samples_per_task: int) -> "Domains":
        test = {d: digits_domain(d, "test") for d in domains}
        query = {d: digits_domain(d, "train")[0][:samples_per_task] for d in domains}
        return cls(test, query)


@torch.inference_mode()
def batch_accuracy(model, predict, x: torch.Tensor, y: torch.Tensor, batch: int):
    """Accuracy of ``predict(model, xb)`` over ``x`` in batches, and the median seconds per batch
    (choosing and loading the weights included)."""
    right, seconds = 0, []
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        start = time.perf_counter()
        pred = predict(model, xb)
        seconds.append(time.perf_counter() - start)
        right += int((pred == yb).sum())
    return right / len(x), float(torch.tensor(seconds).median())


def with_states(states):
    """A predictor loading the weights ``states(xb)`` chooses, then labelling the whole batch."""
    def predict(model, xb):
        model.load_state_dict(states(xb))
        return model(xb).argmax(-1)
    return predict


def score(name: str, predictor_for, data: Domains, suite, s: MergeBenchSettings, bits: float) -> dict:
    """One method's row: ``predictor_for(domain)`` gives the batch predictor used on that domain."""
    model = make_model(s.suite)
    acc, lat = {}, []
    for d, (x, y) in data.test.items():
        acc[d], sec = batch_accuracy(model, predictor_for(d), x, y, s.batch)
        lat.append(sec)
    norm = {d: acc[d] / suite.finetuned_accuracy[d] for d in acc}
    return {"method": name, "accuracy": acc, "normalized": norm, "mean_accuracy": sum(acc.values()) / len(acc),
            "mean_normalized": sum(norm.values()) / len(norm), "bits_per_param": bits,
            "batch_ms": 1e3 * sum(lat) / len(lat)}


def fixed(state):
    return lambda d: with_states(lambda xb: state)


def run_merge(s: MergeBenchSettings, *, cache_dir=None, progress: bool = True) -> dict:
    """Build (or load) the suite, score every method, return the payload (see the module docstring)."""
    suite = build_suite(s.suite, cache_dir=cache_dir, progress=progress)
    domains = list(s.suite.domains)
    taus = suite.task_vectors()
    numel = sum(t.numel() for t in suite.base.values())
    data = Domains.load(domains, s.router.samples_per_task)
    gen = lambda: torch.Generator().manual_seed(s.seed)  # noqa: E731
    rows = []
    steps = tqdm(total=10 + len(STATIC) + len(PER_TASK), desc="bench merge", disable=not progress)

    def add(row):
        rows.append(row)
        steps.update()

    add(score("pretrained", fixed(suite.base), data, suite, s, 0.0))
    add(score("individual", lambda d: with_states(lambda xb: suite.finetuned[d]), data, suite, s, 32.0))
    for name in STATIC:
        merged = apply_task_vector(suite.base, get_method(name)(taus, generator=gen()))
        add(score(name, fixed(merged), data, suite, s, storage_bits(name, numel, len(domains)) / numel / len(domains)))
    for name in PER_TASK:
        per = {d: apply_task_vector(suite.base, t) for d, t in get_method(name)(taus, generator=gen()).items()}
        add(score(name, lambda d: with_states(lambda xb: per[d]), data, suite, s,
                  storage_bits(name, numel, len(domains)) / numel / len(domains)))

    compressed = {d: compress_task_vector(taus[d], s.tswitch) for d in domains}
    bank = SwitchBank(suite.base, compressed)
    tswitch_bits = sum(8 * c.nbytes for c in compressed.values()) / numel / len(domains)
    add(score("tswitch", lambda d: with_states(lambda xb: bank.task(d)), data, suite, s, tswitch_bits))
    flex = {d: flexswitch(suite.base, taus[d], task_loss(s.suite, d), s.flexswitch)[0] for d in domains}
    flex_bank = SwitchBank(suite.base, flex)
    flex_bits = sum(8 * c.nbytes for c in flex.values()) / numel / len(domains)
    add(score("flexswitch", lambda d: with_states(lambda xb: flex_bank.task(d)), data, suite, s, flex_bits))

    base_model = make_model(s.suite, suite.base)
    query = torch.cat([data.query[d] for d in domains])
    labels = torch.arange(len(domains)).repeat_interleave(torch.tensor([len(data.query[d]) for d in domains]))
    output, patches = base_model.features, lambda x: base_model.patch_features(x).flatten(1)
    r = s.router
    with torch.inference_mode():
        knn = KNNRouter(output(query), labels, len(domains), r.k)
        knn_vote = KNNRouter(output(query), labels, len(domains), r.k, "vote")
        centroid = CentroidRouter(patches(query), labels, len(domains))
        metric = MetricKNNRouter(patches(query), labels, len(domains), r.k, "vote", r.rank, r.metric_steps,
                                 seed=s.seed)
    for name, router, embed, predictor, bits in (
            ("auto_switch", knn, output, routed(knn, output, bank, domains), tswitch_bits),
            ("auto_switch_vote", knn_vote, output, routed(knn_vote, output, bank, domains), tswitch_bits),
            ("auto_switch_metric", metric, patches, routed(metric, patches, bank, domains), tswitch_bits),
            ("auto_switch_centroid", centroid, patches, routed(centroid, patches, bank, domains), tswitch_bits),
            ("auto_switch_per_sample", centroid, patches, per_sample(centroid, patches, bank, domains), tswitch_bits),
            ("auto_flexswitch", metric, patches, routed(metric, patches, flex_bank, domains), flex_bits)):
        row = score(name, lambda d: predictor, data, suite, s, bits + 8 * router.nbytes / numel / len(domains))
        row["router_accuracy"] = router_accuracy(router, embed, data, domains)
        add(row)
    steps.close()
    return {"settings": asdict(s), "machine": machine("cpu"), "params": numel, "domains": domains,
            "rows": rows}


def routed(router, embed, bank: SwitchBank, domains: list[str]):
    """A predictor for a routed row: embed the batch with the base model, let the router weigh the
    tasks, rebuild the weights once for the batch (the domain itself is never used)."""
    def states(xb):
        with torch.inference_mode():
            w = router.batch_weights(embed(xb))
        return bank.weights({t: float(wt) for t, wt in zip(domains, w)})
    return with_states(states)


def per_sample(router, embed, bank: SwitchBank, domains: list[str]):
    """A predictor routing each sample to its own task: one weight rebuild per task present in the batch."""
    def predict(model, xb):
        tasks = router.route(embed(xb))
        pred = torch.empty(len(xb), dtype=torch.long)
        for t in tasks.unique().tolist():
            rows = tasks == t
            model.load_state_dict(bank.task(domains[t]))
            pred[rows] = model(xb[rows]).argmax(-1)
        return pred
    return predict


@torch.inference_mode()
def router_accuracy(router, embed, data: Domains, domains: list[str]) -> float:
    """Share of single test samples the router sends to their own domain."""
    right = total = 0
    for i, d in enumerate(domains):
        x = data.test[d][0]
        right += int((router.route(embed(x)) == i).sum())
        total += len(x)
    return right / total


def run_merge_bench(s: MergeBenchSettings, *, out_dir="bench/results", name: str = "merge", cache_dir=None,
                    progress: bool = True) -> dict:
    """:func:`run_merge`, then write ``<name>.{json,md,png}`` under ``out_dir``."""
    payload = run_merge(s, cache_dir=cache_dir, progress=progress)
    write_results(out_dir, name, payload, markdown(payload), figure(payload))
    return payload
