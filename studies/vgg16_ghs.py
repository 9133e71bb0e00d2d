"""Study vgg16 × ghs: ghs on vgg16, cifar10.

Claim: BC-GHS on VGG-16 (CIFAR-10). Needs CIFAR-10 (--data-dir) and a GPU.

Protocol: a plain net pretrained for 100 epochs, then 200 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/vgg16_ghs.py --data-dir DIR

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (CIFAR-10): VGG BC-GHS error 9.0%, pruning 18x, fast prediction 59x (pbc/paper.py).
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="vgg16-ghs", model="vgg16", prior="ghs", data="cifar10",
              epochs=200, pretrain_epochs=100, device="cuda", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
