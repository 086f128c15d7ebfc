"""Model contract tests for every registered model and size (timm style)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from wavemel.models import (
    Cnn14,
    CnnAudio,
    CnnComb,
    CnnSpec,
    create_model,
    list_models,
    list_sizes,
    model_from_config,
)

SR = 16000
NUM_CLASSES = 7
TRAINABLE_SIZES = ("tiny", "small")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # These small networks gain little from intra-op threads, and on a loaded 2-core machine
    # threads that spin-wait for each other make them several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _waveform(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(SR * seconds), generator=generator)


def _perturb_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(1 + 0.1 * torch.randn(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))


def _tiny_comb(seed: int = 0) -> CnnComb:
    torch.manual_seed(seed)
    audio = create_model("cnn-audio", NUM_CLASSES, size="tiny")
    spec = create_model("cnn-spec", NUM_CLASSES, size="tiny")
    _perturb_batchnorm(audio, seed)
    _perturb_batchnorm(spec, seed + 1)
    return CnnComb(audio, spec, NUM_CLASSES, hidden=16, dropout=0.2)


def test_registry_lists_the_poster_models():
    assert list_models() == ["cnn-audio", "cnn-comb", "cnn-spec", "cnn14"]
    for name in list_models():
        assert list_sizes(name) == ["tiny", "small", "paper"]


@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn-comb"])
@pytest.mark.parametrize("size", TRAINABLE_SIZES)
def test_shapes_at_several_lengths_and_contract(name, size):
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, size=size, sample_rate=SR).eval()
    assert model.name == name
    assert model.sample_rate == SR and model.num_classes == NUM_CLASSES
    json.dumps(model.config_dict())  # JSON-able
    with torch.no_grad():
        for seconds in (1, 2, 3, 5):
            x = _waveform(2, seconds)
            logits = model(x)
            assert logits.shape == (2, NUM_CLASSES)
            assert torch.isfinite(logits).all()
            assert model.features(x).shape == (2, model.embedding_dim)
    assert model.min_samples <= SR


@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn-comb"])
def test_paper_size_shape(name):
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, size="paper").eval()
    with torch.no_grad():
        logits = model(_waveform(2, 1.0))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn-comb"])
@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_every_trainable_parameter_gets_a_gradient(name, size):
    assert size in list_sizes(name)
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, size=size).train()
    # Paper sizes take ~1 s per step on one core; a batch of 2 keeps BatchNorm valid.
    batch = 2 if size == "paper" else 4
    logits = model(_waveform(batch, 1.0))
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.arange(batch) % NUM_CLASSES).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for param_name, param in trainable:
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, f"{param_name} got an all-zero gradient"
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, param_name


@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn-comb"])
def test_batched_output_equals_item_by_item(name):
    # In eval mode every example is processed on its own (per-example standardisation, BatchNorm
    # running statistics), so batching must not change any example's logits or embedding.
    model = _tiny_comb() if name == "cnn-comb" else create_model(name, NUM_CLASSES, "tiny")
    model.eval()
    _perturb_batchnorm(model, seed=5)
    x = _waveform(5, 1.5, seed=3) * torch.tensor([1.0, 0.1, 3.0, 0.0, 0.5]).unsqueeze(1)
    with torch.no_grad():
        logits, embedding = model(x), model.features(x)
        for i in range(x.shape[0]):
            torch.testing.assert_close(logits[i : i + 1], model(x[i : i + 1]))
            torch.testing.assert_close(embedding[i : i + 1], model.features(x[i : i + 1]))
    assert not torch.allclose(logits[0], logits[1])  # the examples really differ


@pytest.mark.parametrize("sample_rate", [8000, 22050])
@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn-comb"])
def test_other_sample_rates_accept_one_second(name, sample_rate):
    model = create_model(name, 3, size="tiny", sample_rate=sample_rate).eval()
    assert model.sample_rate == sample_rate
    with torch.no_grad():
        assert model(torch.randn(2, sample_rate)).shape == (2, 3)


def test_cnn_spec_resolves_front_end_from_sample_rate():
    assert create_model("cnn-spec", 3, size="tiny", sample_rate=8000).frontend.config()[
        "n_fft"
    ] == (512)
    model = create_model("cnn-spec", 3, size="tiny", sample_rate=22050, hop_length=256)
    assert (model.frontend.n_fft, model.frontend.hop_length) == (2048, 256)
    assert model.config_dict()["n_fft"] == 2048


def test_cnn_spec_spectrogram_path_equals_forward():
    torch.manual_seed(0)
    model = create_model("cnn-spec", NUM_CLASSES, size="tiny").eval()
    _perturb_batchnorm(model)
    x = _waveform(3, 1.5)
    with torch.no_grad():
        spec = model.spectrogram(x)
        assert spec.shape == (3, 1, 32, model.frontend.num_frames(x.shape[-1]))
        torch.testing.assert_close(model.forward_spectrogram(spec), model(x))
        torch.testing.assert_close(model.features_from_spectrogram(spec), model.features(x))
        # Mixing spectrograms (as mixup does) changes the logits.
        mixed = 0.5 * spec + 0.5 * spec.flip(0)
        assert not torch.allclose(model.forward_spectrogram(mixed), model(x))


def test_cnn_spec_channels_last_and_autocast():
    torch.manual_seed(0)
    model = create_model("cnn-spec", NUM_CLASSES, size="tiny").eval()
    _perturb_batchnorm(model)
    x = _waveform(2, 1.0)
    with torch.no_grad():
        expected = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x), expected, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), expected, rtol=0.1, atol=0.1)


def test_cnn_audio_standardises_each_example():
    torch.manual_seed(0)
    model = create_model("cnn-audio", NUM_CLASSES, size="tiny").eval()
    x = _waveform(2, 1.0)
    with torch.no_grad():
        # Gain and DC offset do not change the output of a standardising model.
        torch.testing.assert_close(model(3.0 * x + 0.2), model(x), rtol=1e-4, atol=1e-5)
        assert torch.equal(model.normalize(torch.zeros(1, 100)), torch.zeros(1, 100))


@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn-comb"])
def test_model_from_config_round_trip(name):
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, size="tiny")
    _perturb_batchnorm(model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    config = json.loads(json.dumps(model.config_dict()))
    clone = model_from_config(name, NUM_CLASSES, config)
    clone.load_state_dict(model.state_dict(), strict=True)
    assert clone.config_dict() == model.config_dict()
    x = _waveform(2, 1.2)
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_comb_frozen_branches_stay_bit_identical_while_head_trains():
    comb = _tiny_comb()
    branch_state = {
        k: v.clone() for k, v in comb.state_dict().items() if k.startswith(("audio.", "spec."))
    }
    assert any("running_mean" in k for k in branch_state)
    head_before = {k: v.clone() for k, v in comb.state_dict().items() if k not in branch_state}
    assert all(not p.requires_grad for p in comb.audio.parameters())
    assert all(not p.requires_grad for p in comb.spec.parameters())

    optimizer = torch.optim.AdamW(comb.parameters(), lr=1e-2, weight_decay=0.1)
    comb.train()
    assert comb.training and not comb.audio.training and not comb.spec.training
    for step in range(4):
        x = _waveform(4, 1.0, seed=step)
        loss = nn.functional.cross_entropy(comb(x), torch.arange(4) % NUM_CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    state = comb.state_dict()
    for key, before in branch_state.items():
        assert torch.equal(state[key], before), f"frozen {key} changed"
    changed = [k for k, v in head_before.items() if not torch.equal(state[k], v)]
    assert "classifier.weight" in changed and "embedding.0.weight" in changed
    assert "embedding.1.running_mean" in changed  # the head's own BatchNorm does train


def test_comb_uses_pooled_conv_features_and_copies_branches():
    audio = create_model("cnn-audio", NUM_CLASSES, size="tiny")
    spec = create_model("cnn-spec", NUM_CLASSES, size="tiny")
    comb = CnnComb(audio, spec, NUM_CLASSES, hidden=16)
    assert comb.audio.classifier is None and comb.audio.embedding is None
    assert comb.spec.classifier is None and comb.spec.embedding is None
    # The caller's models are untouched and still trainable.
    assert audio.classifier is not None and all(p.requires_grad for p in audio.parameters())
    assert comb.embedding[0].in_features == audio.conv_dim + spec.conv_dim
    assert comb.embedding_dim == 16


@pytest.mark.parametrize("zero_input", ["audio", "spec"])
def test_comb_zero_input_matches_documented_computation(zero_input):
    comb = _tiny_comb().eval()
    _perturb_batchnorm(comb.embedding)
    x = _waveform(3, 1.5)
    with torch.no_grad():
        full = comb(x)
        comb.zero_input = zero_input
        ablated = comb(x)
        if zero_input == "audio":
            audio = comb.audio.conv_features(torch.zeros_like(x))
            spec = comb.spec.conv_features(x)
        else:
            audio = comb.audio.conv_features(x)
            frames = 1 + x.shape[-1] // comb.spec.frontend.hop_length
            zero_logmel = torch.zeros(3, 1, comb.spec.config.n_mels, frames)
            spec = comb.spec.conv_features_from_spectrogram(zero_logmel)
            # Not the same as a silent waveform (whose log-mel is the -100 dB floor).
            silent = comb.spec.conv_features(torch.zeros_like(x))
            assert not torch.allclose(spec, silent)
        expected = comb.classifier(comb.embedding(torch.cat([audio, spec], dim=1)))
    assert not torch.allclose(ablated, full)
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-6)


def test_comb_rejects_bad_zero_input_and_mismatched_rates():
    comb = _tiny_comb()
    with pytest.raises(ValueError, match="zero_input"):
        comb.zero_input = "both"
    audio = create_model("cnn-audio", 3, size="tiny", sample_rate=8000)
    spec = create_model("cnn-spec", 3, size="tiny", sample_rate=16000)
    with pytest.raises(ValueError, match="sample rate.*8000 Hz.*16000 Hz"):
        CnnComb(audio, spec, 3)


def test_unknown_names_sizes_and_fields_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'cnn-foo'.*cnn-audio"):
        create_model("cnn-foo", 3)
    with pytest.raises(ValueError, match="unknown size 'huge'.*tiny, small, paper"):
        create_model("cnn-spec", 3, size="huge")
    with pytest.raises(ValueError, match="unknown CnnAudioConfig field.*chanels"):
        create_model("cnn-audio", 3, chanels=(8,))
    with pytest.raises(ValueError, match="unknown CnnCombConfig field.*n_mels"):
        create_model("cnn-comb", 3, size="tiny", n_mels=40)
    with pytest.raises(ValueError, match="unknown model"):
        model_from_config("nope", 3, {})
    with pytest.raises(ValueError, match="'audio' and 'spec'"):
        model_from_config("cnn-comb", 3, {"hidden": 8})
    with pytest.raises(ValueError, match="one entry per block"):
        create_model("cnn-audio", 3, channels=(8, 16), pools=(4,))
    with pytest.raises(ValueError, match="n_mels"):
        create_model("cnn-spec", 3, size="tiny", n_mels=4)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn-audio", 0)


def test_overrides_replace_config_fields():
    model = create_model("cnn-audio", 3, size="tiny", dense=24, dropout=0.0)
    assert model.embedding_dim == 24 and model.config.dropout == 0.0
    assert model.config.channels == CnnAudio.SIZES["tiny"].channels
    spec = create_model("cnn-spec", 3, size="tiny", n_mels=48)
    assert spec.frontend.n_mels == 48 and isinstance(spec, CnnSpec)


@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn-comb"])
def test_too_short_input_raises(name):
    model = create_model(name, 3, size="tiny").eval()
    with pytest.raises(ValueError, match="needs at least"):
        model(torch.randn(1, model.min_samples - 1))
    with torch.no_grad():
        assert model(torch.randn(1, model.min_samples)).shape == (1, 3)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("cnn-audio", {"channels": (8, 16, 10**6)}, "channels is at most 4096"),
        ("cnn-audio", {"dense": 10**7}, "dense is at most"),
        ("cnn-audio", {"stem_channels": 10**5}, "stem_channels is at most"),
        ("cnn-audio", {"kernel_size": "5"}, "field 'kernel_size' must be an integer"),
        ("cnn-audio", {"channels": ("8", "16", "32")}, "must be a list of integers"),
        ("cnn-audio", {"dropout": float("nan")}, "field 'dropout' must be a finite number"),
        ("cnn-audio", {"sample_rate": 10**7}, r"sample_rate must be in \[1000, 384000\]"),
        ("cnn-spec", {"n_fft": 2**30}, "n_fft must be in"),
        ("cnn-spec", {"fmax": float("inf")}, "field 'fmax' must be a finite number or null"),
        # 4096 channels in 16 blocks of 16 3x3 convolutions: ~38 G parameters.
        (
            "cnn-spec",
            {"channels": (4096,) * 16, "convs_per_block": (16,) * 16, "pools": (1,) * 16},
            "parameters, over the",
        ),
    ],
)
def test_absurd_configs_are_refused_before_anything_is_allocated(name, overrides, message):
    # Fails on the old code: strings and NaN slipped through, and the sizes were allocated.
    with pytest.raises(ValueError, match=message):
        create_model(name, 3, size="tiny", **{"sample_rate": 8000, **overrides})


def test_huge_pooling_is_refused_without_spinning():
    # Pools of 1000 (the crafted-run case that hung the old code, which counted up one sample
    # at a time to their product) are over the cap; within the cap the search stops after one
    # second of samples.
    with pytest.raises(ValueError, match="pools is at most 64"):
        create_model("cnn-audio", 3, size="tiny", pools=(1000, 1000, 1000))
    with pytest.raises(ValueError, match="reduces the rate too much"):
        create_model("cnn-audio", 3, size="tiny", pools=(64, 64, 64))


def test_num_classes_is_an_integer_in_range():
    for bad in ("3", 2.0, True, 10**6):
        with pytest.raises(ValueError, match="num_classes"):
            create_model("cnn-audio", bad, size="tiny")


def test_comb_branches_cannot_be_combs():
    audio = create_model("cnn-audio", 3, size="tiny")
    config = {
        "hidden": 8,
        "audio": {"name": "cnn-comb", "config": {}},
        "spec": {"name": "cnn-spec", "config": {}},
    }
    with pytest.raises(ValueError, match="branches cannot be cnn-comb"):
        model_from_config("cnn-comb", 3, config)
    assert CnnComb.from_size(3, size="tiny").embedding_dim == 32
    with pytest.raises(ValueError, match="hidden must be in"):
        CnnComb(audio, create_model("cnn-spec", 3, size="tiny"), 3, hidden=10**6)


def test_family_builders_use_the_family_defaults():
    # ConfiguredModel gives every single-config family the same builders and round trip.
    assert CnnSpec.from_size(3).config == dataclasses.replace(
        CnnSpec.SIZES["small"], n_fft=1024, hop_length=320
    )
    assert CnnAudio.from_size(3, size="tiny").sample_rate == 16000
    cnn14 = Cnn14.from_size(3, size="tiny")
    assert cnn14.sample_rate == 32000
    assert Cnn14.from_config(3, cnn14.config_dict()).config == cnn14.config


@pytest.mark.parametrize("name", ["cnn-audio", "cnn-spec", "cnn14", "cnn-comb"])
def test_every_model_names_itself_for_a_bad_waveform(name):
    model = create_model(name, 3, size="tiny", sample_rate=16000)
    with pytest.raises(ValueError, match=f"^{name} expects a \\(batch, samples\\) waveform"):
        model(torch.zeros(2, 1, 16000))
    with pytest.raises(ValueError, match=f"^{name} needs at least {model.min_samples} samples"):
        model(torch.zeros(2, model.min_samples - 1))
