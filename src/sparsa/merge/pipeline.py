"""What ``sparsa merge`` and ``sparsa merge-eval`` run, one call each: a mergekit-style YAML in, a
merged model or a switch bank written (:func:`merge_from_yaml`); a switch bank in, its bytes and
fidelity per task out (:func:`evaluate_bank`). The output directory is checked before any model
is read; every write is atomic (:mod:`sparsa.nn.merge_io`)."""

from pathlib import Path

from sparsa.errors import SparsaError
from sparsa.merge.config import MergeConfig
from sparsa.merge.fidelity import task_vector_fidelity
from sparsa.merge.registry import model_methods
from sparsa.merge.run import merge_models
from sparsa.nn.merge_io import check_output, merge_manifest, read_switch_bank, write_merged, write_switch_bank
from sparsa.nn.safetensors_io import LazyTensors


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
    methods (its bytes per task), a merged model otherwise (its tensor and parameter counts)."""
    path = Path(config_path)
    raw = read_yaml(path)
    config = MergeConfig.from_dict(raw, str(path), model_methods())
    check_output(Path(out_dir), force=force)
    base = LazyTensors(config.base_model)
    models = {m.name: LazyTensors(m.model) for m in config.models}
    result = merge_models(config, base, models, progress=progress)
    manifest = merge_manifest(config.merge_method, config.base_model, {m.name: m.model for m in config.models}, raw)
    if result.compressed is not None:
        written = write_switch_bank(out_dir, result.compressed, manifest, force=force)
        tasks = {t: {k: info[k] for k in ("nbytes", "numel", "bits_per_param")} for t, info in written["tasks"].items()}
        return {"out": str(out_dir), "merge_method": config.merge_method, "file_bytes": written["file_bytes"],
                "tasks": tasks}
    write_merged(out_dir, result.merged, manifest, base_model=config.base_model, force=force)
    return {"out": str(out_dir), "merge_method": config.merge_method, "tensors": len(result.merged),
            "params": sum(t.numel() for t in result.merged.values())}


def evaluate_bank(bank_dir) -> dict:
    """A switch bank's bytes, parameters and bits per task, and each task's fidelity to the
    fine-tuned model's task vector (relative error, cosine)."""
    manifest, bank = read_switch_bank(bank_dir)
    base = LazyTensors(manifest["base_model"])
    tasks = {}
    for task, ctv in bank.items():
        row = {"nbytes": ctv.nbytes, "numel": ctv.numel, "bits_per_param": ctv.bits_per_param}
        row.update(task_vector_fidelity(base, LazyTensors(manifest["models"][task]), ctv, f"model {task!r}"))
        tasks[task] = row
    return {"dir": str(bank_dir), "merge_method": manifest["merge_method"], "file_bytes": manifest["file_bytes"],
            "tasks": tasks}
