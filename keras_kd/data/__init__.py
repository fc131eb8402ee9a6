"""Data: MNIST/CIFAR-10 loaders and file formats, `tf.data` pipelines, the
Shakespeare text for language models, and the bundled samples (this
folder's `mnist-10k.npz` and `shakespeare-10-plays.txt.gz`)."""
