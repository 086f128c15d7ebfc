"""The weight EMA: closed form, what validation and checkpoints hold, resume, off = as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from wavemel.cli import main
from wavemel.errors import WavemelError
from wavemel.train import loop
from wavemel.train.config import TrainConfig, resume_config
from wavemel.train.ema import ModelEma, ema_decay_at

SR = 8000
STEPS_PER_EPOCH = 4  # 24 training clips // batch 6


def test_the_decay_warms_up_to_its_target():
    # (1 + n) / (10 + n) after step n, capped by the target.
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.5, 8) == 0.5  # 9/18 reaches the target exactly
    assert ema_decay_at(0.5, 1000) == 0.5


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1).double()
        self.norm = nn.BatchNorm1d(1).double()
        self.frozen = nn.Parameter(torch.tensor([3.0], dtype=torch.float64), requires_grad=False)
        self.register_buffer("constant", torch.tensor([0.1, 0.7], dtype=torch.float64))

    def forward(self, x):
        return self.norm(self.linear(x * self.constant)) * self.frozen


def test_ema_after_k_steps_is_the_closed_form_average_of_the_trajectory():
    torch.manual_seed(0)
    model = _Tiny()
    decay, k = 0.6, 12
    ema = ModelEma(model, decay)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trajectory = [model.linear.weight.detach().clone()]
    means = [model.norm.running_mean.clone()]
    for n in range(1, k + 1):
        loss = model(torch.randn(4, 2, dtype=torch.float64)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(n)
        trajectory.append(model.linear.weight.detach().clone())
        means.append(model.norm.running_mean.clone())

    # e_k = prod_{n<=k} d_n * w_0 + sum_n (1 - d_n) * prod_{n<m<=k} d_m * w_n
    def closed_form(values):
        total = torch.zeros_like(values[0])
        for n in range(k + 1):
            share = 1.0 if n == 0 else 1.0 - ema_decay_at(decay, n)
            for m in range(n + 1, k + 1):
                share *= ema_decay_at(decay, m)
            total += share * values[n]
        return total

    # The weights of the first step count: the ramp keeps the random start from dominating.
    start_share = 1.0
    for m in range(1, k + 1):
        start_share *= ema_decay_at(decay, m)
    assert start_share < 1e-3
    exact = {"rtol": 0.0, "atol": 1e-12}
    torch.testing.assert_close(ema.module.linear.weight, closed_form(trajectory), **exact)
    torch.testing.assert_close(ema.module.norm.running_mean, closed_form(means), **exact)
    assert not torch.allclose(ema.module.linear.weight, model.linear.weight)
    # Integer buffers are copied; constants and frozen parameters stay exactly what they were.
    assert int(ema.module.norm.num_batches_tracked) == k
    assert torch.equal(ema.module.constant, model.constant)
    assert torch.equal(ema.module.frozen, model.frozen)
    assert not ema.module.training


def test_ema_of_hand_worked_scalar_trajectory():
    # w_0 = 0, then w_n = n: d_1 = 2/11, d_2 = 3/12 (target 0.25 reached at step 2).
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    ema = ModelEma(model, 0.25)
    for n, expected in ((1, 9 / 11), (2, 0.25 * 9 / 11 + 0.75 * 2), (3, None)):
        with torch.no_grad():
            model.weight.fill_(float(n))
        ema.update(n)
        if expected is not None:
            assert ema.module.weight.item() == pytest.approx(expected, abs=1e-12)
    assert ema.module.weight.item() == pytest.approx(0.25 * (0.25 * 9 / 11 + 1.5) + 0.75 * 3)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, float("nan")])
def test_invalid_decay_is_a_one_line_error(decay, tmp_path, capsys):
    with pytest.raises(WavemelError) as info:
        TrainConfig(data="d", out="o", ema_decay=decay).check()
    assert str(info.value).startswith("--ema-decay must be in [0, 1)")
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
                + ["--ema-decay", str(decay)])  # fmt: skip
    err = capsys.readouterr().err
    # (NaN is refused one step earlier, by the field-type check: "field 'ema_decay' must be ...")
    assert code == 2 and err.startswith("wavemel: error: ") and "ema" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_ema_decay_round_trips_through_config_json(tmp_path):
    config = TrainConfig(data="d", out=str(tmp_path), ema_decay=0.999)
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json").ema_decay == 0.999
    resumed = resume_config(TrainConfig(out=str(tmp_path), resume=True))
    assert resumed.ema_decay == 0.999


# --- training runs on the built-in synthetic data ---------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One dataset; runs are trained on first use and shared by the tests below."""
    from wavemel.data.synthetic import generate

    root = tmp_path_factory.mktemp("ema")
    data = generate(root / "data", clips_per_class=4, sample_rate=SR, max_seconds=1.0)
    return {"root": root, "data": data}


def _config(runs: dict[str, Path], name: str, **changes) -> TrainConfig:
    return TrainConfig(
        model="cnn-audio",
        size="tiny",
        data=str(runs["data"]),
        out=str(runs["root"] / name),
        sample_rate=SR,
        input_seconds=0.5,
        epochs=2,
        batch_size=6,
        folds=4,
        workers=0,
        device="cpu",
        mixup_alpha=0.4,
        patience=0,
        cache_dir=str(runs["root"] / "cache"),
    ).replace(**changes)


