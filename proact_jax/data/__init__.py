"""Data: the ``Dataset`` arrays, their sources (digits, tensorflow-datasets, CIFAR archives, image
folders) and the input pipeline (normalisation, augmentation, batching)."""
