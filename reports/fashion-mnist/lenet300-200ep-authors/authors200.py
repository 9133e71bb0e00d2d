"""Train the authors' LeNet-300-100 (their ``LinearGroupNJ`` layers and training loop: Adam at a
constant 1e-3, batch 128, shuffled each epoch, the variance bound 0.04 on fc1 applied after
each step, the KL divided by the number of training images) on the same 55,000 training images
as a pbc run of the same seed, inputs in [0, 1] as pbc feeds them; then write the posterior
into that pbc run's checkpoint, so that ``pbc analyse`` and ``pbc compress`` treat it as they
treat pbc's own BC-GNJ posteriors (the parameterisation is the same: w = z·w̃, q(z) = N(μ, σ²)).

Needs ``BayesianLayers.py`` from github.com/KarenUllrich/Tutorial_BayesianCompressionForDL
beside this file (not included here).

    pbc train --model lenet300 --prior gnj --epochs 1 --seed S --out RUN   # the split, the config
    python authors200.py RUN 200                                            # resumable
    pbc analyse RUN; pbc compress RUN; pbc frontier RUN --budgets 0.25,0.5,0.75,1,1.5,2
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from pbc.rundir import load_trained, run_splits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import BayesianLayers  # noqa: E402  (the authors' module, beside this file)

# pbc's name for each of the authors' parameters
PARAMETER_NAMES = {"z_mu": "scale_guide.loc", "z_logvar": "scale_guide.logvar",
                   "weight_mu": "w_loc", "weight_logvar": "w_logvar",
                   "bias_mu": "b_loc", "bias_logvar": "b_logvar"}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = BayesianLayers.LinearGroupNJ(784, 300, clip_var=0.04)
        self.fc2 = BayesianLayers.LinearGroupNJ(300, 100)
        self.fc3 = BayesianLayers.LinearGroupNJ(100, 10)
        self.kl_list = [self.fc1, self.fc2, self.fc3]

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def kl_divergence(self):
        return sum(layer.kl_divergence() for layer in self.kl_list)


def error(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x.reshape(len(x), -1)).argmax(-1) != y).float().mean().item()


def main(run: str, epochs: int) -> None:
    torch.set_num_threads(1)
    trained = load_trained(run)
    _, splits = run_splits(trained.config)
    x, y = splits.train_x.reshape(len(splits.train_x), -1), splits.train_y
    torch.manual_seed(trained.config.seed)
    model = Net()
    optimiser = torch.optim.Adam(model.parameters())
    state_path, start = os.path.join(run, "authors_state.pt"), 0
    if os.path.exists(state_path):
        state = torch.load(state_path)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"]
    for epoch in range(start, epochs):
        began = time.time()
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            batch = order[i:i + 128]
            optimiser.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch]) + model.kl_divergence() / len(x)
            loss.backward()
            optimiser.step()
            for layer in model.kl_list:
                layer.clip_variances()
        torch.save({"model": model.state_dict(), "opt": optimiser.state_dict(),
                    "epoch": epoch + 1, "rng": torch.get_rng_state()}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        print(json.dumps({"epoch": epoch + 1, "s": round(time.time() - began, 1),
                          "loss": loss.item(), "val": error(model, splits.val_x, splits.val_y),
                          "test": error(model, splits.test_x, splits.test_y)}), flush=True)

    layers = {layer.site: layer for layer in trained.net.bayes_layers()}
    with torch.no_grad():
        for site in ("fc1", "fc2", "fc3"):
            theirs = getattr(model, site)
            for name, ours in PARAMETER_NAMES.items():
                layers[site].get_parameter(ours).copy_(getattr(theirs, name))
    checkpoint = dict(trained.checkpoint)
    checkpoint["model"] = trained.net.state_dict()
    trained.dir.write_checkpoint(checkpoint)
    print("written into", run)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