def _state_tensors(run: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The resume state's tensors of one entry ("model" or "ema"), by state-dict key."""
    meta = json.loads((run / "state" / "state.json").read_text())["state"]
    tensors = load_file(str(run / "state" / "state.safetensors"))
    entries = dict(meta["__dict__"])
    if prefix not in entries:
        return {}
    return {key: tensors[ref["__tensor__"]] for key, ref in entries[prefix]["__dict__"]}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_and_checkpoints_use_the_ema_weights(runs, monkeypatch):
    scored = []
    real_validate = loop.validate

    def recording_validate(model, *args, **kwargs):
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_validate(model, *args, **kwargs)

    monkeypatch.setattr(loop, "validate", recording_validate)
    run = loop.train(_config(runs, "ema", ema_decay=0.9))
    monkeypatch.undo()

    last = load_file(str(run / "last.safetensors"))
    ema, raw = _state_tensors(run, "ema"), _state_tensors(run, "model")
    assert _equal(last, ema) and _equal(scored[-1], ema)
    assert not _equal(last, raw)  # training went on with the raw weights
    best_epoch = json.loads((run / "best.json").read_text())["metrics"]["best_epoch"]
    assert _equal(load_file(str(run / "best.safetensors")), scored[best_epoch - 1])
    runs["ema"] = run


def test_resume_restores_the_ema_exactly(runs, monkeypatch):
    if "ema" not in runs:  # the test above failed before it could share its run
        runs["ema"] = loop.train(_config(runs, "ema", ema_decay=0.9, force=True))
    partial = runs["root"] / "ema-partial"
    real_loss = loop.soft_cross_entropy
    calls = {"n": 0}

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == STEPS_PER_EPOCH + 2:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "soft_cross_entropy", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(runs, "ema-partial", ema_decay=0.9))
    monkeypatch.undo()
    loop.train(TrainConfig(out=str(partial), resume=True, device="cpu", workers=0))

    assert _equal(_state_tensors(partial, "ema"), _state_tensors(runs["ema"], "ema"))
    for stem in ("last", "best"):
        a = load_file(str(runs["ema"] / f"{stem}.safetensors"))
        assert _equal(a, load_file(str(partial / f"{stem}.safetensors"))), stem


def test_decay_zero_keeps_no_ema_and_saves_the_raw_weights(runs):
    run = loop.train(_config(runs, "plain"))
    state = json.loads((run / "state" / "state.json").read_text())["state"]
    # The state's entries are the ones written before the EMA existed.
    entries = [key for key, _ in state["__dict__"]]
    assert entries == ["model", "optimizer", "progress", "scaler", "rng"]
    last = load_file(str(run / "last.safetensors"))
    assert _equal(last, _state_tensors(run, "model"))
    if "ema" in runs:
        assert not _equal(last, load_file(str(runs["ema"] / "last.safetensors")))


def test_the_average_keeps_channels_last_and_of_the_plain_module_under_compile():
    from wavemel.models import create_model

    model = create_model("cnn-spec", 3, size="tiny", sample_rate=SR)
    model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model, backend="eager")
    ema = ModelEma(compiled, 0.5)
    assert not any("_orig_mod" in key for key in ema.state_dict())
    convs = [p for p in ema.module.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    ema.update(1)  # d_1 = 2/11: the average moves 9/11 of the way
    for name, parameter in ema.module.named_parameters():
        torch.testing.assert_close(parameter, before[name] + 9 / 11, msg=name)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_compiled_training_averages_the_same_weights(runs, monkeypatch):
    real_compile = torch.compile
    calls = []

    def eager_compile(module, **kwargs):
        # Dynamo without inductor's code generation (see test_train_paths): seconds, not minutes.
        calls.append(module)
        return real_compile(module, backend="eager")

    eager = loop.train(_config(runs, "ema-eager", ema_decay=0.9, mixup_alpha=0.0, epochs=1))
    monkeypatch.setattr(torch, "compile", eager_compile)
    compiled = loop.train(
        _config(runs, "ema-compiled", ema_decay=0.9, mixup_alpha=0.0, epochs=1, compile=True)
    )
    assert calls
    a = load_file(str(eager / "last.safetensors"))
    b = load_file(str(compiled / "last.safetensors"))
    assert a.keys() == b.keys() and _equal(b, _state_tensors(compiled, "ema"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ema_with_amp_and_channels_last(runs):
    run = loop.train(
        _config(runs, "ema-cuda", model="cnn-spec", ema_decay=0.9, device="cuda", amp=True)
    )
    last = load_file(str(run / "last.safetensors"))
    assert _equal(last, _state_tensors(run, "ema"))
    assert not _equal(last, _state_tensors(run, "model"))
    assert all(torch.isfinite(t).all() for t in last.values() if t.is_floating_point())


def test_combine_uses_the_branches_ema_weights(runs):
    from wavemel.checkpoint import load_checkpoint
    from wavemel.train.combine import combine
    from wavemel.train.config import CombineConfig

    if "ema" not in runs:
        runs["ema"] = loop.train(_config(runs, "ema", ema_decay=0.9, force=True))
    spec = loop.train(_config(runs, "ema-spec", model="cnn-spec", ema_decay=0.9, epochs=1))
    comb = combine(
        CombineConfig(
            audio_run=str(runs["ema"]),
            spec_run=str(spec),
            out=str(runs["root"] / "ema-comb"),
            epochs=1,
            batch_size=6,
            hidden=8,
            workers=0,
            device="cpu",
        )
    )
    comb_model, _meta = load_checkpoint(comb)
    for branch, run in ((comb_model.audio, runs["ema"]), (comb_model.spec, spec)):
        best = load_file(str(run / "best.safetensors"))
        frozen = {k: v for k, v in branch.state_dict().items() if k in best}
        assert frozen and all(torch.equal(best[k], v) for k, v in frozen.items())
    # The head's own run keeps no average: combine has no ema_decay.
    assert not _state_tensors(comb, "ema")


def test_create_with_decay_zero_is_off():
    assert ModelEma.create(nn.Linear(1, 1), 0.0) is None
