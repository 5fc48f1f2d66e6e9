"""Config files: what a run writes (`config.yaml`, the result JSON files) and what `--config` reads."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from danling.runner import Config

from ..conftest import ClassifierRunner

# Writing: nothing a user puts in a config or a result stops a run


class Compose:
    """Stands for `torchvision.transforms.Compose`, which the reference's MNIST demo keeps in its config."""

    def __init__(self, *transforms) -> None:
        self.transforms = transforms

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"


class NoteRunner(ClassifierRunner):
    """Adds objects JSON cannot hold to every evaluation result."""

    def evaluate_epoch(self, split):
        result = super().evaluate_epoch(split)
        result["note"] = Compose("note")
        result["head"] = nn.Linear(1, 1)
        return result


def test_objects_yaml_cannot_represent_never_stop_a_run(make_runner):
    class Local:  # a local class: neither YAML nor pickle can store its instances
        def __repr__(self) -> str:
            return "Local()"

    module = nn.Linear(2, 3)
    runner = make_runner(
        NoteRunner, log=True, epoch_end=1, transform=Compose("ToTensor()"), local=Local(), fn=lambda x: x, net=module
    )
    runner.train()  # writing config.yaml raised yaml.representer.RepresenterError before the first epoch

    with open(Path(runner.dir) / "config.yaml") as fp:
        written = yaml.safe_load(fp)
    assert written["transform"] == "Compose('ToTensor()')"
    assert written["local"] == "Local()"
    assert written["fn"].startswith("<function")
    assert written["net"] == repr(module)
    assert written["epoch_end"] == 1  # the rest as it was
    log = (Path(runner.dir) / "run.log").read_text()
    warnings = [line for line in log.splitlines() if "[WARNING]" in line and "config.yaml" in line]
    assert len(warnings) == 1
    for key in ("'transform'", "'local'", "'fn'", "'net'"):
        assert key in warnings[0]
    assert "'epoch_end'" not in warnings[0]


def test_objects_in_results_are_written_as_their_repr(make_runner):
    runner = make_runner(NoteRunner, epoch_end=1)
    runner.train()
    for name in ("results.json", "latest.json", "best.json"):
        text = (Path(runner.dir) / name).read_text()
        content = json.loads(text, parse_constant=pytest.fail)  # strict JSON: no bare NaN/Infinity
        val = content["results"]["0"]["val"] if name == "results.json" else content["val"]
        assert val["note"] == "Compose('note')"
        assert val["head"] == repr(nn.Linear(1, 1))
    checkpoint = torch.load(Path(runner.checkpoint_dir) / "latest.pth", weights_only=True)
    assert checkpoint["results"][0]["val"]["note"] == "Compose('note')"


def test_checkpoints_hold_the_config_in_plain_types(make_runner):
    runner = make_runner(epoch_end=1, fn=lambda x: x, transform=Compose(1))
    runner.train()
    saved = torch.load(Path(runner.checkpoint_dir) / "latest.pth", weights_only=True)["runner"]
    assert saved["transform"] == "Compose(1)"
    assert saved["fn"].startswith("<function")


def test_a_plain_config_yaml_logs_no_warning(make_runner):
    runner = make_runner(log=True, epoch_end=1)
    runner.train()
    assert "YAML cannot represent" not in (Path(runner.dir) / "run.log").read_text()


# Reading: --config takes the command line's checks


class FileConfig(Config):
    width: int  # declared without a default
    epoch_end: int = 5

    def __init__(self) -> None:
        super().__init__()
        self.network.depth = 4
        self.optim.type = "sgd"
        self.optim.lr = 0.1


def write(path: Path, content: dict) -> str:
    with open(path, "w") as fp:
        if path.suffix == ".json":
            json.dump(content, fp)
        else:
            yaml.safe_dump(content, fp)
    return str(path)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
@pytest.mark.parametrize(
    ("content", "key", "closest"),
    [
        ({"epochs_end": 3}, "epochs_end", "epoch_end"),
        ({"optim": {"lrr": 0.01}}, "optim.lrr", "optim.lr"),
        ({"optm": {"lr": 0.01}}, "optm.lr", "optim.lr"),
        ({"widht": 3}, "widht", "width"),
        ({"network": {"depht": 3}}, "network.depht", "network.depth"),
        ({"precison": "bf16"}, "precison", "precision"),
        ({"dataloader": {"batch_sise": 8}}, "dataloader.batch_sise", "dataloader.batch_size"),
    ],
)
def test_a_typo_in_a_config_file_names_the_key_the_file_and_the_closest_key(tmp_path, suffix, content, key, closest):
    path = write(tmp_path / f"exp{suffix}", content)
    config = FileConfig()
    with pytest.raises(ValueError, match=rf"did you mean '{closest}'") as error:
        config.parse(["--config", path])
    assert repr(key) in str(error.value)
    assert path in str(error.value)
    assert config.epoch_end == 5  # nothing of the file was applied


def test_new_keys_of_a_config_file_far_from_known_ones_are_accepted(tmp_path):
    content = {
        "width": 16,
        "hidden_width": 64,
        "optim": {"lr": 0.01, "weight_decay": 0.05, "betas": [0.9, 0.99]},
        "sched": {"type": "cosine", "warmup_steps": 10},
        "dataloader": {"batch_size": 8, "val": {"batch_size": 16}},
    }
    config = FileConfig().parse(["--config", write(tmp_path / "exp.yaml", content)])
    assert (config.width, config.hidden_width, config.optim.weight_decay) == (16, 64, 0.05)
    assert config.sched.warmup_steps == 10
    assert config.dataloader.val.batch_size == 16


def test_a_typo_in_a_config_file_stops_a_script_before_its_run_directory(tmp_path, subprocess_run):
    (tmp_path / "train.py").write_text(
        "import danling as dl\n"
        "config = dl.Config({'epoch_end': 1, 'device': 'cpu'})\n"
        "config.parse()\n"
        "dl.TorchRunner(config).train()\n"
    )
    path = write(tmp_path / "exp.yaml", {"epochs_end": 3})
    result = subprocess_run([sys.executable, "train.py", "--config", path], cwd=tmp_path)
    assert result.returncode != 0
    assert f"unknown config key 'epochs_end' in config file {path!r}; did you mean 'epoch_end'?" in result.stderr
    assert not (tmp_path / "experiments").exists()


class Payload:
    """Unpickling it creates `marker`: what a malicious `.pkl` config could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_pickle_payload_really_runs_code_when_unpickled(tmp_path):
    pickle.loads(pickle.dumps(Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()


@pytest.mark.parametrize("name", ["exp.pkl", "exp.pickle", "exp.pth", "exp.pt", "exp.npy", "exp.txt", "exp"])
def test_config_files_other_than_yaml_and_json_are_refused_before_they_are_opened(tmp_path, name):
    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"epoch_end": Payload(marker)}))
    with pytest.raises(ValueError, match=r"\.yaml, \.yml, \.json") as error:
        FileConfig().parse(["--config", str(path)])
    assert repr(str(path)) in str(error.value)
    assert not marker.exists()


def test_a_refused_config_file_need_not_exist(tmp_path):
    with pytest.raises(ValueError, match="YAML or JSON only"):
        FileConfig().parse(["--config", str(tmp_path / "missing.pkl")])
