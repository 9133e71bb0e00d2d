"""Study lenet5 × ghs: ghs on lenet5, fashion-mnist.

Claim: BC-GHS prunes LeNet-5-Caffe's filters and fc1 inputs (structured); the pruned dense
export runs faster in proportion to its FLOPs.

Protocol: 30 epochs under the method from scratch, as the authors' reference code trains it.
Command::

    python studies/lenet5_ghs.py

Add ``--pretrain-epochs 30`` to start from a plain net, ``--smoke`` to check the pipeline
in seconds.

Paper (MNIST; Louizos, Ullrich & Welling 2017, Tables 1 and 2, BC-GHS rows): LeNet-5-Caffe
pruned to 5-10-76-16 (original 20-50-800-500) with bit precisions 10-10-14-13; error 1.0%
(uncompressed 0.9%), |w≠0|/|w| 0.6%, pruning 156x, fast prediction 419x, maximum compression
771x.
"""

import sys

from pbc.study import EARLIER_BC, Study, main

STUDY = Study(name="lenet5-ghs", model="lenet5", prior="ghs", data="fashion-mnist",
              epochs=30, pretrain_epochs=0, device="cpu", train=EARLIER_BC)

if __name__ == "__main__":
    sys.exit(main(STUDY))
