"""Detection data in other layouts than COCO, read as COCO records (and written from them).

Each reader converts its layout to in-memory COCO records (:class:`~cvexp.data.validation.CocoRecords`),
which meet the one COCO validator and become the samples of
:class:`~cvexp.data.coco.CocoDetectionDataset`: augmentation, training, evaluation and reports
need no change. ``python -m cvexp.convert`` writes what a reader understood as COCO json.

- :mod:`~cvexp.data.formats.yolo`: Ultralytics ``data.yaml`` + ``images/`` + ``labels/*.txt`` (and the writer);
- :mod:`~cvexp.data.formats.voc`: Pascal VOC XML;
- :mod:`~cvexp.data.formats.hf_datasets`: Hugging Face ``datasets`` (``save_to_disk`` folders, parquet).
"""

from cvexp.data.formats.hf_datasets import HfDetectionDataset
from cvexp.data.formats.voc import VocDetectionDataset
from cvexp.data.formats.yolo import YoloDetectionDataset

__all__ = ["HfDetectionDataset", "VocDetectionDataset", "YoloDetectionDataset"]
