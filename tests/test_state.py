"""Resume state: a crafted or corrupt state.json is one error line naming it, never a crash."""

from __future__ import annotations

import json

import pytest
import torch

from wavemel.errors import CheckpointError
from wavemel.train.state import STATE_STEM, Progress, load_state, save_state


def _net_and_optimizer():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    return net, torch.optim.AdamW(net.parameters(), lr=1e-2)


@pytest.fixture
def run(tmp_path):
    net, optimizer = _net_and_optimizer()
    save_state(tmp_path, net, optimizer, Progress(epoch=2, step=8, best_map3=0.5, best_epoch=2))
    return tmp_path


def test_round_trip(run):
    net, optimizer = _net_and_optimizer()
    assert load_state(run, net, optimizer).epoch == 2


def _edit_progress(run, **changes):
    path = (run / STATE_STEM).with_suffix(".json")
    meta = json.loads(path.read_text())
    # The skeleton stores a dict as [[key, value], ...] pairs; find the progress entry.
    for key, value in meta["state"]["__dict__"]:
        if key == "progress":
            for pair in value["__dict__"]:
                pair[1] = changes.get(pair[0], pair[1])
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epoch": "2"}, "field 'epoch' must be an integer"),
        ({"step": 1.5}, "field 'step' must be an integer"),
        ({"epoch": -1}, "field 'epoch' must be >= 0"),
        ({"best_map3": 7.0}, "field 'best_map3' must be in"),
    ],
)
def test_crafted_progress_is_one_line_naming_the_file(run, changes, message):
    # Fails on the old loader: Progress(**values) took any type and the loop crashed later.
    path = _edit_progress(run, **changes)
    net, optimizer = _net_and_optimizer()
    with pytest.raises(CheckpointError, match=message) as info:
        load_state(run, net, optimizer)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_rng_state_is_a_checkpoint_error(run):
    # Fails on the old loader: the RNG states were restored outside its error handling.
    path = (run / STATE_STEM).with_suffix(".json")
    meta = json.loads(path.read_text())
    for pair in meta["state"]["__dict__"]:
        if pair[0] == "rng":
            pair[1] = {"__dict__": [["python", "garbage"]]}
    path.write_text(json.dumps(meta))
    net, optimizer = _net_and_optimizer()
    with pytest.raises(CheckpointError, match="resume state does not fit"):
        load_state(run, net, optimizer)
