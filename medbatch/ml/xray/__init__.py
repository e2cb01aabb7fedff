"""Chest X-ray pneumonia classifier: the article's Keras CNN, trained on the usual folder layout.

The default architecture is the source article's: three Conv2D + MaxPool blocks (32, 64, 128
filters), a 512-unit dense layer and a sigmoid output, on a 150 x 150 grayscale input. Everything
is configurable through :class:`XrayConfig`.

Pixels come from :mod:`medbatch.ml.images` for training and serving alike (PNG, JPEG or DICOM, air
dark, [0, 1]), so what the model learned on is what it sees at night.

Training reads ``train/NORMAL`` and ``train/PNEUMONIA`` (plus ``val/`` and ``test/`` when they are big
enough), augments with Keras preprocessing layers inside a ``tf.data`` pipeline, weights the classes
against the imbalance, stops early on validation AUC, picks the decision threshold on validation data
(Youden's J, or a fixed value) and reports AUC, sensitivity, specificity and the confusion matrix on
held-out test images, with a ROC curve PNG.

The artifact is one zip file (``model.keras`` + ``meta.json``), so the registry's SHA-256 version covers
the weights, the threshold and the class names together. It is loaded with ``safe_mode=True``.

TensorFlow is imported inside functions only: importing this package costs nothing, and a Celery
parent process never loads TensorFlow before it forks its children.

Modules by responsibility: ``model`` (architecture, the loaded classifier), ``data`` (folder layout,
splits, fingerprint, decoding), ``training``, ``findings`` (attention, draft text, overlay PNG) and
``artifact`` (the Keras zip, the model card). Everything callers use is re-exported here.
"""

from medbatch.ml.artifacts import tf_module
from medbatch.ml.evaluation import roc_png
from medbatch.ml.xray.artifact import ARTIFACT_ENTRIES, load_model, save_model, write_card
from medbatch.ml.xray.data import (
    IMAGE_SUFFIXES,
    INPUT_FEATURES,
    MIN_SPLIT_PER_CLASS,
    Split,
    _group_split,
    decode_many,
    find_layout,
    fingerprint,
    input_features,
    patient_group,
)
from medbatch.ml.xray.findings import attention_region, draft_findings, overlay_png
from medbatch.ml.xray.model import (
    ARTIFACT_FORMAT,
    ARTIFACT_NAME,
    CLASS_NAMES,
    LABELS,
    LAST_CONV,
    XrayConfig,
    XrayModel,
    build_model,
)
from medbatch.ml.xray.training import TrainedXray, choose_threshold, drift_reference, evaluate, train_xray

__all__ = [
    "ARTIFACT_ENTRIES",
    "ARTIFACT_FORMAT",
    "ARTIFACT_NAME",
    "CLASS_NAMES",
    "IMAGE_SUFFIXES",
    "INPUT_FEATURES",
    "LABELS",
    "LAST_CONV",
    "MIN_SPLIT_PER_CLASS",
    "Split",
    "TrainedXray",
    "XrayConfig",
    "XrayModel",
    "_group_split",
    "attention_region",
    "build_model",
    "choose_threshold",
    "decode_many",
    "drift_reference",
    "draft_findings",
    "evaluate",
    "find_layout",
    "fingerprint",
    "input_features",
    "load_model",
    "overlay_png",
    "patient_group",
    "roc_png",
    "save_model",
    "tf_module",
    "train_xray",
    "write_card",
]
