"""Configs of the merge engine: frozen dataclasses holding every default, validated on creation."""

from dataclasses import asdict, dataclass
from pathlib import Path

from sparsa.errors import SparsaError
from sparsa.merge.params import UNIT_OPEN, Param, check_values
from sparsa.merge.registry import BANK_KINDS, TRAINING_DATA, TRAINING_DEFAULTS
from sparsa.merge.router import BATCH_MODES

VERSION = 1
SCALE_NORMS = ("l2", "l1", "lsq")
ENCODINGS = ("auto", "bitmap", "group", "index")


@dataclass(frozen=True)
class TSwitchConfig:
    """T-Switch compression of one task vector (arXiv 2412.00054, section 3).

    Args:
        drop_ratio: alpha, the share of positive and of negative entries dropped per tensor (by
            magnitude, each sign on its own); the paper ships 0.6 (keep 40%).
        scale_norm: the one scale per tensor: ``l2`` (the paper's, ``||tau_kept||_2 / sqrt(nnz)``,
            the kept entries' RMS), ``lsq`` (``mean |tau_kept|``, the least-squares fit of
            ``scale * sign`` to the kept entries) or ``l1`` (``||tau||_1 / nnz``, the whole tensor's
            L1 mass spread over the kept entries, as EMR-Merging rescales).
        encoding: how mask positions are stored (:class:`~sparsa.formats.sign_mask.SignMask`):
            ``auto`` takes the smallest of ``bitmap``, ``group`` and ``index`` per tensor.
        group_size: g of the ``group`` encoding (the paper's 4).
    """

    drop_ratio: float = 0.6
    scale_norm: str = "l2"
    encoding: str = "auto"
    group_size: int = 4

    def __post_init__(self):
        check_values(asdict(self), TSWITCH_SPECS, "TSwitchConfig")

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}


# one per TSwitchConfig field: what a merge YAML may set for tswitch, globally or per model
TSWITCH_SPECS = {"drop_ratio": UNIT_OPEN, "scale_norm": Param(str, choices=SCALE_NORMS),
                 "encoding": Param(str, choices=ENCODINGS), "group_size": Param(int, 1)}
FLEX_BITS = (1, 2, 4)


@dataclass(frozen=True)
class FlexSwitchConfig:
    """FlexSwitch compression of one task vector under a byte budget (ours; :mod:`sparsa.merge.methods.flexswitch`).

    Args:
        budget_bits: what the whole compressed task vector may store, in bits per parameter
            (positions, signs, codes, magnitude tables and raw scalars all counted).
        bits: bit-widths a tensor may take per kept entry: 1 (sign only, as T-Switch), 2 or 4
            (sign plus a 1- or 3-bit code into the tensor's table of 2 or 8 magnitudes).
        keep_ratios: the keep ratios (per sign, as T-Switch) the allocation chooses from per tensor;
            0 drops the tensor's task vector.
        steps: AdamW steps training the row gates and the magnitude tables on the task's loss.
        lr: of the magnitude tables; ``gate_lr``: of the row gates (log-threshold offsets).
        temperature: width of the gates' sigmoid, as a share of the tensor's threshold.
        rate_weight: weight of the penalty on kept entries (weighted by their bytes) growing past
            the allocation's.
        lloyd_iters: Lloyd iterations fitting each magnitude table.
        encoding, group_size: of the stored :class:`~sparsa.formats.sign_mask.SignMask` positions.
    """

    budget_bits: float = 0.68
    bits: tuple[int, ...] = FLEX_BITS
    keep_ratios: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4)
    steps: int = 500
    lr: float = 3e-3
    gate_lr: float = 1e-2
    temperature: float = 0.1
    rate_weight: float = 1.0
    lloyd_iters: int = 10
    encoding: str = "auto"
    group_size: int = 4

    def __post_init__(self):
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "keep_ratios", tuple(float(k) for k in self.keep_ratios))
        if not self.budget_bits > 0:
            raise SparsaError(f"budget_bits={self.budget_bits}: must be positive")
        if not self.bits or any(b not in FLEX_BITS for b in self.bits):
            raise SparsaError(f"bits={list(self.bits)}: choose among {', '.join(map(str, FLEX_BITS))}")
        if not self.keep_ratios or any(not 0.0 <= k <= 1.0 for k in self.keep_ratios):
            raise SparsaError(f"keep_ratios={list(self.keep_ratios)}: each must be in [0, 1]")
        for name in ("steps", "lloyd_iters"):
            if getattr(self, name) < 0:
                raise SparsaError(f"{name}={getattr(self, name)}: must be non-negative")
        for name in ("lr", "gate_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise SparsaError(f"{name}={getattr(self, name)}: must be positive")
        if self.rate_weight < 0:
            raise SparsaError(f"rate_weight={self.rate_weight}: must be non-negative")
        if self.encoding not in ENCODINGS or self.group_size < 1:
            raise SparsaError(f"encoding {self.encoding!r} / group_size {self.group_size}: "
                              f"choose one of {', '.join(ENCODINGS)} and a positive group size")

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}


