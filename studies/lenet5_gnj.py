"""Study lenet5 × gnj: gnj on lenet5, fashion-mnist.

Claim: BC-GNJ prunes LeNet-5-Caffe's filters and fc1 inputs (structured), so the pruned
dense network is faster, and its bit precisions come from the posterior.

Protocol: 30 epochs under the method from scratch, as the authors' reference code trains it.
Command::

    python studies/lenet5_gnj.py

Add ``--pretrain-epochs 30`` to start from a plain net, ``--smoke`` to check the pipeline
in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Tables 1 and 2, BC-GNJ rows): LeNet-5-Caffe
pruned to 8-13-88-13 (original 20-50-800-500) with bit precisions 18-10-7-9; error 1.0%
(uncompressed 0.9%), |w≠0|/|w| 0.9%, pruning 108x, fast prediction 361x, maximum compression
573x.
"""

import sys

from pbc.study import EARLIER_BC, Study, main

STUDY = Study(name="lenet5-gnj", model="lenet5", prior="gnj", data="fashion-mnist",
              epochs=30, pretrain_epochs=0, device="cpu", train=EARLIER_BC)

if __name__ == "__main__":
    sys.exit(main(STUDY))
