"""Study lenet300 × ghs: ghs on lenet300, fashion-mnist.

Claim: BC-GHS (group horseshoe, τ0 = 1e-5) prunes LeNet-300-100 groups and sets bit
precisions, within about a point of the plain net's error.

Protocol: a plain net pretrained for 30 epochs, then 30 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet300_ghs.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST): LeNet-300-100 BC-GHS rows of Tables 1 and 2 (see pbc/paper.py for what could
be read).
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="lenet300-ghs", model="lenet300", prior="ghs", data="fashion-mnist",
              epochs=30, pretrain_epochs=30, device="cpu", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