POSITIVE = Param(float, 0.0, low_open=True)
# the scalar FlexSwitchConfig fields: what a merge YAML may set for flexswitch, globally or per model
# (``bits`` and ``keep_ratios``, lists, keep their defaults there)
FLEXSWITCH_SPECS = {"budget_bits": POSITIVE, "steps": Param(int, 0), "lr": POSITIVE, "gate_lr": POSITIVE,
                    "temperature": POSITIVE, "rate_weight": Param(float, 0.0), "lloyd_iters": Param(int, 0),
                    "encoding": Param(str, choices=ENCODINGS), "group_size": Param(int, 1)}


@dataclass(frozen=True)
class RouterConfig:
    """Auto-Switch's routers (:mod:`sparsa.merge.router`; arXiv 2412.00054, section 3.3).

    Args:
        k: neighbours voting in the KNN router (the paper's 10).
        samples_per_task: query-set samples per task, features from the base model (the paper's 100).
        rank: rows of the learned metric of :class:`~sparsa.merge.router.MetricKNNRouter`.
        metric_steps: its NCA training steps.
    """

    k: int = 10
    samples_per_task: int = 100
    rank: int = 8
    metric_steps: int = 300

    def __post_init__(self):
        if self.k < 1:
            raise SparsaError(f"k={self.k}: must be at least 1")
        if self.samples_per_task < 1:
            raise SparsaError(f"samples_per_task={self.samples_per_task}: must be at least 1")
        if self.rank < 1 or self.metric_steps < 0:
            raise SparsaError(f"rank={self.rank}, metric_steps={self.metric_steps}: need rank >= 1, steps >= 0")

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}


ROUTER_KINDS = ("knn", "metric_knn", "centroid")
# a merge YAML's router block: these keys (their defaults: RouterSpec's and RouterConfig's) and query_set
ROUTER_SPECS = {"kind": Param(str, choices=ROUTER_KINDS), "k": Param(int, 1), "batch_mode": Param(str, choices=BATCH_MODES),
                "rank": Param(int, 1), "metric_steps": Param(int, 0), "samples_per_task": Param(int, 1),
                "seed": Param(int, 0)}


@dataclass(frozen=True)
class RouterSpec:
    """A merge YAML's ``router:`` block: an Auto-Switch router stored beside the switch bank.

    Args:
        kind: ``knn`` (:class:`~sparsa.merge.router.KNNRouter`), ``metric_knn``
            (:class:`~sparsa.merge.router.MetricKNNRouter`) or ``centroid``
            (:class:`~sparsa.merge.router.CentroidRouter`).
        query_set: task name -> its sample file (:mod:`sparsa.nn.task_data`), one per model;
            the first ``samples_per_task`` samples of each are the router's memory.
        config: ``k``, ``samples_per_task``, ``rank`` and ``metric_steps``.
        batch_mode: of the KNN routers (``mean`` shares or a ``vote``).
        seed: of the metric's training.
    """

    kind: str
    query_set: dict
    config: RouterConfig = RouterConfig()
    batch_mode: str = "mean"
    seed: int = 0

    @classmethod
    def from_dict(cls, raw, tasks: list[str], where: str) -> "RouterSpec":
        """Validate a ``router:`` block against the models' task names; SparsaError naming the key at fault."""
        if not isinstance(raw, dict):
            raise SparsaError(f"{where}: expected a mapping with kind and query_set")
        for key in ("kind", "query_set"):
            if key not in raw:
                raise SparsaError(f"{where}: missing key {key!r}")
        query = raw["query_set"]
        values = check_parameters({k: v for k, v in raw.items() if k != "query_set"}, ROUTER_SPECS, where)
        if not isinstance(query, dict) or sorted(query) != sorted(tasks):
            got = sorted(query) if isinstance(query, dict) else query
            raise SparsaError(f"{where}: query_set must map each model's task name ({', '.join(tasks)}) to a sample "
                              f"file; got {got}")
        config = RouterConfig(**{k: values[k] for k in ("k", "samples_per_task", "rank", "metric_steps") if k in values})
        return cls(values["kind"], {t: str(query[t]) for t in tasks}, config, values.get("batch_mode", "mean"),
                   values.get("seed", 0))

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{k: v for k, v in self.config.to_dict().items() if k != "version"},
                "batch_mode": self.batch_mode, "seed": self.seed, "query_set": dict(self.query_set)}


MERGE_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "router")
MODEL_KEYS = ("model", "name", "parameters")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelEntry:
    """One fine-tuned model of a merge: its path, task name and per-model parameters."""

    model: str
    name: str
    parameters: dict


