"""Study vgg16 × gnj: gnj on vgg16, cifar10.

Claim: BC-GNJ on VGG-16 (CIFAR-10, batch norm): filters pruned, bit precisions from the
posterior. Needs CIFAR-10 (--data-dir) and a GPU.

Protocol: a plain net pretrained for 100 epochs, then 200 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/vgg16_gnj.py --data-dir DIR

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (CIFAR-10): VGG BC-GNJ error 8.6%, pruning 14x, fast prediction 56x (pbc/paper.py).
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="vgg16-gnj", model="vgg16", prior="gnj", data="cifar10",
              epochs=200, pretrain_epochs=100, device="cuda", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
