"""The training configuration: one record of every setting, saved in ``config.json``.

``pbc train`` flags map one-to-one onto :class:`TrainConfig`'s fields.  Method-specific
fields (``tau0``, ``sws_*``, ``dc_keep``, ``max_weight_var``) are read only by their method
(:mod:`pbc.methods`), which :func:`pbc.train.check_config` asks to validate them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pbc.defaults import (
    BATCH_SIZE,
    GAMMA_OTHER,
    GAMMA_ZERO,
    LR_SCHEDULE,
    LR_SCHEDULES,
    SCALE_VAR_LR,
    SWS_DEFAULT_TAU,
)
from pbc.nets import ARCHITECTURES, is_factory_name

# what a setting was before it existed: a run saved before validation splits existed trained
# on the whole training set, and one saved before the scales had their own learning rate
# trained every parameter at one rate
LEGACY_SETTINGS = {"val": 0, "scale_var_lr": 1.0}
#: the settings a plain net shares with the runs that start from it (studies, sweeps)
PLAIN_KEYS = ("model", "data", "subset", "val", "seed", "batch_size", "lr_schedule")


class SettingError(ValueError):
    """A setting that does not fit the network it is applied to (a layer it lacks), found
    when the network is built."""


@dataclass
class TrainConfig:
    """Every setting of a training run (``pbc train`` flags map one-to-one onto these)."""

    out: str
    model: str = "lenet300"
    prior: str = "gnj"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    epochs: int = 30
    batch_size: int = BATCH_SIZE
    lr: float | None = None   # None: the method's default, which training writes into config.json
    lr_schedule: str = LR_SCHEDULE
    scale_var_lr: float = SCALE_VAR_LR   # multiplier of lr for the group scales' log-variances
    seed: int = 0
    device: str = "cpu"
    subset: int | None = None
    val: int | None = None   # validation examples held out of training; None: the data's default
    init_from: str | None = None
    # an analysed run whose posterior, less the groups its analysis pruned, this run trains on
    # (`pbc finetune`); None: a run of its own
    finetune_from: str | None = None
    resume: bool = False
    tau0: float = 1e-5
    # bound on Var[w̃]: one for every layer, or {layer: bound} for those layers only ({}: none);
    # None: the method's default, which training writes into config.json in its place
    max_weight_var: float | dict[str, float] | None = None
    kl_warmup: int = 0
    sws_tau: float = SWS_DEFAULT_TAU
    sws_zero_rate: float = GAMMA_ZERO[1]   # rates of the mixture's precision hyperpriors
    sws_rate: float = GAMMA_OTHER[1]
    dc_keep: dict[str, float] | None = None   # per-layer keep fractions (dc); None: Han et al.
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for an impossible setting (the
        method checks its own settings: :meth:`pbc.methods.Method.validate`)."""
        if self.model not in ARCHITECTURES and not is_factory_name(self.model):
            raise ValueError(f"unknown model {self.model!r}; choose from {sorted(ARCHITECTURES)} "
                             f"or name your own as package.module:callable")
        for field in ("epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose from "
                             f"{list(LR_SCHEDULES)}")
        if self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be ≥ 0, got {self.kl_warmup}")
        for field in ("lr", "scale_var_lr"):
            value = getattr(self, field)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{field} must be a positive number, got {value}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"subset must be at least 1, got {self.subset}")
        if self.val is not None and self.val < 0:
            raise ValueError(f"val must be at least 0, got {self.val}")
        if not self.tau0 > 0:
            raise ValueError(f"tau0 must be positive, got {self.tau0}")
        if not self.sws_tau > 0:
            raise ValueError(f"sws_tau must be positive, got {self.sws_tau}")
        for field in ("sws_zero_rate", "sws_rate"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        bounds = (self.max_weight_var.values() if isinstance(self.max_weight_var, dict)
                  else [] if self.max_weight_var is None else [self.max_weight_var])
        if not all(b > 0 for b in bounds):
            raise ValueError(f"max_weight_var must be positive, got {self.max_weight_var}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")


def saved_setting(saved: dict, key: str, earlier: dict | None = None):
    """Setting ``key`` of a saved config (``config.json``'s ``"config"``): where the key is
    missing, the value it had before it existed (:data:`LEGACY_SETTINGS`, else its default);
    where it is ``None``, ``earlier[key]`` if given (what ``None`` meant before pbc recorded
    the method's choice: :meth:`pbc.methods.Method.earlier_settings`)."""
    value = saved.get(key, LEGACY_SETTINGS.get(key, TrainConfig.__dataclass_fields__[key].default))
    return (earlier or {}).get(key) if value is None else value
