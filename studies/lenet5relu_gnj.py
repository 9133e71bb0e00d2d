"""Study lenet5-relu × gnj: gnj on LeNet-5-Caffe with a ReLU after each convolution, fashion-mnist.

Claim: on the authors' LeNet-5 layers and with their training settings, BC-GNJ prunes more
filters and fc1 inputs than on Caffe's LeNet-5 (no ReLU after the convolutions), at lower
error.

Protocol: 30 epochs from scratch with the settings of the authors' reference code: constant
learning rate 10⁻³ (pbc's default before the cooldown; the committed runs used it), batch
128, one learning rate for every parameter, the weight-variance bound (0.04) on the largest
layer, fc1, only, and the convolutions' weight means drawn as ``nn.Conv2d`` draws them (the
runs committed before ``lenet5relu-gnj-uconv-*`` drew N(0, 1/fan_in)).  Thresholds and bits
by the error budget (0.5 points) on the validation split; the frontier at 0.5 … 3 points.
Command (``--seed S`` for another seed)::

    python studies/lenet5relu_gnj.py

Add ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Tables 1 and 2, BC-GNJ rows): LeNet-5-Caffe
pruned to 8-13-88-13 (original 20-50-800-500) with bit precisions 18-10-7-9; error 1.0%
(uncompressed 0.9%), |w≠0|/|w| 0.9%, pruning 108x, fast prediction 361x, maximum compression
573x.
"""

import sys

from pbc.study import CONSTANT_RATE, Study, main

STUDY = Study(name="lenet5relu-gnj", model="lenet5-relu", prior="gnj", data="fashion-mnist",
              epochs=30, pretrain_epochs=0, device="cpu", train=CONSTANT_RATE,
              budgets=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0))

if __name__ == "__main__":
    sys.exit(main(STUDY))
