"""evaluate_run and ``wavemel evaluate`` on a tiny hand-made dataset and tiny checkpoints."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from wavemel.checkpoint import save_checkpoint
from wavemel.cli import main
from wavemel.data import load_dataset, train_val_split
from wavemel.errors import CheckpointError, DataError, WavemelError
from wavemel.evaluate import evaluate_run
from wavemel.infer import Tagger
from wavemel.metrics import map_at_k, top_k_accuracy
from wavemel.models import CnnComb, create_model

LABELS = ["beep", "hiss", "hum"]
RATE = 8000


def _clip(label: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    if label == "hiss":
        return 0.2 * rng.standard_normal(t.shape[0])
    freq = 1500.0 if label == "beep" else 200.0
    return 0.5 * np.sin(2 * np.pi * freq * t + rng.random())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """CSV manifest: 4 train + 2 test clips per class, a corrupt test file, and a test clip whose
    only label is not a training label (the data layer drops that label: the clip is unscored)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for label in LABELS:
        for i in range(6):
            split = "train" if i < 4 else "test"
            name = f"{label}_{i}.wav"
            seconds = 0.3 + 0.4 * i  # from shorter than a window to several windows
            sf.write(root / name, _clip(label, seconds, rng).astype(np.float32), RATE)
            usage = ("Public" if i == 4 else "Private") if split == "test" else ""
            rows.append({"path": name, "label": label, "split": split, "usage": usage})
    (root / "broken.wav").write_text("this is not audio\n" * 100)
    rows.append({"path": "broken.wav", "label": "hum", "split": "test", "usage": "Private"})
    sf.write(root / "odd.wav", _clip("hum", 0.5, rng).astype(np.float32), RATE)
    rows.append({"path": "odd.wav", "label": "zzz", "split": "test", "usage": "Private"})
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "usage"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _make_run(run_dir, data_root, name="cnn-audio"):
    torch.manual_seed(0)
    if name == "cnn-comb":
        audio = create_model("cnn-audio", len(LABELS), size="tiny", sample_rate=RATE)
        spec = create_model("cnn-spec", len(LABELS), size="tiny", sample_rate=RATE)
        model = CnnComb(audio, spec, len(LABELS))
    else:
        model = create_model(name, len(LABELS), size="tiny", sample_rate=RATE)
    meta = {"labels": LABELS, "sample_rate": RATE, "input_seconds": 0.5}
    save_checkpoint(run_dir / "best", model.eval(), meta)
    config = {"data": str(data_root), "format": "csv", "folds": 2, "fold": 1, "seed": 3}
    config.update({"val_split": None, "label_pattern": None, "group_field": None})
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset):
    return _make_run(tmp_path_factory.mktemp("run"), dataset)


def test_test_split_metrics_match_an_independent_computation(run_dir, dataset):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_run(run_dir, device="cpu")
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.wav" in messages

    # Recompute from the files with the block-reading Tagger and the metric functions. The
    # undecodable broken.wav has no answer and counts as a miss (a NaN row), as on Kaggle.
    index = load_dataset(dataset, "csv")
    records = [r for r in index.split("test") if r.path.name != "odd.wav"]
    tagger = Tagger.from_checkpoint(run_dir, device="cpu")
    scores = np.stack(
        [
            np.full(len(LABELS), np.nan)
            if r.path.name == "broken.wav"
            else tagger.predict_proba(r.path)
            for r in records
        ]
    )
    targets = np.array([LABELS.index(r.label) for r in records])
    public = np.array([r.usage == "Public" for r in records])

    assert result["n_clips"] == len(records) == 7 and result["n_unscored"] == 1
    assert [p.split("/")[-1] for p in result["unscored"]] == ["broken.wav"]
    assert result["map3"] == pytest.approx(map_at_k(scores, targets), abs=1e-6)
    decoded = np.array([r.path.name != "broken.wav" for r in records])
    # The miss lowers the mean: 6 answered clips' MAP@3 scaled by 6/7, not the mean over 6.
    assert result["map3"] == pytest.approx(
        map_at_k(scores[decoded], targets[decoded]) * 6 / 7, abs=1e-9
    )
    assert result["top1"] == pytest.approx(top_k_accuracy(scores, targets), abs=1e-6)
    assert result["map3_public"] == pytest.approx(map_at_k(scores[public], targets[public]))
    assert result["map3_private"] == pytest.approx(map_at_k(scores[~public], targets[~public]))
    assert (result["n_public"], result["n_private"]) == (3, 4)
    assert set(result["per_class"]) == set(LABELS)
    assert [row["n"] for row in result["per_class"].values()] == [2, 2, 3]
    for label in LABELS:
        rows = targets == LABELS.index(label)
        expected = map_at_k(scores[rows], targets[rows])
        assert result["per_class"][label]["map3"] == pytest.approx(expected, abs=1e-6)
        assert 0.0 < result["per_class"][label]["ap"] <= 1.0
    assert result["excluded"] == {}  # odd.wav's only label is dropped by the data layer
    assert np.sum(result["confusion_matrix"]) == 6  # the unanswered clip is not in the matrix

    saved = json.loads((run_dir / "evaluation_test.json").read_text())
    assert saved["map3"] == result["map3"]
    png = run_dir / "confusion_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_val_split_is_the_runs_validation_fold(run_dir, dataset, tmp_path):
    result = evaluate_run(run_dir, split="val", device="cpu", out_dir=tmp_path)
    _, val = train_val_split(load_dataset(dataset, "csv"), folds=2, fold=1, seed=3)
    assert result["n_clips"] == len(val)
    assert "map3_public" not in result  # training clips carry no leaderboard usage
    assert (tmp_path / "evaluation_val.json").exists()
    assert (tmp_path / "confusion_val.png").exists()
    # A validation split the dataset does not have: a clear DataError.
    with pytest.raises(DataError, match="'nope'"):
        evaluate_run(run_dir, split="val", device="cpu", out_dir=tmp_path, val_split="nope")


