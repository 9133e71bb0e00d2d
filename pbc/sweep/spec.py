"""A sweep spec (TOML) → the runs it stands for.

A spec is a grid of settings.  Keys at the top level apply to every block; each
``[[grid]]`` block adds or overrides keys; a key whose value is a list is an **axis** (the
block's runs are the product of its axes), any other value is fixed (a TOML table is a value,
e.g. ``dc_keep = {fc1 = 0.15}``).  ``seed`` is an axis like any other::

    data = "fashion-mnist"
    seed = [0, 1, 2]
    pretrain_epochs = 30            # a plain net per (model, seed), shared by the methods

    [[grid]]
    model = "lenet300"
    prior = ["gnj", "svd"]
    epochs = 30

    [[grid]]
    model = "lenet300"
    prior = "sws"
    sws_tau = [0.1, 0.2]            # a setting to choose (see [select])

    [select]                        # optional: one configuration per block, on validation
    budget = 0.5

Keys (:data:`KEYS`): the :class:`~pbc.config.TrainConfig` fields that describe the
experiment; ``pretrain_epochs`` (a plain net trained first and used as ``init_from``;
0: from scratch) and ``pretrain_lr`` (unset: the plain method's default rate);
``finetune_epochs`` (BC-GNJ and BC-GHS: after its analysis, the run is trained on without the
groups it pruned, :mod:`pbc.finetune`, into ``runs/<configuration>/seed<k>-finetuned``, which
is then analysed, compressed and benched and gives the run's numbers; 0: none),
``finetune_rounds`` (prune and fine-tune again, each round from the last: round ``r > 1``
into ``seed<k>-finetuned<r>``; the last round gives the numbers; 1 unless set) and
``finetune_budget`` (the error budget, in points, of the analyses that choose what each round
removes; unset: the run's ``error_budget``; the last round is analysed at the run's); the analyse
stage's ``draws``, ``threshold_rule``, ``error_budget``, ``precision``, ``thresholds``,
``figures``; the bench stage's ``bench_batch``,
``bench_repeats``, ``bench_warmup``; ``label`` (a name for the block's configurations).
Where the run happens (``data_dir``, ``device``, ``threads``) is not part of a spec: the
command line gives it.

A **configuration** is a run's settings less its seed; runs of one configuration differ only
in the seed.  Its name is ``<model>-<prior>``, then the block's ``label`` if it has one, then
the settings that tell apart configurations of the same model, prior and label
(``lenet300-sws-sws_tau0.2``).  A
plain net is a run of prior ``none`` with the data-defining settings of the runs it serves
(:data:`PLAIN_KEYS`), ``epochs = pretrain_epochs`` and ``lr = pretrain_lr``; identical plain
runs are one run (a ``prior = "none"`` block with the same settings is that run too; such a
block ignores ``pretrain_*``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pbc import methods
from pbc.config import LEGACY_SETTINGS, PLAIN_KEYS, TrainConfig
from pbc.train import check_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class SpecError(ValueError):
    """A spec that cannot be expanded: one line naming the key or block."""


#: TrainConfig fields that say where or how a run executes, not what it is
NOT_IN_SPEC = ("out", "resume", "init_from", "progress", "data_dir", "download", "device",
               "threads")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_IN_SPEC)
ANALYSE_KEYS = {"draws": "draws", "threshold_rule": "rule", "error_budget": "error_budget",
                "precision": "precision", "thresholds": "thresholds", "figures": "figures"}
BENCH_KEYS = {"bench_batch": "batch", "bench_repeats": "repeats", "bench_warmup": "warmup"}
#: the spec's fine-tuning keys → the :class:`PlannedRun` fields that hold them
TUNING_KEYS = {"finetune_epochs": "finetune", "finetune_rounds": "finetune_rounds",
               "finetune_budget": "finetune_budget"}
#: what an analyse setting was before it existed: bits came from the posterior alone
LEGACY_ANALYSE = {"precision": "posterior"}
STAGE_DEFAULTS = {"pretrain_epochs": 0, "pretrain_lr": None, "finetune_epochs": 0,
                  "finetune_rounds": 1, "finetune_budget": None,
                  "draws": 1000,
                  "threshold_rule": "budget", "error_budget": 0.5, "precision": "budget",
                  "thresholds": {},
                  "figures": True, "bench_batch": 8192, "bench_repeats": 20, "bench_warmup": 3}
KEYS = (*TRAIN_KEYS, *STAGE_DEFAULTS, "label")
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
          "dict": (dict,)}
_STAGE_TYPES = {"pretrain_epochs": "int", "pretrain_lr": "float", "finetune_epochs": "int",
                "finetune_rounds": "int", "finetune_budget": "float",
                "draws": "int",
                "threshold_rule": "str", "error_budget": "float", "precision": "str",
                "thresholds": "dict",
                "figures": "bool", "bench_batch": "int", "bench_repeats": "int",
                "bench_warmup": "int", "label": "str"}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its directory ``runs/<configuration>/seed<seed>`` under the sweep's
    directory, and every setting of its stages.

    ``train`` holds :data:`TRAIN_KEYS`; ``analyse`` the keyword arguments of
    :func:`pbc.analysis.analyse` (empty for a method without a posterior or a plain net);
    ``bench`` those of :func:`pbc.bench.bench` (empty for a plain net, which is only
    trained); ``pretrain`` the id of the plain run it starts from; ``block`` the spec's
    ``[[grid]]`` block (``None`` for a plain net made only to start others from);
    ``finetune`` the epochs of each round of fine-tuning after an analysis (0: none),
    ``finetune_rounds`` the rounds, ``finetune_budget`` the error budget of the analyses a
    round starts from (``None``: the run's).
    """

    configuration: str
    seed: int
    train: dict
    analyse: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    pretrain: str | None = None
    block: int | None = None
    finetune: int = 0
    finetune_rounds: int = 1
    finetune_budget: float | None = None

    @property
    def id(self) -> str:
        return f"{self.configuration}/seed{self.seed}"

    @property
    def path(self) -> str:
        """The run directory, relative to the sweep's directory."""
        return f"runs/{self.id}"

    @property
    def tuned_paths(self) -> list[str]:
        """The fine-tuned runs, round by round: ``<path>-finetuned``, ``<path>-finetuned2``, …
        (none where the run does not fine-tune)."""
        rounds = self.finetune_rounds if self.finetune else 0
        return [f"{self.path}-finetuned{r if r > 1 else ''}" for r in range(1, rounds + 1)]

    @property
    def result_path(self) -> str:
        """The directory whose artefacts give the run's numbers: the last fine-tuned run
        where there is one, else :attr:`path`."""
        return (self.tuned_paths or [self.path])[-1]

    @property
    def prune_analyse(self) -> dict:
        """The analyse settings of a run that a round of fine-tuning starts from: the run's
        own, at ``finetune_budget`` where one is set."""
        if self.finetune_budget is None:
            return self.analyse
        return {**self.analyse, "error_budget": self.finetune_budget}

    def tuning(self) -> dict:
        """The fine-tuning settings as ``sweep.json`` records them: none for a run without,
        and only those that differ from their defaults (as runs did before they existed)."""
        if not self.finetune:
            return {}
        return {"finetune": self.finetune,
                **({"finetune_rounds": self.finetune_rounds} if self.finetune_rounds != 1
                   else {}),
                **({"finetune_budget": self.finetune_budget}
                   if self.finetune_budget is not None else {})}

    @property
    def plain(self) -> bool:
        return self.train["prior"] == "none"

    def settings(self) -> dict:
        """What the run is (recorded in ``sweep.json``; a rerun must not change it).  A run
        without fine-tuning records none, as runs did before it existed."""
        return {"train": self.train, "analyse": self.analyse, "bench": self.bench,
                "pretrain": self.pretrain, **self.tuning()}

    def to_dict(self) -> dict:
        return {"id": self.id, "configuration": self.configuration, "seed": self.seed,
                **self.settings(), "block": self.block}

    @classmethod
    def from_dict(cls, d: dict) -> PlannedRun:
        """The inverse of :meth:`to_dict`; a training or analyse setting added to pbc after
        the run was recorded takes the value it had before it existed
        (:data:`LEGACY_SETTINGS`, :data:`LEGACY_ANALYSE`, else its default)."""
        before = {f.name: LEGACY_SETTINGS.get(f.name, f.default)
                  for f in dataclasses.fields(TrainConfig) if f.name in TRAIN_KEYS}
        train = {**before, **d["train"]} if d["train"] else {}
        analyse = {**LEGACY_ANALYSE, **d["analyse"]} if d.get("analyse") else {}
        return cls(d["configuration"], d["seed"], train, analyse,
                   d.get("bench", {}), d.get("pretrain"), d.get("block"), d.get("finetune", 0),
                   d.get("finetune_rounds", 1), d.get("finetune_budget"))

    def train_config(self, out: str, *, init_from: str | None = None, data_dir=None,
                     device: str = "cpu", threads: int | None = None) -> TrainConfig:
        return TrainConfig(out=out, init_from=init_from, data_dir=data_dir, device=device,
                           threads=threads, progress=False, **self.train)


