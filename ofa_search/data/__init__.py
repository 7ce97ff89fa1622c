"""Datasets for supernet training, held in memory as uint8 tensors.

Registered datasets (:func:`load_dataset` by name):

- ``digits`` — scikit-learn's bundled 8×8 handwritten digits; always available. It has no
  official test set: a fixed, stratified 20 % is carved out as ``test``.
- ``fashion-mnist`` — the four standard IDX files (raw or ``.gz``) from ``data_dir``,
  default ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
- ``imagefolder`` — ``root/train/<class>/…`` (+ ``val/``, ``test/``) read with Pillow.

Every dataset comes as :class:`DatasetSplits`: ``train``, a seeded stratified ``val``
hold-out of the training data (for BN recalibration and accuracy-predictor data), and
``test`` (for reporting only), with metadata. Batches come from :func:`iterate_batches`
(vectorised, with augmentation driven by an explicit ``torch.Generator``) or from a
``DataLoader`` over a split, sharded across ranks with :class:`ShardSampler`.
:func:`resize_batch` moves a batch to another resolution, as elastic-resolution training
does every step.

ImageNet-scale folders are streamed instead (``imagenet``, :func:`is_streamed_dataset`):
:func:`open_image_stream` lists ``root/train/<wnid>/…`` and ``root/val/<wnid>/…`` as
:class:`ImageFolderStream` datasets that decode one image at a time with once-for-all's
evaluation preprocessing (:func:`eval_transform`), and :func:`stream_loader` batches a
seeded random subset of one through ``DataLoader`` workers. For training on such a folder,
:class:`TrainStream` applies once-for-all's training augmentation (:func:`train_transform`)
seeded per sample and epoch, and :func:`train_stream_loader` serves one epoch of it, sharded
across ranks and resumable mid-epoch (``start_batch``), with batches that do not depend on
the number of workers.
"""

from __future__ import annotations

from ofa_search.data._errors import DatasetError
from ofa_search.data._idx import parse_idx, read_idx
from ofa_search.data._loader import ShardSampler, iterate_batches, shard_indices
from ofa_search.data._registry import available_datasets, load_dataset
from ofa_search.data._sources import FASHION_MNIST_DIR, FASHION_MNIST_FILES
from ofa_search.data._split import derive_seed, stratified_split
from ofa_search.data._splits import DatasetSplits, ImageSplit
from ofa_search.data._stream import (
    DEFAULT_EVAL_IMAGES,
    IMAGENET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFA_CALIB_IMAGES,
    STREAM_BATCH_SIZE,
    STREAMED_DATASETS,
    ImageFolderStream,
    ImageStreamSplits,
    StreamLoader,
    default_num_workers,
    eval_transform,
    is_streamed_dataset,
    open_image_stream,
    resize_size,
    stream_loader,
    subset_indices,
)
from ofa_search.data._train_stream import (
    AUGMENT_SEED_TAG,
    CROP_RATIO,
    CROP_SCALE,
    TrainStream,
    random_crop_box,
    train_stream_loader,
    train_transform,
)
from ofa_search.data._transforms import (
    AugmentPolicy,
    augment_batch,
    normalize_batch,
    resize_batch,
)

__all__ = [
    "AUGMENT_SEED_TAG",
    "CROP_RATIO",
    "CROP_SCALE",
    "DEFAULT_EVAL_IMAGES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "IMAGENET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFA_CALIB_IMAGES",
    "STREAMED_DATASETS",
    "STREAM_BATCH_SIZE",
    "AugmentPolicy",
    "DatasetError",
    "DatasetSplits",
    "ImageFolderStream",
    "ImageSplit",
    "ImageStreamSplits",
    "ShardSampler",
    "StreamLoader",
    "TrainStream",
    "augment_batch",
    "available_datasets",
    "default_num_workers",
    "derive_seed",
    "eval_transform",
    "is_streamed_dataset",
    "iterate_batches",
    "load_dataset",
    "normalize_batch",
    "open_image_stream",
    "parse_idx",
    "random_crop_box",
    "read_idx",
    "resize_batch",
    "resize_size",
    "shard_indices",
    "stratified_split",
    "stream_loader",
    "subset_indices",
    "train_stream_loader",
    "train_transform",
]
