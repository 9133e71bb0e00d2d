"""Names, choices and defaults that the command line shows before any stage runs.

This module imports nothing: ``pbc --help`` and ``pbc CMD --help`` build their parser from it
without importing torch, Pyro, ArviZ, pandas, matplotlib or Ray.  Each constant lives here
only; the modules that use it (:mod:`pbc.nets`, :mod:`pbc.methods`, :mod:`pbc.data`, …)
import it from here.
"""

from __future__ import annotations

#: the named architectures, in the order ``--model`` lists them (:data:`pbc.nets.ARCHITECTURES`)
MODELS: tuple[str, ...] = ("lenet300", "lenet5", "lenet5-relu", "vgg16", "vgg16-narrow")

#: the built-in methods (``--prior``), in registration order (:data:`pbc.methods.METHODS`)
PRIORS: tuple[str, ...] = ("none", "gnj", "ghs", "svd", "sws", "dc")

#: the data sets :func:`pbc.data.load_dataset` reads
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10")

#: learning-rate schedules of :class:`pbc.config.TrainConfig`
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant", "cooldown")
COOLDOWN = 0.1   # the share of the run over which "cooldown" decays the rate to 0
# training defaults: those of Louizos et al.'s reference code (Adam at 10⁻³, minibatches of
# 128, one learning rate for every parameter), with the rate decayed to 0 over the last tenth
# of the run (their code keeps it constant) and BC from scratch at a larger rate
BATCH_SIZE = 128
LR = 1e-3   # Adam's learning rate
GROUP_SCRATCH_LR = 5e-3   # BC-GNJ and BC-GHS from scratch (PosteriorMethod.default_lr: why)
CLIP_VAR = 0.04   # Louizos et al.'s bound on Var[w̃] (clip_var), on their LeNet-300-100's fc1
# BC-GNJ and BC-GHS from scratch: the bound on the largest layer (pbc.methods.posterior: why)
GROUP_SCRATCH_WEIGHT_VAR = 0.01
LR_SCHEDULE = "cooldown"
SCALE_VAR_LR = 1.0   # learning-rate multiplier for the group scales' log-variances
# `pbc finetune`: epochs on the kept groups, the rate decayed to 0 over them from FINETUNE_LR
FINETUNE_EPOCHS = 10
FINETUNE_LR = 1e-3
FINETUNE_SCHEDULE = "cosine"

#: how :func:`pbc.analysis.stage.analyse` chooses the layers' pruning thresholds
RULES: tuple[str, ...] = ("budget", "gap")
PRECISIONS: tuple[str, ...] = ("budget", "posterior")   # how analyse chooses bits per layer
DEFAULT_ERROR_BUDGET = 0.5   # points of validation error
DEFAULT_BUDGETS = (0.25, 0.5, 1.0, 1.5, 2.0)   # the error budgets of `pbc frontier`, points


def parse_budgets(text: str) -> list[float]:
    """Comma-separated error budgets in points (``"0.5,1,2"``), each a finite number ≥ 0;
    ValueError names what is wrong."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise ValueError("give at least one budget, e.g. 0.5,1,2")
    values = []
    for t in parts:
        try:
            v = float(t)
        except ValueError:
            raise ValueError(f"expected a number, got {t!r}") from None
        if not 0 <= v < float("inf"):
            raise ValueError(f"must be a number ≥ 0, got {t}")
        values.append(v)
    return values

# soft weight-sharing (Ullrich et al. 2017): the weight of the prior against the
# log-likelihood, and the (concentration, rate) of the Gamma hyperpriors on the mixture's
# precisions (:mod:`pbc.bayes.mixture`)
SWS_DEFAULT_TAU = 0.005
GAMMA_ZERO = (5000.0, 2.0)    # the zero component's precision
GAMMA_OTHER = (250.0, 0.1)    # every other component's precision
ZERO_RATE_HELP = ("rate of the Gamma hyperprior on the zero component's precision (default 2, "
                  "the authors' tutorial's); smaller lets the zero spike narrow further "
                  "(see pbc.methods.sws)")
RATE_HELP = ("rate of the Gamma hyperprior on the other components' precisions (default 0.1, "
             "the tutorial's); smaller lets a component with few weights narrow")

#: ``pbc export --format``: the file each format writes into the run directory by default
EXPORT_FILES: dict[str, str] = {
    "int8": "model.int8.pt",                # pbc's int8 network (torch.load, weights_only)
    "torchscript": "model.torchscript.pt",  # torch.jit.load, no pbc needed
    "onnx": "model.onnx",                   # ONNX Runtime and other ONNX tools
    "state-dict": "model.state_dict.pt",    # torch.load; its architecture in a .json beside it
}
EXPORT_FORMATS: tuple[str, ...] = tuple(EXPORT_FILES)
