"""Study lenet5 × dc: dc on lenet5, fashion-mnist.

Claim: Deep Compression on LeNet-5-Caffe with Han et al.'s per-layer keep fractions.

Protocol: a plain net pretrained for 30 epochs, then 20 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet5_dc.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Table 2, DC row; no Table 1 row): LeNet-5-Caffe
error 0.7% (uncompressed 0.9%), |w≠0|/|w| 8.0%, pruning 6x, maximum compression 39x. The paper
marks this row with its asterisk (best case guesses).
"""

import sys

from pbc.study import EARLIER_DEFAULTS, Study, main

STUDY = Study(name="lenet5-dc", model="lenet5", prior="dc", data="fashion-mnist",
              epochs=20, pretrain_epochs=30, device="cpu", train=EARLIER_DEFAULTS)

if __name__ == "__main__":
    sys.exit(main(STUDY))