@dataclass
class SweepPlan:
    """An expanded spec: the runs (plain nets first, then in block order, seed by seed) and
    the selection rule (``None``: every configuration is reported)."""

    name: str
    runs: list[PlannedRun]
    select: dict | None = None

    def by_id(self) -> dict[str, PlannedRun]:
        return {r.id: r for r in self.runs}

    def configurations(self) -> list[str]:
        return list(dict.fromkeys(r.configuration for r in self.runs))

    def only(self, filters: dict[str, list]) -> SweepPlan:
        """The runs whose settings take one of the listed values for every key of
        ``filters`` (``configuration``, ``seed``, a training setting, an analyse or bench
        setting, ``finetune_epochs``, ``finetune_rounds``, ``finetune_budget``), and the
        plain nets they start from."""
        def value(run: PlannedRun, key: str):
            if key in ("configuration", "seed"):
                return getattr(run, key)
            if key in TUNING_KEYS:
                return getattr(run, TUNING_KEYS[key])
            if key in TRAIN_KEYS:
                return run.train[key]
            if key in ANALYSE_KEYS:
                return run.analyse.get(ANALYSE_KEYS[key])
            return run.bench.get(BENCH_KEYS[key])

        allowed = ("configuration", *TRAIN_KEYS, *ANALYSE_KEYS, *BENCH_KEYS, *TUNING_KEYS)
        for key in filters:
            if key not in allowed:
                raise SpecError(f"--only: cannot filter on {key!r}; keys are "
                                f"{', '.join(allowed)}")
        kept = [r for r in self.runs if all(value(r, k) in v for k, v in filters.items())]
        ids = {r.id for r in kept} | {r.pretrain for r in kept if r.pretrain}
        return SweepPlan(self.name, [r for r in self.runs if r.id in ids], self.select)


