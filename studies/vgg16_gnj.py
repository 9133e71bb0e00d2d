"""Study vgg16 × gnj: gnj on vgg16, cifar10.

Claim: BC-GNJ on VGG-16 (CIFAR-10, batch norm): filters pruned, bit precisions from the
posterior. Needs CIFAR-10 (--data-dir) and a GPU.

Protocol: a plain net pretrained for 100 epochs, then 200 epochs under the
method from the pretrained weights (the paper also pretrains; its runs are longer).
Command::

    python studies/vgg16_gnj.py --data-dir DIR

Add ``--pretrained RUN`` to reuse a plain run, ``--smoke`` to check the pipeline in seconds.

Paper (CIFAR-10; Louizos, Ullrich & Welling 2017, Tables 1 and 2, BC-GNJ rows): VGG pruned to
63-64-128-128-245-155-63-26-24-20-14-12-11-11-15 (original (2x64)-(2x128)-(3x256)-(8x512), 13
conv + 2 fc) with bit precisions 10-10-10-10-8-8-8-5-5-5-5-5-6-7-11; error 8.6% after pruning
and at maximum compression, 8.8% at fast prediction (uncompressed 8.4%), |w≠0|/|w| 6.7%,
pruning 14x, fast prediction 56x, maximum compression 95x.
"""

import sys

from pbc.study import Study, main

STUDY = Study(name="vgg16-gnj", model="vgg16", prior="gnj", data="cifar10",
              epochs=200, pretrain_epochs=100, device="cuda", train={})

if __name__ == "__main__":
    sys.exit(main(STUDY))
