"""What ``sparsa merge`` and ``sparsa merge-eval`` run, one call each: a mergekit-style YAML in, a
merged model or a switch bank (with its router, when the YAML has a ``router:`` block) written
(:func:`merge_from_yaml`); a switch bank in, its bytes and fidelity per task out, and scores on
given inputs (:func:`evaluate_bank`). The output directory and every sample file are checked
before any model is read; every write is atomic (:mod:`sparsa.nn.merge_io`)."""

from pathlib import Path

import torch

from sparsa.errors import SparsaError
from sparsa.merge.bank import SwitchBank
from sparsa.merge.config import MergeConfig
from sparsa.merge.fidelity import task_vector_fidelity
from sparsa.merge.registry import model_methods
from sparsa.merge.routing import AutoSwitch, build_router, load_router
from sparsa.merge.run import merge_models
from sparsa.merge.summary import BankReport, MergeSummary
from sparsa.nn.merge_io import (check_output, merge_manifest, read_router_arrays, read_switch_bank, write_merged,
                                write_switch_bank)
from sparsa.nn.safetensors_io import LazyTensors
from sparsa.nn.task_data import CausalLM, Samples, read_samples


def read_yaml(path: Path):
    """The parsed YAML of ``path``; one SparsaError naming the file if it cannot be read or parsed."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise SparsaError(f"{path}: cannot read the merge config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SparsaError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def merge_from_yaml(config_path, out_dir, *, force: bool = False, progress: bool = True) -> dict:
    """Run the merge ``config_path`` describes and write ``out_dir``: a switch bank for compressing
    and trained methods (its bytes per task; with a ``router:`` block, the router too), a merged
    model otherwise (its tensor and parameter counts)."""
    path = Path(config_path)
    raw = read_yaml(path)
    config = MergeConfig.from_dict(raw, str(path), model_methods())
    check_output(Path(out_dir), force=force)
    data_params = {m.name: config.training_data(m)[1] for m in config.models}
    data = {t: read_samples(p["data"]) for t, p in data_params.items() if "data" in p}
    query = {t: read_samples(p) for t, p in config.router.query_set.items()} if config.router else {}
    if len({s.key for s in query.values()}) > 1:
        raise SparsaError(f"{path}: router: query_set mixes token windows and features; give every task the same kind")
    base = LazyTensors(config.base_model)
    models = {m.name: LazyTensors(m.model) for m in config.models}
    lm = None
    if data or any(s.input_ids is not None for s in query.values()):  # training always runs the base LM
        lm = CausalLM(config.base_model, list(base))
        for s in query.values():
            if s.input_ids is not None:
                lm.check(s)
    losses = {t: lm.loss(lm.check(s), data_params[t]["batch_size"], t) for t, s in data.items()}
    result = merge_models(config, base, models, losses=losses, progress=progress)
    manifest = merge_manifest(config.merge_method, config.base_model, {m.name: m.model for m in config.models}, raw)
    if result.compressed is not None:
        router = None
        if config.router is not None:
            spec = config.router
            first = {t: s.head(spec.config.samples_per_task) for t, s in query.items()}
            weights = {n: base[n] for n in base} if lm is not None else None
            router = build_router(spec, {m.name: sample_features(lm, weights, first[m.name]) for m in config.models})
            manifest["router"] = {**spec.to_dict(), "samples": {t: len(s) for t, s in first.items()},
                                  "samples_key": next(iter(query.values())).key, "nbytes": router.nbytes}
        written = write_switch_bank(out_dir, result.compressed, manifest, force=force,
                                    router=router.arrays() if router is not None else None)
        tasks = {t: {k: info[k] for k in ("nbytes", "numel", "bits_per_param")} for t, info in written["tasks"].items()}
        brief_router = {k: manifest["router"][k] for k in ("kind", "samples", "nbytes")} if router is not None else None
        return MergeSummary(str(out_dir), config.merge_method, file_bytes=written["file_bytes"], tasks=tasks,
                            router=brief_router).to_dict()
    write_merged(out_dir, result.merged, manifest, base_model=config.base_model, force=force)
    return MergeSummary(str(out_dir), config.merge_method, tensors=len(result.merged),
                        params=sum(t.numel() for t in result.merged.values())).to_dict()


def sample_features(lm: CausalLM | None, base, samples: Samples) -> torch.Tensor:
    """[n, d] the base model's features of ``samples``: stored ones as they are, token windows run
    through ``lm`` on the base weights."""
    if samples.features is not None:
        return samples.features
    return lm.features(base, samples.input_ids)


def evaluate_bank(bank_dir, inputs: dict[str, str] | None = None) -> dict:
    """A switch bank's bytes, parameters and bits per task, and each task's fidelity to the
    fine-tuned model's task vector (relative error, cosine).

    ``inputs``: task -> a sample file drawn from that task (:mod:`sparsa.nn.task_data`). Each adds
    to its task's row ``samples`` and, for a routed bank, ``routed_share`` (single samples the
    router sends to the task) and ``batch_weights`` (the router's weights for the file as one
    batch); for token windows also ``perplexity`` of the base, the fine-tuned model, the task's
    switch (``theta_base + tau_hat``) and, for a routed bank, the routed weights.
    """
    manifest, bank = read_switch_bank(bank_dir)
    inputs = dict(inputs or {})
    unknown = sorted(set(inputs) - set(bank))
    if unknown:
        raise SparsaError(f"--inputs: task {unknown[0]!r} is not in {bank_dir}; its tasks: {', '.join(bank)}")
    samples = {t: read_samples(p) for t, p in inputs.items()}
    base = LazyTensors(manifest["base_model"])
    tasks = {}
    for task, ctv in bank.items():
        row = {"nbytes": ctv.nbytes, "numel": ctv.numel, "bits_per_param": ctv.bits_per_param}
        row.update(task_vector_fidelity(base, LazyTensors(manifest["models"][task]), ctv, f"model {task!r}"))
        tasks[task] = row
    report = BankReport(str(bank_dir), manifest["merge_method"], manifest["file_bytes"], tasks)
    if not samples:
        return report.to_dict()
    lm = CausalLM(manifest["base_model"], list(base)) if any(s.input_ids is not None for s in samples.values()) else None
    switch = SwitchBank({n: base[n] for n in base}, bank)
    auto = None
    if "router" in manifest:
        auto = AutoSwitch(load_router(manifest["router"], read_router_arrays(bank_dir), len(bank)), switch)
        report.router = {k: manifest["router"][k] for k in ("kind", "samples", "nbytes")}
    for task, s in samples.items():
        if auto is not None and s.key != manifest["router"].get("samples_key", s.key):
            raise SparsaError(f"--inputs {task}={s.path}: holds {s.key}; the router of {bank_dir} was built on "
                              f"{manifest['router']['samples_key']}")
        row = tasks[task]
        row.update(inputs=s.path, samples=len(s))
        features = sample_features(lm, switch.base, s) if auto is not None else None
        if auto is not None:
            row["routed_share"] = sum(t == task for t in auto.route(features)) / len(s)
            row["batch_weights"] = auto.task_weights(features)
        if s.input_ids is not None:
            ids = lm.check(s)
            ppl = {"base": lm.perplexity(switch.base, ids),
                   "finetuned": lm.perplexity(dict(LazyTensors(manifest["models"][task])), ids),
                   "switch": lm.perplexity(switch.task(task), ids)}
            if auto is not None:
                ppl["routed"] = lm.perplexity(switch.weights(row["batch_weights"]), ids)
            row["perplexity"] = ppl
    return report.to_dict()
