"""Image benchmarks for distillation: readers for the standard datasets and a seeded, shardable image loader.

``read_images(folder, split) -> ImageSet`` reads CIFAR-10/100 (python and binary versions), MNIST, Fashion-MNIST,
SVHN, VeRi-776 or scikit-learn's bundled digits (``"digits"``); ``ImageLoader`` turns an ImageSet into
``ImageBatch(images (B, C, H, W) float32, label, index, camera)`` with the benchmarks' standard augmentations.
"""

from jetkd.images.loader import STANDARD_AUGMENT, Augment, ImageBatch, ImageLoader, channel_stats, standard_augment
from jetkd.images.readers import FORMATS, ImageFormat, ImageSet, detect_image_format, read_images

__all__ = ["FORMATS", "STANDARD_AUGMENT", "Augment", "ImageBatch", "ImageFormat", "ImageLoader", "ImageSet",
           "channel_stats", "detect_image_format", "read_images", "standard_augment"]