@dataclass(frozen=True)
class MergeConfig:
    """A mergekit-style merge (``sparsa merge CONFIG.yaml``).

    Args:
        merge_method: a compressed method (``tswitch``: one compressed task vector per model), a
            trained one (``flexswitch``: the same, learnt on each model's ``data`` samples) or a
            static one that merges tensor by tensor (``task_arithmetic``, ``ties``, ``dare``).
        base_model: path of the base (a ``.safetensors`` file or a directory of safetensors weights).
        models: the fine-tuned models, each with a task ``name`` (default: the file or directory
            name) and ``parameters`` (compressed methods only: any of the method's, for that task).
        parameters: the method's parameters (``tswitch``: ``TSwitchConfig`` fields; a trained
            method's also ``data`` and ``batch_size``, globally or per model).
        dtype: of a static merge's output tensors (default: the base's).
        router: a router stored with the switch bank (Auto-Switch), or None.
    """

    merge_method: str
    base_model: str
    models: tuple[ModelEntry, ...]
    parameters: dict
    dtype: str | None = None
    router: RouterSpec | None = None

    @classmethod
    def from_dict(cls, raw, where: str, methods: dict) -> "MergeConfig":
        """Validate a parsed YAML document; ``methods``: name -> the method (its ``kind`` and ``specs``, the
        :class:`Param` of each parameter), as :func:`sparsa.merge.registry.model_methods` gives them.

        Raises:
            SparsaError ``"{where}: ..."`` naming the key at fault.
        """
        if not isinstance(raw, dict):
            raise SparsaError(f"{where}: expected a mapping of {', '.join(MERGE_KEYS)}")
        unknown = sorted(set(raw) - set(MERGE_KEYS))
        if unknown:
            raise SparsaError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(MERGE_KEYS)}")
        for key in ("merge_method", "base_model", "models"):
            if key not in raw:
                raise SparsaError(f"{where}: missing key {key!r}")
        method = raw["merge_method"]
        order = ("compressed", "static", "trained")  # compressed ones first, those needing data last
        known = sorted(methods, key=lambda n: (order.index(methods[n].kind), n))
        if method not in known:
            raise SparsaError(f"{where}: merge_method {method!r} is not one of {', '.join(known)}")
        kind, specs = methods[method].kind, methods[method].specs
        if kind == "trained":
            specs = {**specs, **TRAINING_DATA}  # the samples the pipeline trains on
        params = check_parameters(raw.get("parameters") or {}, specs, f"{where}: parameters")
        per_task = specs if kind in BANK_KINDS else {}  # switch-bank methods: per-model parameters
        models = tuple(model_entry(m, i, per_task, f"{where}: models[{i}]") for i, m in enumerate(raw["models"] or []))
        if not models:
            raise SparsaError(f"{where}: models lists no fine-tuned model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise SparsaError(f"{where}: two models are named {dup!r}; give each a distinct name")
        dtype = raw.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise SparsaError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if kind == "trained":
            for i, m in enumerate(models):
                if "data" not in {**params, **m.parameters}:
                    raise SparsaError(f"{where}: models[{i}] (model {m.name!r}): {method} trains on the task's "
                                      "samples; give parameters: {data: PATH} (a safetensors file of input_ids "
                                      "token windows), for the model or globally")
        router = None
        if raw.get("router") is not None:
            if kind not in BANK_KINDS:
                raise SparsaError(f"{where}: router: routes between the tasks of a switch bank; merge_method "
                                  f"{method!r} writes one merged model")
            router = RouterSpec.from_dict(raw["router"], names, f"{where}: router")
        return cls(method, str(raw["base_model"]), models, params, dtype, router)

    def task_parameters(self, entry: ModelEntry) -> dict:
        """The parameters of one model's compression: the global ones, overridden by the model's own."""
        return {**self.parameters, **entry.parameters}

    def training_data(self, entry: ModelEntry) -> tuple[dict, dict]:
        """``(method parameters, data parameters)`` of one model: its :meth:`task_parameters` split into the
        method's own and the :data:`~sparsa.merge.registry.TRAINING_DATA` ones (defaults filled in)."""
        params = self.task_parameters(entry)
        data = {**TRAINING_DEFAULTS, **{k: params.pop(k) for k in TRAINING_DATA if k in params}}
        return params, data


def check_parameters(params, specs: dict[str, Param], where: str) -> dict:
    """``params`` checked against ``specs``: known names only, each value of its type and in its range."""
    if not isinstance(params, dict):
        raise SparsaError(f"{where}: expected a mapping")
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise SparsaError(f"{where}: unknown parameter {unknown[0]!r}; known: {', '.join(specs) or 'none'}")
    return check_values(params, specs, where)


def model_entry(raw, index: int, specs: dict[str, Param], where: str) -> ModelEntry:
    """One ``models`` item; ``specs``: the parameters it may set for itself (none for static methods)."""
    if not isinstance(raw, dict) or "model" not in raw:
        raise SparsaError(f"{where}: expected a mapping with a 'model' path")
    unknown = sorted(set(raw) - set(MODEL_KEYS))
    if unknown:
        raise SparsaError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(MODEL_KEYS)}")
    path = str(raw["model"])
    name = str(raw.get("name") or Path(path).name.removesuffix(".safetensors"))
    params = check_parameters(raw.get("parameters") or {}, specs, f"{where} (model {name!r}).parameters")
    return ModelEntry(path, name, params)
