"""The classes of a dataset: its own category ids and names, and the contiguous labels a model trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Category:
    """A dataset category: its own COCO id and name."""

    id: int
    name: str


class LabelMap:
    """Maps the dataset's COCO category ids to contiguous training labels ``0..K-1`` and back.

    A plain class, not a dataclass: Hydra's ``instantiate`` would turn a dataclass argument into
    a config node.
    """

    def __init__(self, categories: list[Category]) -> None:
        self.categories = list(categories)
        # Built once: both lookups run for every image of every batch.
        self._index_of_id = {category.id: index for index, category in enumerate(self.categories)}
        self._ids = torch.tensor([category.id for category in self.categories], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"LabelMap({self.categories!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and other.categories == self.categories

    @property
    def num_labels(self) -> int:
        return len(self.categories)

    @property
    def id2label(self) -> dict[int, str]:
        """Contiguous label -> class name, as Hugging Face model configs store it."""
        return {index: category.name for index, category in enumerate(self.categories)}

    @property
    def label2id(self) -> dict[str, int]:
        return {category.name: index for index, category in enumerate(self.categories)}

    def to_contiguous(self, category_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self._index_of_id[int(c)] for c in category_ids], dtype=torch.int64)

    def to_category_ids(self, labels: torch.Tensor) -> torch.Tensor:
        return self._ids[labels.cpu().long()]

    @classmethod
    def from_records(cls, categories: list[dict], used_ids: set[int]) -> LabelMap:
        """Every category of a COCO file, except a supercategory that has no boxes of its own.

        Roboflow exports list their supercategory (e.g. ``0 RBC-WBC``) as a category; training a
        class that never occurs would only cost capacity, so it is left out.
        """
        ordered = sorted(categories, key=lambda c: c["id"])
        parents = {c.get("supercategory") for c in ordered}
        kept = [c for c in ordered if c["id"] in used_ids or c["name"] not in parents]
        return cls([Category(int(c["id"]), str(c["name"])) for c in kept])
