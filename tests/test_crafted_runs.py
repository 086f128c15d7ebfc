"""Crafted run folders: every malformed checkpoint or config is one clear line, never a crash.

One good tiny run (a cnn-audio checkpoint written as the trainer writes it, and its
``config.json``) is copied and broken in one way per case: wrong types, absurd ranges, garbage
files, special files, weights of the wrong dtype or with NaNs, files from different saves. Each
case runs ``wavemel predict RUN clip.wav``, ``wavemel evaluate RUN`` (and, for configs,
``wavemel train --resume --out RUN``) and must exit 2 with exactly one stderr line
``wavemel: error: ...`` that names the broken file. Most cases call the CLI in-process; the
special files that could block a reader forever (a FIFO, ``/dev/zero``) run in a subprocess with
a timeout, so a hang fails the test instead of hanging it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save

from wavemel.checkpoint import save_checkpoint
from wavemel.cli import main
from wavemel.models import create_model
from wavemel.train.config import TrainConfig

LABELS = ["beep", "hiss", "hum"]
RATE = 8000
SECONDS = 0.5

PREDICT, EVALUATE, RESUME = "predict", "evaluate", "resume"
CHECKPOINT_COMMANDS = (PREDICT, EVALUATE)
CONFIG_COMMANDS = (EVALUATE, RESUME)


# -- the good run ------------------------------------------------------------------------------


def _clip(label: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.6 * RATE)) / RATE
    if label == "hiss":
        return (0.2 * rng.standard_normal(t.shape[0])).astype(np.float32)
    freq = 1500.0 if label == "beep" else 200.0
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A CSV dataset with train and test clips, one clip to tag, and a valid run folder."""
    root = tmp_path_factory.mktemp("crafted")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for label in LABELS:
        for i in range(3):
            name = f"{label}_{i}.wav"
            sf.write(data / name, _clip(label, rng), RATE)
            rows.append({"path": name, "label": label, "split": "train" if i < 2 else "test"})
    with open(data / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)

    run = root / "run"
    config = TrainConfig(
        model="cnn-audio",
        size="tiny",
        data=str(data),
        out=str(run),
        format="csv",
        folds=2,
        sample_rate=RATE,
        input_seconds=SECONDS,
    )
    torch.manual_seed(0)
    model = create_model("cnn-audio", len(LABELS), size="tiny", sample_rate=RATE).eval()
    meta = {
        "labels": LABELS,
        "sample_rate": RATE,
        "input_seconds": SECONDS,
        "frontend": None,
        "train_config": config.to_dict(),
        "label_prior": [1 / 3] * 3,
    }
    save_checkpoint(run / "best", model, meta)
    config.save(run / "config.json")
    return {"run": run, "clip": data / "hum_2.wav", "root": root}


def _cli(command: str, run: Path, clip: Path, out_dir: Path) -> list[str]:
    if command == PREDICT:
        return ["predict", str(run), str(clip)]
    if command == EVALUATE:
        return ["evaluate", str(run), "--device", "cpu", "--out-dir", str(out_dir)]
    return ["train", "--resume", "--out", str(run), "--device", "cpu", "--workers", "0"]


def test_the_good_run_predicts_and_evaluates(good, tmp_path, capsys):
    # The cases below differ from this run by one defect, so their failure is that defect's.
    for command in CHECKPOINT_COMMANDS:
        assert main(_cli(command, good["run"], good["clip"], tmp_path)) == 0, command
    out = capsys.readouterr().out
    assert "MAP@3" in out and "hum_2.wav" in out


# -- how each case breaks the run ----------------------------------------------------------------

Edit = Callable[[Path], None]


def _meta(run: Path) -> dict:
    return json.loads((run / "best.json").read_text())


def set_meta(**changes) -> Edit:
    def edit(run: Path) -> None:
        meta = _meta(run)
        meta.update(changes)
        (run / "best.json").write_text(json.dumps(meta))

    return edit


def set_meta_raw(key: str, literal: str, inner: str | None = None) -> Edit:
    """Set ``meta[key]`` (or ``meta[key][inner]``) to a JSON literal such as 1e400 or NaN."""

    def edit(run: Path) -> None:
        meta = _meta(run)
        if inner is None:
            meta[key] = "@@"
        else:
            meta[key][inner] = "@@"
        (run / "best.json").write_text(json.dumps(meta).replace('"@@"', literal))

    return edit


def set_model_config(**changes) -> Edit:
    def edit(run: Path) -> None:
        meta = _meta(run)
        meta["model_config"].update(changes)
        (run / "best.json").write_text(json.dumps(meta))

    return edit