@pytest.mark.filterwarnings("ignore:no answer")
def test_zero_input(tmp_path, run_dir, dataset):
    with pytest.raises(CheckpointError, match="cnn-comb"):
        evaluate_run(run_dir, zero_input="audio", device="cpu", out_dir=tmp_path)
    comb = _make_run(tmp_path / "comb", dataset, name="cnn-comb")
    full = evaluate_run(comb, device="cpu")
    ablated = evaluate_run(comb, zero_input="spec", device="cpu")
    assert ablated["zero_input"] == "spec"
    assert (comb / "evaluation_test_zero-spec.json").exists()
    assert (comb / "evaluation_test.json").exists()
    # The ablation reached the model: per-clip answers equal a tagger with that branch zeroed.
    tagger = Tagger.from_checkpoint(comb, device="cpu")
    tagger.model.zero_input = "spec"
    answered = [clip for clip in ablated["clips"] if clip["top3"] is not None]
    assert len(answered) == len(ablated["clips"]) - 1  # broken.wav has no answer
    for clip in answered:
        expected = tagger.tag(clip["path"], top_k=3)
        assert [label for label, _ in expected] == [label for label, _ in clip["top3"]]
        np.testing.assert_allclose(
            [p for _, p in clip["top3"]], [p for _, p in expected], atol=1e-5
        )
    assert [c["top3"] for c in ablated["clips"]] != [c["top3"] for c in full["clips"]]