# ----------------------------------------------------------------------------------- parsing
def parse_value(text: str):
    """A command-line value in TOML syntax (``30``, ``[0, 1]``, ``{fc1 = 0.15}``, ``true``),
    else the text itself as a string (``gnj``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_spec(path, overrides: dict | None = None) -> SweepPlan:
    """Read a spec file and expand it; ``overrides`` (key → value, lists are axes) replace
    the spec's values in every block."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such sweep spec") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None
    return expand(spec, name=spec.get("name", path.stem), overrides=overrides)


def expand(spec: dict, name: str = "sweep", overrides: dict | None = None) -> SweepPlan:
    """The runs of a parsed spec (see the module docstring)."""
    spec = dict(spec)
    spec.pop("name", None)
    blocks = spec.pop("grid", [{}])
    select = spec.pop("select", None)
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict)
                                                             for b in blocks):
        raise SpecError("'grid' must be a list of tables ([[grid]] blocks)")
    if select is not None:
        select = _check_select(select)
    for key in list(spec) + list(overrides or {}):
        _check_key(key, "top level" if key in spec else "overrides")
    rows: list[tuple[int, dict]] = []
    for b, block in enumerate(blocks):
        for key in block:
            _check_key(key, f"[[grid]] block {b + 1}")
        merged = {**spec, **block, **(overrides or {})}
        axes = {k: v for k, v in merged.items() if isinstance(v, list)}
        for key, values in axes.items():
            if not values:
                raise SpecError(f"[[grid]] block {b + 1}: {key} = [] gives no runs")
        fixed = {k: v for k, v in merged.items() if k not in axes}
        for combo in itertools.product(*axes.values()):
            rows.append((b, {**fixed, **dict(zip(axes, combo, strict=True))}))
    return _plan(name, rows, select)


def _check_key(key: str, where: str) -> None:
    if key not in KEYS:
        hint = (" (where runs happen is given on the command line: --data-dir, "
                "--gpus-per-run, --cpus-per-run)" if key in NOT_IN_SPEC else "")
        raise SpecError(f"{where}: unknown key {key!r}{hint}; keys are {', '.join(KEYS)}")


