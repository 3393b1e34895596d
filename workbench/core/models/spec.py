"""What an algorithm needs to know about the data to build its networks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    in_channels: int  # image channels; vector kinds: input features
    image_size: int  # 0 for vector inputs
    ways: int  # ways of training episodes (size of MAML's head); 1 for a single regression target
    num_train_classes: int  # classes in meta-train (size of a pre-training head); 0 without classes
    kind: str = "classification"  # the experiment kind whose loss and head the algorithm uses

    def to_dict(self) -> dict:
        return {"in_channels": self.in_channels, "image_size": self.image_size, "ways": self.ways,
                "num_train_classes": self.num_train_classes, "kind": self.kind}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        # Checkpoints from before experiment kinds have no "kind": they were all classification.
        return cls(int(data["in_channels"]), int(data["image_size"]), int(data["ways"]),
                   int(data["num_train_classes"]), str(data.get("kind") or "classification"))
