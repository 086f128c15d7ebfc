"""The training paths meant for GPUs, run on CPU: AMP, channels-last and torch.compile.

On CPU ``fit`` must ignore ``amp`` and ``channels_last`` (CUDA settings) rather than silently
train in another precision or layout, unless ``cpu_amp`` asks for bfloat16 (then with NHWC
convolutions and float32 validation), and ``compile`` must train the same network
and save a checkpoint that loads without ``torch.compile``'s renamed keys. The step itself is
also run with a bfloat16 autocast and channels-last log-mels on CPU, the code that CUDA runs.
"""

from __future__ import annotations

import importlib
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wavemel.augment import Mixup, WaveformAugment
from wavemel.checkpoint import load_checkpoint
from wavemel.models import create_model
from wavemel.train.config import TrainConfig
from wavemel.train.loop import (
    TrainStep,
    _SpectrogramInput,
    seed_everything,
    train,
    train_one_epoch,
)
from wavemel.train.state import Progress

loop_module = importlib.import_module("wavemel.train.loop")

SR = 8000


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from wavemel.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    return generate(root, clips_per_class=4, sample_rate=SR, min_seconds=0.3, max_seconds=1.0)


def _train(data: Path, out: Path, **changes) -> dict[str, torch.Tensor]:
    """One epoch of tiny cnn-spec; returns the last checkpoint's weights."""
    config = TrainConfig(
        model="cnn-spec",
        size="tiny",
        data=str(data),
        out=str(out),
        sample_rate=SR,
        input_seconds=0.5,
        epochs=1,
        batch_size=8,
        folds=3,
        workers=0,
        device="cpu",
        mixup_alpha=0.0,
        patience=0,
        cache_dir=str(out.parent / "cache"),
        amp=False,
        channels_last=False,
        compile=False,
    ).replace(**changes)
    run = train(config)
    return load_file(str(run / "last.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if tol:
            torch.testing.assert_close(a[name], b[name], **tol, msg=name)
        else:
            assert torch.equal(a[name], b[name]), name


def test_amp_and_channels_last_do_not_change_cpu_training(synth, tmp_path):
    plain = _train(synth, tmp_path / "plain")
    flagged = _train(synth, tmp_path / "flagged", amp=True, channels_last=True)
    # Both settings are CUDA-only: on CPU the run is the float32, contiguous one, bit for bit.
    _assert_same_weights(plain, flagged)
    assert all(t.dtype == torch.float32 for t in flagged.values() if t.is_floating_point())


def test_compile_trains_the_same_network_and_saves_plain_keys(synth, tmp_path, monkeypatch):
    calls = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        # Dynamo traces and replays the graph without inductor's C++ code generation: the
        # compile wiring is tested in seconds, and the numbers must match eager ones.
        calls.append(type(module).__name__)
        return real_compile(module, backend="eager")

    plain = _train(synth, tmp_path / "plain")
    monkeypatch.setattr(torch, "compile", eager_compile)
    compiled = _train(synth, tmp_path / "compiled", compile=True)
    assert calls, "fit(compile=True) did not call torch.compile"
    assert not any("_orig_mod" in name for name in compiled)
    _assert_same_weights(plain, compiled, rtol=1e-4, atol=1e-5)
    model, _meta = load_checkpoint(tmp_path / "compiled" / "last")
    assert isinstance(model, torch.nn.Module)


@pytest.mark.slow  # ~60 s on 2 CPU cores: inductor compiles the forward and backward graphs
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's inductor needs cc")
def test_compile_with_inductor_trains_and_matches_eager_outputs(synth, tmp_path):
    before = create_model("cnn-spec", 8, size="tiny", sample_rate=SR).state_dict()
    weights = _train(synth, tmp_path / "compiled", compile=True)
    assert not any("_orig_mod" in name for name in weights)
    assert any(not torch.equal(weights[k], before[k]) for k in weights if k in before)
    # The weights are not compared with an eager run's: inductor draws dropout from its own
    # random stream, so the later augmentations differ. Its arithmetic is compared instead.
    model, _meta = load_checkpoint(tmp_path / "compiled" / "last")
    x = 0.1 * torch.randn(4, 4000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_with_amp_and_channels_last(synth, tmp_path):
    weights = _train(synth, tmp_path / "cuda", device="cuda", amp=True, channels_last=True)
    # Autocast runs the convolutions in half precision; the saved weights stay float32.
    floats = [t for t in weights.values() if t.is_floating_point()]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)
    model, meta = load_checkpoint(tmp_path / "cuda" / "last")
    assert math.isfinite(meta["metrics"]["train_loss"])


def _one_epoch(*, amp_dtype=None, channels_last: bool = False) -> tuple[float, torch.nn.Module]:
    """One epoch of the real step on random clips: cnn-spec tiny, mixup on log-mels."""
    seed_everything(0)
    model = create_model("cnn-spec", 3, size="tiny", sample_rate=SR)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            0.1 * torch.randn(8, 5000, generator=generator),
            torch.full((8,), 5000),
            torch.eye(3)[torch.arange(8) % 3],
            torch.ones(8),
        )
        for _ in range(3)
    ]
    seed_everything(0, 1)
    step = TrainStep(
        augment=WaveformAugment(4000),
        mixup=Mixup(0.4),
        device=torch.device("cpu"),
        lr_schedule=lambda step: 1e-3,
        amp_dtype=amp_dtype,
        spectrogram=model.spectrogram,
        channels_last=channels_last,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # Wrapped as fit() wraps it for mixup on log-mels.
    loss = train_one_epoch(_SpectrogramInput(model), batches, optimizer, step, Progress())
    return loss, model


def test_step_under_bfloat16_autocast_stays_close_to_float32():
    loss32, _ = _one_epoch()
    loss16, model16 = _one_epoch(amp_dtype=torch.bfloat16)
    # bfloat16 keeps ~3 significant digits; the loss is computed in float32 from its logits.
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    seed_everything(0)  # the initial weights of _one_epoch's model
    initial = create_model("cnn-spec", 3, size="tiny", sample_rate=SR)
    moved = 0
    for (name, p16), p0 in zip(model16.named_parameters(), initial.parameters()):
        assert p16.dtype == torch.float32, name  # autocast casts activations, not weights
        assert torch.isfinite(p16).all(), name
        moved += not torch.equal(p16, p0)
    assert moved > len(list(initial.parameters())) // 2
    # (Weights are not compared with float32 ones: AdamW turns any difference in a tiny
    # gradient into a full step of the learning rate.)


def test_channels_last_step_matches_contiguous():
    loss_a, _ = _one_epoch()
    loss_b, model_b = _one_epoch(channels_last=True)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    conv = next(m for m in model_b.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # One step's gradients agree (weights after AdamW are not compared: it turns any difference
    # in a tiny gradient, e.g. from another convolution algorithm, into a full LR step).
    grads = []
    for channels_last in (False, True):
        seed_everything(0)
        model = create_model("cnn-spec", 3, size="tiny", sample_rate=SR)
        spec = model.spectrogram(
            0.1 * torch.randn(4, 5000, generator=torch.Generator().manual_seed(2))
        )
        if channels_last:
            model.to(memory_format=torch.channels_last)
            spec = spec.contiguous(memory_format=torch.channels_last)
        model.forward_spectrogram(spec).logsumexp(dim=1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    # float32 convolutions in another memory format sum in another order: differences of ~1e-5
    # of the largest gradient; a real layout bug gives differences of the gradients' own size.
    scale = max(g.abs().max().item() for g in grads[0].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=1e-4 * scale, msg=name)


def test_cpu_amp_trains_in_bfloat16_with_nhwc_and_validates_in_float32(
    synth, tmp_path, monkeypatch
):
    from wavemel.models.cnn_spec import CnnSpec

    seen = {"train": set(), "eval": set()}
    forward = CnnSpec.forward_spectrogram

    def spy(self, spec):
        phase = "train" if self.training else "eval"
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
        # A one-channel log-mel is trivially NHWC; a conv weight with several input channels
        # shows the layout fit() chose.
        weight = next(
            m.weight for m in self.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
        )
        nhwc = (
            weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        )
        seen[phase].add((autocast, nhwc))
        return forward(self, spec)

    monkeypatch.setattr(CnnSpec, "forward_spectrogram", spy)
    # Whatever CPU runs the test: the path a CPU with bfloat16 units takes.
    monkeypatch.setattr(loop_module, "cpu_has_bf16_units", lambda: True)
    plain = _train(synth, tmp_path / "plain")
    seen_plain = {k: set(v) for k, v in seen.items()}
    for phase in seen.values():
        phase.clear()
    amp = _train(synth, tmp_path / "amp", cpu_amp=True, channels_last=True)
    # Float32 training never autocasts, nor lays the network out NHWC on the CPU.
    assert seen_plain["train"] == {(False, False)}
    # cpu_amp: every training step in bfloat16 with NHWC convolutions; validation in float32.
    assert seen["train"] == {(torch.bfloat16, True)}
    assert {autocast for autocast, _ in seen["eval"]} == {False}
    # The weights stay float32 and train to something close to, not equal to, float32's.
    assert all(t.dtype == torch.float32 for t in amp.values() if t.is_floating_point())
    assert any(not torch.equal(amp[k], plain[k]) for k in plain)
    _assert_same_weights(plain, amp, rtol=0.2, atol=0.05)


def test_cpu_amp_without_bfloat16_units_trains_in_float32_and_says_so(
    synth, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(loop_module, "cpu_has_bf16_units", lambda: False)
    plain = _train(synth, tmp_path / "plain")
    asked = _train(synth, tmp_path / "asked", cpu_amp=True)
    # Emulated bfloat16 would only be slower: the run is the float32 one, bit for bit.
    _assert_same_weights(plain, asked)
    assert "cpu_amp: this CPU has no bfloat16 units" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd crc32\n", False),
    ],
)
def test_cpu_bf16_units_are_read_from_the_cpu_flags(tmp_path, cpuinfo, expected):
    from wavemel._device import cpu_has_bf16_units

    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_bf16_units(str(path)) is expected
    assert cpu_has_bf16_units(str(tmp_path / "absent")) is False