def _check_select(select) -> dict:
    if not isinstance(select, dict):
        raise SpecError("[select] must be a table")
    unknown = set(select) - {"budget", "maximise"}
    if unknown:
        raise SpecError(f"[select]: unknown keys {sorted(unknown)}; keys are budget, maximise")
    out = {"budget": select.get("budget", 0.5), "maximise": select.get("maximise",
                                                                       "max_compression")}
    if not isinstance(out["budget"], (int, float)) or isinstance(out["budget"], bool) \
            or out["budget"] < 0:
        raise SpecError(f"[select] budget must be a number ≥ 0 (points), got {out['budget']!r}")
    if out["maximise"] not in ("max_compression", "fast_prediction", "pruning"):
        raise SpecError(f"[select] maximise must be max_compression, fast_prediction or "
                        f"pruning, got {out['maximise']!r}")
    return out


def _expected_types(key: str) -> list[str]:
    """The kinds a key's value may take (``max_weight_var``: a float or a table)."""
    if key in _STAGE_TYPES:
        return [_STAGE_TYPES[key]]
    ann = str(TrainConfig.__dataclass_fields__[key].type)
    return [a.strip().split("[")[0] for a in ann.split("|") if a.strip() != "None"]


def _typed(key: str, value, where: str):
    for kind in _expected_types(key):
        if isinstance(value, _TYPES[kind]) and not (kind != "bool" and isinstance(value, bool)):
            return float(value) if kind == "float" else value
    kinds = " or ".join("an int" if k == "int" else f"a {k}" for k in _expected_types(key))
    raise SpecError(f"{where}: {key} must be {kinds}, got {value!r}")