def test_cli_json_and_table(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "--json", "--out-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["n_clips"] == 7 and result["n_unscored"] == 1 and "map3" in result
    assert "broken.wav" in captured.err and "Traceback" not in captured.err
    assert main(["evaluate", str(run_dir), "--out-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "MAP@3 Public" in table and "hum" in table
    assert main(["evaluate", str(tmp_path / "no-run")]) == 2
    assert "wavemel: error:" in capsys.readouterr().err


def test_training_validation_counts_like_evaluate_val(tmp_path, capsys):
    # Defect 12: training validation scored an undecodable clip with the prior, so its MAP@3
    # differed from `evaluate --split val`, and its warning was a raw two-line UserWarning.
    from wavemel.data.synthetic import generate

    root = generate(tmp_path / "synth", clips_per_class=4, sample_rate=RATE, max_seconds=0.8)
    rows = [
        {"path": str(p), "label": p.parent.name, "split": "test" if i % 2 else "train"}
        for i, p in enumerate(sorted(root.rglob("*.wav")))
    ]
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio\n" * 50)
    rows.append({"path": str(broken), "label": rows[0]["label"], "split": "test"})
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "run"
    args = [
        "train", "--model", "cnn-spec", "--size", "tiny", "--data", str(manifest),
        "--out", str(run), "--sample-rate", str(RATE), "--input-seconds", "0.5",
        "--epochs", "1", "--batch-size", "8", "--val-split", "test", "--workers", "0",
        "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "broken.wav" in line]
    assert warned and all(line.startswith("wavemel: warning:") for line in warned), err
    assert "count as misses" in warned[0] and warned[0].count("broken.wav") == 1
    assert "UserWarning" not in err and "Warning:" not in err.replace("warning:", "")

    logged = json.loads((run / "best.json").read_text())["metrics"]["val_map3"]
    result = evaluate_run(run, split="val", device="cpu", out_dir=tmp_path / "eval")
    assert result["n_unscored"] == 1 and result["n_clips"] == sum(
        r["split"] == "test" for r in rows
    )
    assert result["map3"] == pytest.approx(logged, abs=1e-9)


def test_a_missing_test_file_counts_as_a_miss(run_dir, dataset, tmp_path):
    # Kaggle scores a missing answer as 0: a partial download must not inflate MAP@3.
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    (copy / "beep_4.wav").unlink()
    full = evaluate_run(run_dir, device="cpu", out_dir=tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        partial = evaluate_run(run_dir, copy, device="cpu", out_dir=tmp_path / "b")
    assert partial["n_clips"] == full["n_clips"] == 7
    assert partial["n_unscored"] == 2 and any("beep_4.wav" in p for p in partial["unscored"])
    assert (partial["n_public"], partial["n_private"]) == (full["n_public"], full["n_private"])
    assert partial["map3"] <= full["map3"]  # the lost clip scores 0 instead of its AP


def _member_run(run_dir, data_root, seed, labels=LABELS, input_seconds=0.5, **config):
    torch.manual_seed(seed)
    model = create_model("cnn-audio", len(labels), size="tiny", sample_rate=RATE).eval()
    meta = {"labels": labels, "sample_rate": RATE, "input_seconds": input_seconds}
    save_checkpoint(run_dir / "best", model, meta)
    settings = {"data": str(data_root), "format": "csv", "folds": 2, "fold": 1, "seed": 3}
    settings.update({"val_split": None, "label_pattern": None, "group_field": None, **config})
    (run_dir / "config.json").write_text(json.dumps(settings))
    return run_dir


def test_ensemble_of_two_runs_scores_the_mean_of_their_probabilities(
    run_dir, dataset, tmp_path, capsys
):
    # Another seed, input length and label order than run_dir: reordered, then averaged.
    other = _member_run(tmp_path / "other", dataset, seed=5, labels=LABELS[::-1], input_seconds=0.3)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["evaluate", str(run_dir), str(other), "--out-dir", str(out), "--json"]
    assert main([*argv, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)

    records = [r for r in load_dataset(dataset, "csv").split("test") if r.path.name != "odd.wav"]
    first = Tagger.from_checkpoint(run_dir, device="cpu")
    second = Tagger.from_checkpoint(other, device="cpu")
    rows = []
    for record in records:
        if record.path.name == "broken.wav":
            rows.append(np.full(len(LABELS), np.nan))
        else:
            rows.append(
                (first.predict_proba(record.path) + second.predict_proba(record.path)[::-1]) / 2
            )
    scores = np.stack(rows)
    targets = np.array([LABELS.index(r.label) for r in records])
    assert result["map3"] == pytest.approx(map_at_k(scores, targets), abs=1e-12)
    assert result["n_clips"] == 7 and result["n_unscored"] == 1
    for clip, row in zip(result["clips"], scores):
        if clip["top3"] is None:
            continue
        for label, probability in clip["top3"]:
            assert probability == pytest.approx(row[LABELS.index(label)], abs=1e-6)
    assert [m["run"] for m in result["members"]] == [str(run_dir), str(other)]
    assert [m["hop_seconds"] for m in result["members"]] == [0.5, 0.3]
    assert result["hop_seconds"] is None and result["model"] == "ensemble of cnn-audio, cnn-audio"
    saved = json.loads((out / "evaluation_test.json").read_text())
    assert saved["members"] == result["members"]
    # The undecodable clip is reported once, not once per member.
    assert captured.err.count("broken.wav") == 1

    # One run given as a list is today's evaluation.
    alone = evaluate_run([run_dir], device="cpu", out_dir=tmp_path)
    assert "members" not in alone
    assert alone["map3"] == evaluate_run(run_dir, device="cpu", out_dir=tmp_path)["map3"]


def test_ensemble_members_must_share_the_split(run_dir, dataset, tmp_path):
    other_fold = _member_run(tmp_path / "fold0", dataset, seed=5, fold=0)
    with pytest.raises(WavemelError) as caught:
        evaluate_run([run_dir, other_fold], split="val", device="cpu", out_dir=tmp_path)
    message = str(caught.value)
    assert message == (
        f"ensemble of {run_dir} and {other_fold}: --split val needs one split, but their fold "
        "differs (1 vs 0)"
    )
    # The test split only needs the same data; another root is refused unless --data names one.
    elsewhere = _member_run(tmp_path / "elsewhere", tmp_path / "copy", seed=5)
    with pytest.raises(WavemelError, match="their data differs"):
        evaluate_run([run_dir, elsewhere], device="cpu", out_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_run([run_dir, other_fold], device="cpu", out_dir=tmp_path)
    assert len(result["members"]) == 2
    with pytest.raises(WavemelError, match="needs --out-dir"):
        evaluate_run([run_dir, other_fold], device="cpu")
    with pytest.raises(WavemelError, match="not an ensemble"):
        evaluate_run([run_dir, other_fold], zero_input="audio", device="cpu", out_dir=tmp_path)


def test_a_fold_ensemble_scores_its_common_heldout_fold(dataset, tmp_path):
    # Validation folds 1 and 2 of one 3-fold study: the held-out fold 0 is the same for both.
    runs = [
        _member_run(tmp_path / f"fold{fold}", dataset, seed=fold, folds=3, fold=fold, test_fold=0)
        for fold in (1, 2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = evaluate_run(runs[0], split="heldout", device="cpu", out_dir=tmp_path)
        both = evaluate_run(runs, split="heldout", device="cpu", out_dir=tmp_path)
    assert both["n_clips"] == alone["n_clips"] > 0
    assert [clip["path"] for clip in both["clips"]] == [clip["path"] for clip in alone["clips"]]
    assert both["clips"] != alone["clips"]  # the second run's probabilities count
