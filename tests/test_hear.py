"""The HEAR 2021 API: the official validator's checks, and what its embeddings mean.

``hear-validator`` does not install on Python >= 3.9, so :func:`_validate` performs its checks
(attributes, dtypes, shapes, timestamp spacing and range, clip lengths 1.07, 1.98 and 4.0 s for
timestamp embeddings, four 2.74 s clips for scene embeddings) on tiny checkpoints of each model
family made here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavemel import hear
from wavemel.checkpoint import save_checkpoint
from wavemel.errors import AudioError, CheckpointError
from wavemel.infer import Tagger
from wavemel.models import CnnComb, create_model

RATE = 16000
LABELS = ["a", "b", "c"]
# Windows of 1-2 s; cnn-spec's 2 s window is longer than the 1.07 s and 1.98 s clips.
INPUT_SECONDS = {"cnn-audio": 1.0, "cnn-spec": 2.0, "cnn-comb": 1.5}


def _network(name: str, rate: int = RATE) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "cnn-comb":
        audio = create_model("cnn-audio", len(LABELS), size="tiny", sample_rate=rate)
        spec = create_model("cnn-spec", len(LABELS), size="tiny", sample_rate=rate)
        return CnnComb(audio, spec, len(LABELS), hidden=16).eval()
    return create_model(name, len(LABELS), size="tiny", sample_rate=rate).eval()


@pytest.fixture(scope="module", params=sorted(INPUT_SECONDS))
def run_dir(request, tmp_path_factory):
    name = request.param
    run = tmp_path_factory.mktemp(name)
    meta = {"labels": LABELS, "sample_rate": RATE, "input_seconds": INPUT_SECONDS[name]}
    save_checkpoint(run / "best", _network(name), meta)
    return run


@pytest.fixture(scope="module")
def model(run_dir):
    return hear.load_model(str(run_dir), device="cpu")


def _noise(num: int, seconds: float, seed: int = 0, rate: int = RATE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num, int(seconds * rate), generator=generator) * 2 - 1


def _validate_timestamps(model, num_audio: int, seconds: float) -> None:
    embeddings, timestamps = hear.get_timestamp_embeddings(_noise(num_audio, seconds), model)
    assert embeddings.dtype == torch.float32 and timestamps.dtype == torch.float32
    assert embeddings.ndim == 3 and timestamps.ndim == 2
    assert embeddings.shape[0] == num_audio
    assert embeddings.shape[:2] == timestamps.shape
    assert embeddings.shape[2] == model.timestamp_embedding_size
    assert torch.isfinite(embeddings).all()
    times = timestamps.numpy()
    assert times.shape[1] > 1
    diff = np.diff(times)
    hop = diff.mean()
    assert np.abs(diff - hop).max() <= 1.0, "timestamps must be evenly spaced (within 1 ms)"
    assert diff.max() <= 50.0, "HEAR asks for at most 50 ms between timestamps"
    assert times.min() <= hop, "timestamps must start at the clip's beginning"
    length_ms = 1000 * seconds
    assert times.max() <= length_ms, "no timestamp after the clip's end"
    # The validator warns below one hop; the API promises within two.
    assert times.max() >= length_ms - hop and times.max() >= length_ms - 50


def _validate(model) -> None:
    assert isinstance(model, torch.nn.Module)
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        value = getattr(model, name)
        assert isinstance(value, int) and not isinstance(value, bool), name
    assert model.sample_rate in (16000, 22050, 32000, 44100, 48000)
    for seconds in (1.07, 1.98, 4.0):
        _validate_timestamps(model, num_audio=2, seconds=seconds)
    scene = hear.get_scene_embeddings(_noise(4, 2.74), model)
    assert scene.dtype == torch.float32
    assert scene.shape == (4, model.scene_embedding_size)
    assert torch.isfinite(scene).all()


def test_hear_validator_checks_pass(model):
    _validate(model)


def test_checkpoint_json_path_loads_too(run_dir):
    _validate(hear.load_model(str(run_dir / "best.json"), device="cpu"))


def test_embeddings_are_deterministic_and_batch_independent(model):
    audio = _noise(3, 1.98, seed=1)
    scene = hear.get_scene_embeddings(audio, model)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert torch.equal(scene, hear.get_scene_embeddings(audio, model))
    assert torch.equal(embeddings, hear.get_timestamp_embeddings(audio, model)[0])
    for i in range(3):
        one = audio[i : i + 1]
        torch.testing.assert_close(hear.get_scene_embeddings(one, model)[0], scene[i])
        alone, alone_times = hear.get_timestamp_embeddings(one, model)
        torch.testing.assert_close(alone[0], embeddings[i])
        assert torch.equal(alone_times[0], timestamps[i])


def test_scene_embedding_is_the_taggers_clip_embedding(run_dir, model):
    """HEAR and `wavemel embed` agree, short clips (filled) and long ones (tail window)."""
    tagger = Tagger.from_checkpoint(run_dir, device="cpu")
    for seconds in (1.07, 4.3):
        audio = _noise(2, seconds, seed=2)
        scene = hear.get_scene_embeddings(audio, model).numpy()
        for i in range(2):
            expected = tagger.embed(audio[i].numpy())
            np.testing.assert_allclose(scene[i], expected, rtol=1e-4, atol=1e-5)


def test_timestamp_embedding_is_the_window_centred_on_it(model):
    audio = _noise(1, 1.98, seed=3)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    width, hop = model.input_samples, model.hop_samples
    assert hop == RATE // 20
    for k in (0, 7, embeddings.shape[1] - 1):
        centre = k * hop
        assert timestamps[0, k].item() == pytest.approx(1000 * centre / RATE)
        # The window around the centre, with silence where it reaches past the clip.
        window = torch.zeros(width)
        begin = centre - width // 2
        inside = slice(max(begin, 0), min(begin + width, audio.shape[1]))
        window[inside.start - begin : inside.stop - begin] = audio[0, inside]
        with torch.inference_mode():
            expected = model.network.features(window[None])[0]
        torch.testing.assert_close(embeddings[0, k], expected, rtol=1e-4, atol=1e-5)


def test_hop_stays_within_50_ms_at_every_hear_rate():
    for rate in hear.HEAR_SAMPLE_RATES:
        model = hear.HearModel(_network("cnn-audio", rate), sample_rate=rate, input_samples=rate)
        assert 1000 * model.hop_samples / rate <= 50
        assert model.hop_samples >= rate // 20


def test_an_empty_batch_gives_empty_outputs(model):
    for seconds in (0.5, 3.0):
        audio = torch.zeros(0, int(seconds * RATE))
        assert hear.get_scene_embeddings(audio, model).shape == (0, model.scene_embedding_size)
        embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
        count = audio.shape[1] // model.hop_samples + 1
        assert embeddings.shape == (0, count, model.timestamp_embedding_size)
        assert timestamps.shape == (0, count)


def test_train_mode_is_ignored(model):
    audio = _noise(2, 1.07, seed=4)
    before = hear.get_scene_embeddings(audio, model)
    model.train()
    try:
        assert not model.network.training
        assert torch.equal(hear.get_scene_embeddings(audio, model), before)
    finally:
        model.eval()


def test_load_model_refuses_what_hear_cannot_use(tmp_path):
    with pytest.raises(CheckpointError, match="no model file"):
        hear.load_model("")
    meta = {"labels": LABELS, "sample_rate": 8000, "input_seconds": 1.0}
    save_checkpoint(tmp_path / "best", _network("cnn-audio", 8000), meta)
    with pytest.raises(CheckpointError, match="8000 Hz is not a HEAR rate") as info:
        hear.load_model(tmp_path, device="cpu")
    assert "\n" not in str(info.value) and "best.json" in str(info.value)


def test_bad_audio_is_refused_with_one_line(model):
    audio = _noise(3, 1.07)
    audio[1, 5] = float("nan")
    with pytest.raises(AudioError, match=r"audio\[1\]: holds NaN"):
        hear.get_scene_embeddings(audio, model)
    with pytest.raises(AudioError, match="0 samples"):
        hear.get_timestamp_embeddings(torch.zeros(2, 0), model)
    with pytest.raises(ValueError, match="samples"):
        hear.get_scene_embeddings(torch.zeros(100), model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embeddings_on_cuda_match_cpu(run_dir):
    cpu = hear.load_model(run_dir, device="cpu")
    gpu = hear.load_model(run_dir, device="cuda")
    audio = _noise(2, 1.98, seed=5)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio.cuda(), gpu)
    assert embeddings.device.type == "cuda" and timestamps.device.type == "cuda"
    expected, expected_times = hear.get_timestamp_embeddings(audio, cpu)
    assert torch.equal(timestamps.cpu(), expected_times)
    # bfloat16 autocast on the GPU: close, not equal.
    torch.testing.assert_close(embeddings.cpu(), expected, rtol=0.05, atol=0.05)
    scene = hear.get_scene_embeddings(audio.cuda(), gpu).cpu()
    torch.testing.assert_close(scene, hear.get_scene_embeddings(audio, cpu), rtol=0.05, atol=0.05)