def set_config(**changes) -> Edit:
    def edit(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        config.update(changes)
        (run / "config.json").write_text(json.dumps(config))

    return edit


def write_text(name: str, text: str | bytes) -> Edit:
    def edit(run: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        (run / name).write_bytes(data)

    return edit


def make_folder(name: str) -> Edit:
    def edit(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()

    return edit


def remove(name: str) -> Edit:
    return lambda run: (run / name).unlink()


def edit_weights(change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Edit:
    """Rewrite best.safetensors with changed tensors, keeping the pair id (same save)."""

    def edit(run: Path) -> None:
        path = run / "best.safetensors"
        tensors = change({k: v.clone() for k, v in load_file(str(path)).items()})
        path.write_bytes(save(tensors, metadata={"pair_id": _meta(run)["pair_id"]}))

    return edit


def _cast_floats(dtype: torch.dtype):
    return lambda state: {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _poison(value: float):
    def change(state):
        state["classifier.weight"][0, 0] = value
        return state

    return change


def _set_tensor(name: str, make):
    def change(state):
        state[name] = make(state.get(name))
        return state

    return change


def _drop(name: str):
    return lambda state: {k: v for k, v in state.items() if k != name}


def other_save(run: Path) -> None:
    """best.safetensors from a later save whose JSON never arrived (and no pending JSON)."""
    pair_id = _meta(run)["pair_id"]
    path = run / "best.safetensors"
    path.write_bytes(save(load_file(str(path)), metadata={"pair_id": pair_id[::-1]}))


def deep_json(name: str, depth: int = 200_000) -> Edit:
    return write_text(name, '{"labels": ' + "[" * depth + "]" * depth + "}")


def link_to(name: str, target: str) -> Edit:
    def edit(run: Path) -> None:
        (run / name).unlink()
        (run / name).symlink_to(target)

    return edit


def fifo(name: str) -> Edit:
    def edit(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)

    return edit


J, W, C = "best.json", "best.safetensors", "config.json"

#: (case id, edit, file the message must name, commands). Defects 1-4 of the brief's list are
#: the types and ranges of sample_rate/input_seconds, then the sizes, special files, labels,
#: priors and weights.
CASES: list[tuple[str, Edit, str, tuple[str, ...]]] = [
    ("sample-rate-string", set_meta(sample_rate="8000"), J, CHECKPOINT_COMMANDS),
    ("sample-rate-zero", set_meta(sample_rate=0), J, CHECKPOINT_COMMANDS),
    ("sample-rate-negative", set_meta(sample_rate=-8000), J, CHECKPOINT_COMMANDS),
    ("sample-rate-nan", set_meta_raw("sample_rate", "NaN"), J, CHECKPOINT_COMMANDS),
    ("sample-rate-1e400", set_meta_raw("sample_rate", "1e400"), J, CHECKPOINT_COMMANDS),
    ("sample-rate-fraction", set_meta(sample_rate=8000.5), J, CHECKPOINT_COMMANDS),
    ("sample-rate-bool", set_meta(sample_rate=True), J, CHECKPOINT_COMMANDS),
    ("sample-rate-vs-model", set_meta(sample_rate=16000), J, CHECKPOINT_COMMANDS),
    ("input-seconds-string", set_meta(input_seconds="0.5"), J, CHECKPOINT_COMMANDS),
    ("input-seconds-zero", set_meta(input_seconds=0), J, CHECKPOINT_COMMANDS),
    ("input-seconds-negative", set_meta(input_seconds=-1.0), J, CHECKPOINT_COMMANDS),
    ("input-seconds-nan", set_meta_raw("input_seconds", "NaN"), J, CHECKPOINT_COMMANDS),
    ("input-seconds-1e400", set_meta_raw("input_seconds", "1e400"), J, CHECKPOINT_COMMANDS),
    ("input-seconds-1e6", set_meta(input_seconds=1e6), J, CHECKPOINT_COMMANDS),
    ("input-seconds-below-model", set_meta(input_seconds=1e-4), J, CHECKPOINT_COMMANDS),
    ("input-seconds-missing", set_meta(input_seconds=None), J, CHECKPOINT_COMMANDS),
    ("num-classes-huge", set_meta(num_classes=10**9), J, CHECKPOINT_COMMANDS),
    ("num-classes-string", set_meta(num_classes="3"), J, CHECKPOINT_COMMANDS),
    ("num-classes-zero", set_meta(num_classes=0), J, CHECKPOINT_COMMANDS),
    ("num-classes-vs-labels", set_meta(num_classes=4), J, CHECKPOINT_COMMANDS),
    ("labels-string", set_meta(labels="beep,hiss,hum"), J, CHECKPOINT_COMMANDS),
    ("labels-numbers", set_meta(labels=[1, 2, 3]), J, CHECKPOINT_COMMANDS),
    ("labels-duplicate", set_meta(labels=["beep", "beep", "hum"]), J, CHECKPOINT_COMMANDS),
    ("labels-empty-name", set_meta(labels=["beep", "", "hum"]), J, CHECKPOINT_COMMANDS),
    ("prior-negative", set_meta(label_prior=[0.5, -0.1, 0.6]), J, CHECKPOINT_COMMANDS),
    ("prior-zero-sum", set_meta(label_prior=[0, 0, 0]), J, CHECKPOINT_COMMANDS),
    ("prior-length", set_meta(label_prior=[0.5, 0.5]), J, CHECKPOINT_COMMANDS),
    ("prior-nan", set_meta_raw("label_prior", "[NaN, 1, 1]"), J, CHECKPOINT_COMMANDS),
    ("eval-fill-unknown", set_meta(eval_fill="mirror"), J, CHECKPOINT_COMMANDS),
    ("format-version-string", set_meta(format_version="1"), J, CHECKPOINT_COMMANDS),
    ("format-version-newer", set_meta(format_version=99), J, CHECKPOINT_COMMANDS),
    ("model-name-number", set_meta(model=7), J, CHECKPOINT_COMMANDS),
    ("model-name-unknown", set_meta(model="cnn-nope"), J, CHECKPOINT_COMMANDS),
    ("model-config-list", set_meta(model_config=[1, 2]), J, CHECKPOINT_COMMANDS),
    ("train-config-string", set_meta(train_config="lr=1"), J, CHECKPOINT_COMMANDS),
    ("channels-huge", set_model_config(channels=[8, 16, 10**6]), J, CHECKPOINT_COMMANDS),
    ("channels-string", set_model_config(channels=["8", "16", "32"]), J, CHECKPOINT_COMMANDS),
    ("dense-huge", set_model_config(dense=10**7), J, CHECKPOINT_COMMANDS),
    ("pools-huge", set_model_config(pools=[1000, 1000, 1000]), J, CHECKPOINT_COMMANDS),
    ("kernel-1e400", set_meta_raw("model_config", "1e400", "kernel_size"), J, CHECKPOINT_COMMANDS),
    ("config-sample-rate-zero", set_model_config(sample_rate=0), J, CHECKPOINT_COMMANDS),
    ("json-nested-200000", deep_json(J), J, CHECKPOINT_COMMANDS),
    ("json-truncated", write_text(J, '{"model": "cnn-au'), J, CHECKPOINT_COMMANDS),
    ("json-not-utf8", write_text(J, b'{"model": "\xff\xfe"}'), J, CHECKPOINT_COMMANDS),
    ("json-array", write_text(J, "[1, 2, 3]"), J, CHECKPOINT_COMMANDS),
    ("json-folder", make_folder(J), J, CHECKPOINT_COMMANDS),
    ("weights-nan", edit_weights(_poison(float("nan"))), W, CHECKPOINT_COMMANDS),
    ("weights-inf", edit_weights(_poison(float("-inf"))), W, CHECKPOINT_COMMANDS),
    ("weights-int8", edit_weights(_cast_floats(torch.int8)), W, CHECKPOINT_COMMANDS),
    ("weights-float16", edit_weights(_cast_floats(torch.float16)), W, CHECKPOINT_COMMANDS),
    ("weights-missing-tensor", edit_weights(_drop("classifier.bias")), W, CHECKPOINT_COMMANDS),
    (
        "weights-extra-tensor",
        edit_weights(_set_tensor("extra", lambda _: torch.zeros(2))),
        W,
        CHECKPOINT_COMMANDS,
    ),
    (
        "weights-wrong-shape",
        edit_weights(_set_tensor("classifier.bias", lambda _: torch.zeros(7))),
        W,
        CHECKPOINT_COMMANDS,
    ),
    (
        "weights-negative-variance",
        edit_weights(_set_tensor("embedding.1.running_var", lambda v: -v.abs() - 1)),
        W,
        CHECKPOINT_COMMANDS,
    ),
    (
        "weights-garbage",
        write_text(W, b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!"),
        W,
        CHECKPOINT_COMMANDS,
    ),
    ("weights-empty", write_text(W, b""), W, CHECKPOINT_COMMANDS),
    ("weights-folder", make_folder(W), W, CHECKPOINT_COMMANDS),
    ("weights-missing", remove(W), W, CHECKPOINT_COMMANDS),
    ("weights-other-save", other_save, W, CHECKPOINT_COMMANDS),
    ("config-fold-string", set_config(fold="0"), C, CONFIG_COMMANDS),
    ("config-folds-fraction", set_config(folds=1.5), C, CONFIG_COMMANDS),
    ("config-seed-list", set_config(seed=[0]), C, CONFIG_COMMANDS),
    ("config-data-number", set_config(data=5), C, CONFIG_COMMANDS),
    ("config-hop-string", set_config(hop_seconds="0.5"), C, CONFIG_COMMANDS),
    ("config-format-bool", set_config(format=True), C, CONFIG_COMMANDS),
    ("config-lr-nan", set_config(lr=float("nan")), C, (RESUME,)),
    ("config-epochs-zero", set_config(epochs=0), C, (RESUME,)),
    ("config-sample-rate-1e6", set_config(sample_rate=10**6), C, (RESUME,)),
    ("config-unknown-key", set_config(foldz=1), C, (RESUME,)),
    ("config-array", write_text(C, "[]"), C, CONFIG_COMMANDS),
    ("config-nested", deep_json(C), C, CONFIG_COMMANDS),
    ("config-folder", make_folder(C), C, CONFIG_COMMANDS),
]

#: Special files a careless reader would block on forever: run in a subprocess with a timeout.
HANG_CASES: list[tuple[str, Edit, str, tuple[str, ...]]] = [
    ("json-fifo", fifo(J), J, CHECKPOINT_COMMANDS),
    ("json-dev-zero", link_to(J, "/dev/zero"), J, CHECKPOINT_COMMANDS),
    ("weights-dev-zero", link_to(W, "/dev/zero"), W, (PREDICT,)),
    ("config-fifo", fifo(C), C, (EVALUATE,)),
]


def _crafted(good: dict[str, Path], tmp_path: Path, case_id: str, edit: Edit) -> Path:
    run = tmp_path / case_id
    shutil.copytree(good["run"], run)
    edit(run)
    return run


def _check_one_line(stderr: str, run: Path, name: str, where: str) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, f"{where}: {stderr}"
    assert len(lines) == 1, f"{where}: expected one stderr line, got {lines}"
    assert lines[-1].startswith("wavemel: error: "), f"{where}: {lines[-1]}"
    assert str(run / name) in lines[-1], f"{where}: does not name {name}: {lines[-1]}"


def test_crafted_cases_are_many_and_distinct():
    ids = [case[0] for case in CASES + HANG_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize(("case_id", "edit", "name", "commands"), CASES, ids=[c[0] for c in CASES])
def test_crafted_run_is_one_clear_error(good, tmp_path, capsys, case_id, edit, name, commands):
    run = _crafted(good, tmp_path, case_id, edit)
    for command in commands:
        code = main(_cli(command, run, good["clip"], tmp_path / "out"))
        stderr = capsys.readouterr().err
        assert code == 2, f"{case_id} {command}: exit {code}, stderr {stderr!r}"
        _check_one_line(stderr, run, name, f"{case_id} {command}")


# Runs each command line in one child interpreter (torch is imported once, not per case) and
# reports each result as a JSON line as soon as it is known, so a hang is pinned on its case.
_CHILD = """
import contextlib, io, json, sys
from wavemel.cli import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except BaseException as exc:  # what would have been a traceback
            code = f"raised {exc!r}"
    print(json.dumps({"code": code, "stderr": err.getvalue()}), flush=True)
"""


def test_special_files_never_hang(good, tmp_path):
    jobs = []
    for case_id, edit, name, commands in HANG_CASES:
        run = _crafted(good, tmp_path, case_id, edit)
        for command in commands:
            argv = _cli(command, run, good["clip"], tmp_path)
            jobs.append((f"{case_id} {command}", run, name, argv))
    try:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps([job[3] for job in jobs])],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        output, problem = child.stdout, child.stderr
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        problem = "timed out"
    results = [json.loads(line) for line in output.splitlines()]
    for index, (where, run, name, _) in enumerate(jobs):
        assert index < len(results), f"{where}: no answer ({problem}); blocked on a special file?"
        code, stderr = results[index]["code"], results[index]["stderr"]
        assert code == 2, f"{where}: exit {code}: {stderr}"
        _check_one_line(stderr, run, name, where)
