"""A training script written for the reference DanLing (0.4.0b5), kept in the shape of its MNIST demo.

Only the data differs: small synthetic 28x28 "digits" stand in for `torchvision.datasets.MNIST`, so nothing is
downloaded, and a small `Compose` of callables stands in for `torchvision.transforms.Compose`, kept in the config
(`self.dataset.transform`) as the reference demo keeps it: YAML cannot represent it, and the run must not stop.
Everything else (the `Config` subclass with `post()`, config passthrough such as `self.dataset`,
`OPTIMIZERS.build`/`SCHEDULERS.build`, `multiclass_metrics`, `self.meters`, `config.parse()`, `dl.debug`,
`runner.train()` and `runner.evaluate([...])`) is used as the reference documents it.

Run: `python tests/examples/reference_mnist_script.py --epoch_end 1`
"""

import json

import torch
from torch import nn
from torch.utils.data import Dataset

import danling as dl


class Compose:
    """Applies its transforms in turn, as `torchvision.transforms.Compose` does (an object YAML cannot write)."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Normalize:
    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, image):
        return (image - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class SyntheticDigits(Dataset):
    """`(image, label)` pairs like MNIST's: a 1x28x28 float image whose bright row encodes the label."""

    def __init__(self, train: bool = True, size: int = 64, root: str = "data", download: bool = False, transform=None):
        self.transform = transform
        generator = torch.Generator().manual_seed(0 if train else 1)
        self.targets = torch.randint(0, 10, (size,), generator=generator)
        self.data = torch.rand(size, 1, 28, 28, generator=generator) * 0.1
        for index, label in enumerate(self.targets.tolist()):
            self.data[index, 0, 2 * label + 4] += 1.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.data[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


class MNISTConfig(dl.Config):
    epoch_end: int = 2
    log: bool = False
    tensorboard: bool = False
    score_split: str = "val"
    score_name: str = "loss"
    debug: bool = False
    patience: int = 1

    def __init__(self):
        super().__init__()
        self.network.type = "convnet"
        self.dataset.download = True
        self.dataset.root = "data"
        self.dataloader.batch_size = 8
        self.dataloader.num_workers = 2
        self.optim.type = "adamw"
        self.optim.lr = 1e-3
        self.optim.weight_decay = 1e-4
        self.sched.type = "cosine"

    def post(self):
        super().post()
        self.experiment_name = f"{self.network.type}_{self.optim.type}@{self.optim.lr}"


class MNISTRunner(dl.Runner):
    def __init__(self, config: dl.Config):
        super().__init__(config)

        self.dataset.transform = Compose([Normalize(0.1307, 0.3081)])
        self.datasets.train = SyntheticDigits(train=True, **self.dataset)
        self.datasets.val = SyntheticDigits(train=False, **self.dataset)
        self.datasets.test = SyntheticDigits(train=False, size=32, **self.dataset)

        self.model = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10)
        )  # fmt: skip
        self.optimizer = dl.optim.OPTIMIZERS.build(params=self.model.parameters(), **self.optim)
        self.scheduler = dl.optim.SCHEDULERS.build(self.optimizer, total_steps=self.total_steps, **self.sched)
        self.criterion = nn.CrossEntropyLoss()

        self.metrics = dl.metrics.multiclass_metrics(num_classes=10)
        self.meters.loss.reset()
        self.meters.time.reset()


if __name__ == "__main__":
    config = MNISTConfig()
    config.parse()
    with dl.debug(config.get("debug", False)):
        runner = MNISTRunner(config)
        runner.train()
        result = runner.evaluate(["test"])
    # not in the reference demo: hand the evaluation result to the test that runs this script
    with open("test_result.json", "w") as file:
        json.dump(result.dict(), file)
