"""Study lenet300 × svd: svd on lenet300, fashion-mnist.

Claim: Sparse variational dropout prunes single weights (log α ≥ 3); its unstructured
sparsity compresses well but gives little dense speed-up.

Protocol: a plain net pretrained for 30 epochs, then 30 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/lenet300_svd.py

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (MNIST): the Sparse VD row of Table 2 for LeNet-300-100 (see pbc/paper.py).
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="lenet300-svd", model="lenet300", prior="svd", data="fashion-mnist",
              epochs=30, pretrain_epochs=30, device="cpu", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
