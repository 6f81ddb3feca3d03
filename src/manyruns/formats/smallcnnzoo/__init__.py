"""The Small CNN Zoo release format: export a population of small CNNs, import a published zoo.

A zoo directory holds three files::

    weights.npy      (rows, P) float32   one row per network and checkpoint, flattened parameters
    metrics.csv.gz   one row per row of weights.npy: config.* (the network's hyperparameters),
                     modeldir (which network), step (the checkpoint's epoch), test_accuracy,
                     test_loss, train_accuracy, train_loss
    layout.csv       varname, start_idx, end_idx, shape: which columns of a row hold which tensor
                     (``sequential/conv2d/bias:0``, ..., ``sequential/dense/kernel:0``; the
                     ``sequential/`` scope is optional on import; ``end_idx`` is exclusive)

The release orders each layer's bias before its kernel and stores convolution kernels as
(height, width, in, out) and dense kernels as (in, out); this project flattens each layer as
weight then bias, with convolution weights as (out, in, height, width) and dense weights as
(out, in). :func:`our_order_index` gives the column permutation between the two, built from
the tensors' shapes, so the mapping is the same in both directions.

Hyperparameter names (``config.*`` values) map to recipe fields as follows (case and
underscores in the release's names are ignored on import)::

    config.w_init          he_normal, glorot_normal, orthogonal  -> model.init of the same name
                           RandomNormal                          -> model.init = "normal"
                           TruncatedNormal                       -> model.init = "truncated_normal"
                           (this project's own names are accepted too; "default" is PyTorch's)
    config.activation      relu, tanh, ...                       -> model.activation
    config.optimizer       sgd, adam, rmsprop (adamw)            -> optimizer.name
    config.learning_rate                                         -> optimizer.lr
    config.l2reg           L2 penalty l2 * sum(w^2) in the loss  -> optimizer.weight_decay = 2 * l2reg
    config.init_std, config.dropout                              -> model.init_std, model.dropout
    config.train_fraction                                        -> the run's subset ratio
    config.dataset         mnist, fashion_mnist, cifar10, svhn_cropped (the zoo's grayscale
                           CIFAR-10 and SVHN when the first layer has one input channel)
                           -> mnist, fashion-mnist, cifar10-gs, svhn-gs (our names accepted too)
    config.random_seed                                           -> the run's seed

Any other name is an error that names the file and row. Two differences of substance remain:
Keras applies the L2 penalty to kernels only (``weight_decay`` here applies to every
parameter), and Keras draws ``he_normal`` and ``glorot_normal`` from a truncated normal.
"""

from .export import export_smallcnnzoo
from .importer import import_smallcnnzoo
from .layout import Architecture, ZooFormatError, ZooTensor, our_layout, our_order_index, write_layout, zoo_tensors_for
from .read import read_zoo

__all__ = [
    "Architecture",
    "ZooFormatError",
    "ZooTensor",
    "export_smallcnnzoo",
    "import_smallcnnzoo",
    "our_layout",
    "our_order_index",
    "read_zoo",
    "write_layout",
    "zoo_tensors_for",
]