def _plan(name: str, rows: list[tuple[int, dict]], select: dict | None) -> SweepPlan:
    """Build the runs of the expanded rows: typed and validated settings, shared plain nets,
    configuration names."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.name in TRAIN_KEYS}
    plain: dict[str, dict] = {}              # identity → train settings of a plain net
    entries = []             # (block, train, analyse, bench, plain key, label, fine-tuning)
    for b, row in rows:
        where = f"[[grid]] block {b + 1}"
        row = {k: _typed(k, v, where) for k, v in row.items()}
        stage = {**STAGE_DEFAULTS, **{k: row[k] for k in STAGE_DEFAULTS if k in row}}
        train = {**defaults, **{k: row[k] for k in TRAIN_KEYS if k in row}}
        if train["prior"] not in methods.names():
            raise SpecError(f"{where}: unknown prior {train['prior']!r}; priors are "
                            f"{methods.names()}")
        if train["prior"] == "none":   # a plain net: pretrain_* do not apply
            train = _plain_train(train, train["epochs"], train["lr"], defaults)
            key = json.dumps(train, sort_keys=True)
            plain[key] = train
            entries.append((b, train, {}, {}, None, row.get("label"), {}))
            continue
        pre_key = None
        if stage["pretrain_epochs"]:
            pre = _plain_train(train, stage["pretrain_epochs"], stage["pretrain_lr"], defaults)
            pre_key = json.dumps(pre, sort_keys=True)
            plain.setdefault(pre_key, pre)
        method = methods.get(train["prior"])
        finetune, rounds, prune_budget = (stage[k] for k in TUNING_KEYS)
        try:
            draws = stage["draws"]
            if draws % 4:
                raise ValueError(f"draws must be a multiple of 4 (4 chains), got {draws}")
            if finetune < 0 or (finetune and not method.has_groups):
                raise ValueError(f"finetune_epochs must be ≥ 0, and 0 for a prior without "
                                 f"group scales (fine-tuning retrains BC-GNJ and BC-GHS), "
                                 f"got {finetune}")
            if rounds < 1 or (prune_budget is not None and prune_budget < 0):
                raise ValueError(f"finetune_rounds must be ≥ 1 and finetune_budget ≥ 0 "
                                 f"points, got {rounds} and {prune_budget}")
            if not finetune and (rounds != 1 or prune_budget is not None):
                raise ValueError("finetune_rounds and finetune_budget need finetune_epochs")
            check_config(TrainConfig(out="-", init_from="-" if pre_key else None,
                                     **train))
        except ValueError as e:
            raise SpecError(f"{where} ({train['model']}, {train['prior']}): {e}") from None
        analyse = {ANALYSE_KEYS[k]: stage[k] for k in ANALYSE_KEYS} \
            if method.has_posterior else {}
        if analyse:
            analyse["seed"] = train["seed"]
        bench = {BENCH_KEYS[k]: stage[k] for k in BENCH_KEYS}
        tune = {"finetune": finetune, "finetune_rounds": rounds,
                "finetune_budget": prune_budget} if finetune else {}
        entries.append((b, train, analyse, bench, pre_key, row.get("label"), tune))

    names = _configuration_names(
        [(t, a, be, p, label, f) for _, t, a, be, p, label, f in entries]
        + [(t, {}, {}, None, None, {}) for t in plain.values()])
    plain_ids = {}
    runs: dict[str, PlannedRun] = {}
    blocks_of_plain = {json.dumps(t, sort_keys=True): b for b, t, *_ in entries
                       if t["prior"] == "none"}
    for key, t in plain.items():
        conf = names[_config_key(t, {}, {}, None, None, {})]
        run = PlannedRun(conf, t["seed"], t, block=blocks_of_plain.get(key))
        plain_ids[key] = run.id
        runs[run.id] = run
    for b, t, a, be, pre_key, label, tune in entries:
        if t["prior"] == "none":
            continue
        conf = names[_config_key(t, a, be, pre_key, label, tune)]
        run = PlannedRun(conf, t["seed"], t, a, be, plain_ids.get(pre_key), b, **tune)
        if run.id in runs and runs[run.id] != run:
            raise SpecError(f"two runs are named {run.id} with different settings: give "
                            f"their [[grid]] blocks distinct labels")
        runs[run.id] = run
    ordered = sorted(runs.values(), key=lambda r: (not r.plain, r.seed))   # stable
    return SweepPlan(name, ordered, select)


def _plain_train(train: dict, epochs: int, lr: float, defaults: dict) -> dict:
    return {**defaults, **{k: train[k] for k in PLAIN_KEYS}, "prior": "none",
            "epochs": epochs, "lr": lr}


def _config_key(train, analyse, bench, pre_key, label, tune) -> str:
    """A configuration's identity: its settings less the seed (and its plain net's seed)."""
    pre = json.loads(pre_key) if pre_key else None
    if pre:
        pre = {k: v for k, v in pre.items() if k != "seed"}
    a = {k: v for k, v in analyse.items() if k != "seed"}
    return json.dumps({"train": {k: v for k, v in train.items() if k != "seed"},
                       "analyse": a, "bench": bench, "pretrain": pre, "label": label,
                       "tune": tune}, sort_keys=True)


def _configuration_names(entries) -> dict[str, str]:
    """Configuration identity → name: ``<model>-<prior>``, the block's label if any, then the
    settings in which the configurations of that model, prior and label differ."""
    configs: dict[str, dict] = {}
    for train, analyse, bench, pre_key, label, tune in entries:
        key = _config_key(train, analyse, bench, pre_key, label, tune)
        pre = json.loads(pre_key) if pre_key else {}
        flat = {**{k: v for k, v in train.items() if k != "seed"},
                **{k: v for k, v in analyse.items() if k != "seed"},
                **{f"bench_{k}": v for k, v in bench.items()},
                "pretrain_epochs": pre.get("epochs", 0), "pretrain_lr": pre.get("lr"),
                "finetune_epochs": tune.get("finetune", 0),
                "finetune_rounds": tune.get("finetune_rounds", 1),
                "finetune_budget": tune.get("finetune_budget")}
        configs[key] = {"base": f"{train['model']}-{train['prior']}", "label": label,
                        "flat": flat}
    groups: dict[tuple, list[str]] = {}
    for key, c in configs.items():
        groups.setdefault((c["base"], c["label"]), []).append(key)
    names = {}
    for (base, label), keys in groups.items():
        differ = sorted({s for k in keys for s in configs[k]["flat"]
                         if len({_text(configs[j]["flat"].get(s)) for j in keys}) > 1})
        for k in keys:
            suffix = [f"{s}{_text(configs[k]['flat'].get(s))}" for s in differ]
            names[k] = "-".join([base, *([label] if label else []), *suffix])
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            raise SpecError(f"two configurations are named {name!r}: give their [[grid]] "
                            f"blocks distinct labels")
        seen[name] = key
    return names


def _text(value) -> str:
    """A setting as it appears in a configuration's name (``0.2``, ``fc1_0.15_fc2_0.15``)."""
    if isinstance(value, dict):
        return "_".join(f"{k}_{_text(v)}" for k, v in sorted(value.items())) or "default"
    if value is None:
        return "default"
    return f"{value:g}" if isinstance(value, float) else str(value)
