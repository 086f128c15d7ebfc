"""Tests for wavemel.augment: exact index arithmetic on tiny inputs, randomness, eval modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavemel.augment import (
    Mixup,
    RandomCrop,
    RandomPad,
    Replicate,
    TimeShift,
    WaveformAugment,
    crop,
    eval_fill_for,
    fill_short,
    fit,
    mixup,
    pad,
    replicate,
    sample_beta,
    shift,
)
from wavemel.infer import fill_window
from wavemel.train.loader import ClipItem, WindowDataset, collate_windows, shift_margin


def _long(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three clips 1..L zero-padded to 10 samples, lengths 10, 4 and 0 (empty)."""
    lengths = _long(10, 4, 0)
    x = torch.arange(1, 11, dtype=torch.float32).repeat(3, 1)
    x = x * (torch.arange(10) < lengths.unsqueeze(1))
    return x, lengths


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- pure functions: exact outputs ---------------------------------------------------------


def test_shift_roll_is_circular_within_valid_length():
    x, lengths = _batch()
    out = shift(x, lengths, _long(3, 1, 5), mode="roll")
    assert out[0].tolist() == [8, 9, 10, 1, 2, 3, 4, 5, 6, 7]
    assert out[1].tolist() == [4, 1, 2, 3, 0, 0, 0, 0, 0, 0]  # padding stays zero
    assert out[2].tolist() == [0] * 10
    back = shift(x, lengths, _long(-2, -5, 0), mode="roll")
    assert back[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 1, 2]
    assert back[1].tolist() == [2, 3, 4, 1, 0, 0, 0, 0, 0, 0]  # -5 mod 4 = -1


def test_shift_zero_fills_and_drops_content():
    x, lengths = _batch()
    out = shift(x, lengths, _long(3, -1, 0), mode="zero")
    assert out[0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert out[1].tolist() == [2, 3, 4, 0, 0, 0, 0, 0, 0, 0]
    assert out[2].tolist() == [0] * 10


def test_crop_exact():
    x, lengths = _batch()
    out = crop(x, lengths, _long(6, 1, 0), 4)
    assert out.tolist() == [[7, 8, 9, 10], [2, 3, 4, 0], [0, 0, 0, 0]]


def test_pad_exact():
    x, lengths = _batch()
    out = pad(x[1:], lengths[1:], _long(2, 3), 7)
    assert out.tolist() == [[0, 0, 1, 2, 3, 4, 0], [0] * 7]
    # A clip longer than the room after its offset is truncated at its end.
    assert pad(x[:1], lengths[:1], _long(1), 4).tolist() == [[0, 1, 2, 3]]


def test_replicate_exact():
    x, lengths = _batch()
    out = replicate(x, lengths, _long(0, 2, 0), 9)
    assert out[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert out[1].tolist() == [3, 4, 1, 2, 3, 4, 1, 2, 3]
    assert out[2].tolist() == [0] * 9


def test_channels_get_the_same_parameters():
    x, lengths = _batch()
    stereo = torch.stack([x, -x], dim=1)  # (B, 2, T)
    out = replicate(stereo, lengths, _long(0, 2, 0), 9)
    assert out.shape == (3, 2, 9)
    assert torch.equal(out[:, 0], replicate(x, lengths, _long(0, 2, 0), 9))
    assert torch.equal(out[:, 1], -out[:, 0])


# ---- modules: randomness within the documented ranges ---------------------------------------


def test_random_crop_draws_valid_starts_and_matches_crop():
    x = torch.arange(100, dtype=torch.float32).repeat(64, 1)
    lengths = torch.randint(0, 101, (64,), generator=_gen(1))
    module = RandomCrop(20, generator=_gen(2))
    starts = module.draw_starts(lengths)
    assert (starts >= 0).all() and (starts <= (lengths - 20).clamp_min(0)).all()
    assert len(set(starts[lengths > 60].tolist())) > 3  # actually random
    module.generator = _gen(2)
    out, out_lengths = module(x, lengths)
    assert torch.equal(out, crop(x, lengths, starts, 20))
    assert torch.equal(out_lengths, lengths.clamp_max(20))


def test_random_pad_offsets_keep_the_clip_inside():
    x = torch.arange(1, 31, dtype=torch.float32).repeat(32, 1)
    lengths = torch.randint(1, 31, (32,), generator=_gen(3))
    out, _ = RandomPad(40, generator=_gen(4))(x, lengths)
    # Every clip appears whole and contiguous: its sample sum is preserved.
    expected = lengths * (lengths + 1) / 2
    assert torch.equal(out.sum(dim=1), expected.float())
    assert out.shape == (32, 40)


def test_replicate_module_random_phase():
    x = torch.arange(1, 6, dtype=torch.float32).repeat(16, 1)
    out, out_lengths = Replicate(12, generator=_gen(5))(x, _long(*([5] * 16)))
    firsts = out[:, 0]
    assert set(firsts.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and len(set(firsts.tolist())) > 1
    # Each row is the clip read circularly from its first value.
    expected = (firsts.long().unsqueeze(1) - 1 + torch.arange(12)) % 5 + 1
    assert torch.equal(out, expected.float())
    assert out_lengths.tolist() == [12] * 16


@pytest.mark.parametrize("mode", ["roll", "zero"])
def test_time_shift_range_and_fraction(mode):
    lengths = _long(*([1000] * 256), 0)
    module = TimeShift(0.25, mode, generator=_gen(6))
    offsets = module.draw_offsets(lengths)
    assert offsets[:-1].abs().max() <= 250 and offsets[:-1].min() < -150
    assert offsets[:-1].max() > 150
    assert offsets[-1] == 0
    x = torch.arange(1, 1001, dtype=torch.float32).repeat(257, 1)
    x[-1] = 0
    module.generator = _gen(6)
    out, out_lengths = module(x, lengths)
    assert torch.equal(out, shift(x, lengths, offsets, mode))
    assert torch.equal(out_lengths, lengths)


def test_waveform_augment_train_outputs_are_pieces_of_the_clip():
    n = 8
    x = torch.arange(1, 21, dtype=torch.float32).repeat(200, 1)
    lengths = torch.randint(0, 21, (200,), generator=_gen(7))
    x = x * (torch.arange(20) < lengths.unsqueeze(1))
    module = WaveformAugment(n, shift=False, generator=_gen(8))
    out = module(x, lengths)
    assert out.shape == (200, n)
    replicated = padded = 0
    for row, length in zip(out.tolist(), lengths.tolist()):
        nonzero = [v for v in row if v != 0]
        if length == 0:
            assert nonzero == []
        elif length >= n:  # a contiguous crop
            assert all(b == a + 1 for a, b in zip(row, row[1:])) and row[-1] <= length
        elif len(nonzero) == n:  # replicated: cyclic successor within 1..length
            assert all(b == a % length + 1 for a, b in zip(row, row[1:]))
            replicated += 1
        else:  # padded: the whole clip 1..length, contiguous among zeros
            assert nonzero == list(range(1, length + 1))
            start = row.index(1.0)
            assert row[start : start + length] == nonzero
            padded += 1
    assert replicated > 10 and padded > 10  # p_replicate = 0.5 picks both


@pytest.mark.parametrize("mode", ["roll", "zero"])
def test_fit_equals_shift_then_crop_pad_or_replicate(mode):
    n, batch = 12, 40
    lengths = torch.randint(0, 30, (batch,), generator=_gen(30))
    x = torch.randn(batch, 2, 30, generator=_gen(31)) * (torch.arange(30) < lengths[:, None, None])
    module = WaveformAugment(n, shift=0.9, shift_mode=mode, generator=_gen(32))
    params = module.draw(lengths)
    assert params.shift.abs().max() > 5 and params.replicate.any() and not params.replicate.all()
    out = fit(x, lengths, params, n, mode)
    shifted = shift(x, lengths, params.shift, mode)
    for b in range(batch):
        one, length = shifted[b : b + 1], lengths[b : b + 1]
        if length.item() >= n:
            expected = crop(one, length, params.crop_start[b : b + 1], n)
        elif params.replicate[b]:
            expected = replicate(one, length, params.phase[b : b + 1], n)
        else:
            expected = pad(one, length, params.pad_offset[b : b + 1], n)
        assert torch.equal(out[b : b + 1], expected), b
    again = WaveformAugment(n, shift=0.9, shift_mode=mode, generator=_gen(32))
    assert torch.equal(again(x, lengths), out)  # forward = fit(draw)


def test_waveform_augment_pad_only_and_replicate_only():
    x = torch.arange(1, 4, dtype=torch.float32).repeat(50, 1)
    lengths = _long(*([3] * 50))
    padded = WaveformAugment(6, shift=False, pad_or_replicate="pad", generator=_gen(0))(x, lengths)
    assert torch.equal(padded.sum(dim=1), torch.full((50,), 6.0))
    repl = WaveformAugment(6, shift=False, pad_or_replicate="replicate", generator=_gen(0))
    assert torch.equal(repl(x, lengths).sum(dim=1), torch.full((50,), 12.0))


class _RampStore:
    """A stand-in ClipStore whose clip i holds the samples 0, 1, 2, ... (a ramp)."""

    def __init__(self, lengths: list[int]):
        self.lengths = lengths

    def length(self, index: int) -> int:
        return self.lengths[index]

    def read(self, index: int, start: int = 0, length: int | None = None):
        stop = self.lengths[index] if length is None else start + length
        return np.arange(start, stop, dtype=np.float32)


@pytest.mark.parametrize("mode", ["roll", "zero"])
def test_windows_cut_from_long_clips_are_contiguous(mode):
    # Loader window + on-device augmentation, as the trainer chains them: every input cut from
    # a clip longer than the input is a contiguous stretch of it (no wrap-around seam).
    n = 40
    lengths = [n, n + 3, 2 * n, 10 * n, 1000]
    items = [ClipItem(i, np.ones(1, np.float32), 1.0, f"c{i}") for i in range(len(lengths))]
    dataset = WindowDataset(_RampStore(lengths), items, n + shift_margin(n), seed=3)
    module = WaveformAugment(n, shift_mode=mode, generator=_gen(33))
    starts = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        waves, clip_lengths, _, _ = collate_windows([dataset[i] for i in range(len(items))])
        for row in module(waves, clip_lengths).tolist():
            assert all(b == a + 1 for a, b in zip(row, row[1:])), row
            starts.add(row[0])
    assert len(starts) > 20  # the window position still varies


def test_short_clips_are_never_reordered_in_roll_mode():
    # A padded short clip is never rolled (that would splice its end before its start); a
    # replicated one may start anywhere but always continues cyclically.
    n, length = 12, 5
    x = torch.arange(1, length + 1, dtype=torch.float32).repeat(300, 1)
    out = WaveformAugment(n, shift=0.9, generator=_gen(34))(x, _long(*([length] * 300)))
    for row in out.tolist():
        nonzero = [v for v in row if v != 0]
        if len(nonzero) == length:  # padded
            assert nonzero == list(range(1, length + 1))
        else:
            assert all(b == a % length + 1 for a, b in zip(row, row[1:]))


def test_parts_are_the_single_source_of_draws():
    lengths = torch.randint(0, 40, (64,), generator=_gen(35))
    module = WaveformAugment(16, generator=_gen(36))
    marks = {name: torch.full((64,), i + 100) for i, name in enumerate(("crop", "pad", "phase"))}
    module.cropping.draw_starts = lambda _: marks["crop"]
    module.padding.draw_offsets = lambda _: marks["pad"]
    module.replication.draw_phases = lambda _: marks["phase"]
    params = module.draw(lengths)
    assert params.crop_start is marks["crop"] and params.pad_offset is marks["pad"]
    assert params.phase is marks["phase"]
    fresh = WaveformAugment(16, eval_crop="center").eval()
    assert torch.equal(fresh.draw(lengths).crop_start, fresh.cropping.draw_starts(lengths))
    assert not fresh.draw(lengths).shift.any() and not fresh.draw(lengths).pad_offset.any()


def test_reproducible_with_seed():
    x = torch.randn(16, 50)
    lengths = torch.randint(0, 51, (16,), generator=_gen(10))
    a = WaveformAugment(30, generator=_gen(11))(x, lengths)
    b = WaveformAugment(30, generator=_gen(11))(x, lengths)
    c = WaveformAugment(30, generator=_gen(12))(x, lengths)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- eval mode ------------------------------------------------------------------------------


def test_eval_mode_is_identity_or_deterministic():
    x, lengths = _batch()
    shift_module = TimeShift(5).eval()
    out, out_lengths = shift_module(x, lengths)
    assert out is x and torch.equal(out_lengths, lengths)

    assert RandomCrop(4).eval()(x, lengths)[0].tolist() == [[1, 2, 3, 4], [1, 2, 3, 4], [0] * 4]
    centre = RandomCrop(4, eval_crop="center").eval()(x, lengths)[0]
    assert centre[0].tolist() == [4, 5, 6, 7]
    assert RandomPad(6).eval()(x, lengths)[0][1].tolist() == [1, 2, 3, 4, 0, 0]
    assert Replicate(6).eval()(x, lengths)[0][1].tolist() == [1, 2, 3, 4, 1, 2]

    augment = WaveformAugment(6).eval()
    first = augment(x, lengths)
    assert first.tolist() == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 1, 2], [0] * 6]
    assert torch.equal(augment(x, lengths), first)
    padded = WaveformAugment(6, eval_fill="pad", eval_crop="center").eval()(x, lengths)
    assert padded.tolist() == [[3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 0, 0], [0] * 6]
    assert WaveformAugment(6, pad_or_replicate="pad").eval_fill == "pad"


def test_mixup_is_noop_in_eval():
    x, y = torch.randn(4, 10), torch.softmax(torch.randn(4, 3), dim=1)
    out_x, out_y = Mixup().eval()(x, y)
    assert out_x is x and out_y is y


# ---- mixup ----------------------------------------------------------------------------------


def _targets(batch: int, classes: int, seed: int) -> torch.Tensor:
    labels = torch.randint(0, classes, (batch,), generator=_gen(seed))
    return torch.nn.functional.one_hot(labels, classes).float()


@pytest.mark.parametrize("shape", [(32, 100), (32, 1, 8, 12)])
def test_mixup_blends_exactly_and_targets_sum_to_one(shape):
    x = torch.randn(*shape, generator=_gen(13))
    y = _targets(32, 5, 14)
    lam, partner = Mixup(0.4, generator=_gen(15)).draw(y)
    x_mixed, y_mixed = Mixup(0.4, level_aware=False, generator=_gen(15))(x, y)
    lam_x = lam.view(-1, *([1] * (x.dim() - 1)))
    assert torch.equal(x_mixed, lam_x * x + (1 - lam_x) * x[partner])
    assert torch.equal(y_mixed, lam[:, None] * y + (1 - lam[:, None]) * y[partner])
    assert torch.allclose(y_mixed.sum(dim=1), torch.ones(32), atol=1e-6)
    assert (lam >= 0.5).all() and (lam <= 1).all()  # max(lam, 1 - lam): first clip dominates
    assert sorted(partner.tolist()) == list(range(32))  # a permutation
    assert y_mixed.shape == y.shape and x_mixed.shape == x.shape


def test_mixup_reproduces_under_seed():
    x, y = torch.randn(16, 40), _targets(16, 4, 16)
    first = Mixup(0.4, generator=_gen(17))(x, y)
    second = Mixup(0.4, generator=_gen(17))(x, y)
    other = Mixup(0.4, generator=_gen(18))(x, y)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_mixup_same_class_partners():
    y = _targets(64, 6, 19)
    classes = y.argmax(dim=1)
    _, partner = Mixup(0.4, same_class_prob=1.0, generator=_gen(20)).draw(y)
    assert torch.equal(classes[partner], classes)
    for index in range(64):  # a different clip whenever the class has another one
        if (classes == classes[index]).sum() > 1:
            assert partner[index] != index
    _, mixed_partner = Mixup(0.4, same_class_prob=0.0, generator=_gen(20)).draw(y)
    assert (classes[mixed_partner] != classes).any()


def test_mixup_p_zero_leaves_batch_unchanged():
    x, y = torch.randn(8, 20), _targets(8, 3, 21)
    x_mixed, y_mixed = Mixup(1.0, p=0.0, generator=_gen(22))(x, y)
    assert torch.equal(x_mixed, x) and torch.equal(y_mixed, y)


def test_mixup_function_direct():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x_mixed, y_mixed = mixup(x, y, torch.tensor([0.75, 0.5]), _long(1, 0))
    assert x_mixed.tolist() == [[1.5, 2.75], [2.0, 3.5]]
    assert y_mixed.tolist() == [[0.75, 0.25], [0.5, 0.5]]


@pytest.mark.parametrize("alpha", [0.2, 0.4, 2.0])
def test_sample_beta_moments(alpha):
    draws = sample_beta(alpha, 40000, generator=_gen(23))
    assert draws.min() >= 0 and draws.max() <= 1 and not draws.isnan().any()
    expected_var = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2
    assert abs(draws.mean().item() - 0.5) < 0.01
    assert abs(draws.var().item() - expected_var) < 0.01


def test_sample_beta_depends_on_the_generator_only():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = sample_beta(0.4, 100, generator=_gen(37))
    assert torch.equal(torch.random.get_rng_state(), before)  # global stream untouched
    torch.manual_seed(1)
    assert torch.equal(sample_beta(0.4, 100, generator=_gen(37)), first)
    assert not torch.equal(sample_beta(0.4, 100, generator=_gen(38)), first)
    tiny = sample_beta(0.01, 1000, generator=_gen(39))
    assert not tiny.isnan().any() and ((tiny < 0.01) | (tiny > 0.99)).float().mean() > 0.8


def _tone(freq: int, samples: int, db: float) -> torch.Tensor:
    t = torch.arange(samples, dtype=torch.float64) / samples
    return (10 ** (db / 20) * np.sqrt(2) * torch.sin(2 * np.pi * freq * t)).float()


@pytest.mark.parametrize("lam", [0.5, 0.7, 0.9])
def test_level_aware_mixup_energy_shares_follow_the_targets(lam):
    # Two clips 20 dB apart (orthogonal tones): each one's share of the mixture's energy is its
    # target weight, whichever of the two is louder. A plain blend gives the quiet clip a
    # share of 0.07 at lam = 0.7.
    samples = 4000
    loud, quiet = _tone(50, samples, -10.0), _tone(83, samples, -30.0)
    x = torch.stack([quiet, loud])
    y = torch.eye(2)
    lams = torch.tensor([lam, lam])
    mixed, y_mixed = mixup(x, y, lams, _long(1, 0), level_aware=True)
    basis = torch.stack([quiet, loud], dim=1).double()  # (T, 2)
    for row, own in ((0, 0), (1, 1)):
        coef = torch.linalg.lstsq(basis, mixed[row].double()[:, None]).solution[:, 0]
        energy = coef**2 * basis.pow(2).sum(dim=0)
        share = (energy[own] / energy.sum()).item()
        assert share == pytest.approx(lam, abs=0.01)
        assert y_mixed[row, own].item() == pytest.approx(lam)
        # The mixture's level lies between the two, lam-weighted in dB.
        level = 10 * torch.log10(mixed[row].double().pow(2).mean()).item()
        own_db = (-30.0, -10.0)[own]
        assert level == pytest.approx(lam * own_db + (1 - lam) * (-40.0 - own_db), abs=0.1)


def test_level_aware_mixup_with_a_silent_partner_keeps_the_clip_level():
    x = torch.stack([_tone(50, 1000, -20.0), torch.zeros(1000)])
    mixed, _ = mixup(x, torch.eye(2), torch.tensor([0.6, 0.6]), _long(1, 0), level_aware=True)
    assert torch.allclose(mixed[0], x[0], atol=1e-5)  # silence adds nothing, level kept
    assert torch.allclose(mixed[1], x[0], atol=1e-5)  # and the silent row becomes the tone
    assert not mixed.isnan().any()


def test_mixup_mixes_loss_weights_like_targets():
    x, y = torch.randn(16, 30), _targets(16, 4, 40)
    weights = torch.tensor([1.0, 0.5] * 8)
    lam, partner = Mixup(0.4, generator=_gen(41)).draw(y)
    _, y_mixed, w_mixed = Mixup(0.4, generator=_gen(41))(x, y, weights)
    assert torch.allclose(w_mixed, lam * weights + (1 - lam) * weights[partner])
    assert torch.allclose(y_mixed, lam[:, None] * y + (1 - lam[:, None]) * y[partner])
    assert Mixup().eval()(x, y, weights)[2] is weights
    with pytest.raises(ValueError, match="loss weight"):
        Mixup()(x, y, weights[:3])


def test_eval_fill_follows_the_training_fill():
    assert eval_fill_for(0.0) == "pad"
    assert eval_fill_for(0.5) == "replicate" and eval_fill_for(1.0) == "replicate"
    assert WaveformAugment(6, p_replicate=0.0).eval_fill == "pad"
    assert WaveformAugment(6, p_replicate=0.3).eval_fill == "replicate"


@pytest.mark.parametrize("fill", ["replicate", "pad"])
def test_fill_short_matches_inference_and_eval_mode(fill):
    x, lengths = _batch()
    out = fill_short(x, lengths, 6, fill)
    expected = WaveformAugment(6, eval_fill=fill).eval()(x, lengths)
    assert torch.equal(out, expected)
    clip = np.arange(1, 5, dtype=np.float32)
    single = fill_short(torch.from_numpy(clip)[None], None, 7, fill)[0].numpy()
    assert np.array_equal(single, fill_window(clip, 7, fill))


# ---- validation, dtypes, devices ------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: TimeShift(-1),
        lambda: TimeShift(1.5),
        lambda: TimeShift(0.1, mode="wrap"),
        lambda: TimeShift(0.1, p=1.2),
        lambda: RandomCrop(0),
        lambda: RandomCrop(10, eval_crop="middle"),
        lambda: RandomPad(-5),
        lambda: Replicate(2.5),
        lambda: WaveformAugment(0),
        lambda: WaveformAugment(10, p_replicate=-0.1),
        lambda: WaveformAugment(10, pad_or_replicate="tile"),
        lambda: WaveformAugment(10, eval_fill="zeros"),
        lambda: WaveformAugment(10, shift=-3),
        lambda: Mixup(0.0),
        lambda: Mixup(-1.0),
        lambda: Mixup(0.4, same_class_prob=2.0),
        lambda: Mixup(0.4, p=float("nan")),
    ],
)
def test_invalid_parameters_raise(build):
    with pytest.raises(ValueError):
        build()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="lengths"):
        WaveformAugment(4)(torch.zeros(3, 10), _long(1, 2))
    with pytest.raises(ValueError, match="soft targets"):
        Mixup()(torch.zeros(3, 10), _long(0, 1, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_preserved(dtype):
    x = torch.randn(6, 30).to(dtype)
    lengths = _long(30, 10, 5, 0, 25, 1)
    assert WaveformAugment(20, generator=_gen(24))(x, lengths).dtype == dtype
    assert TimeShift(0.3)(x, lengths)[0].dtype == dtype
    y = _targets(6, 3, 25)
    x_mixed, y_mixed = Mixup(generator=_gen(26))(x, y)
    assert x_mixed.dtype == dtype and y_mixed.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_cpu_generator():
    x = torch.randn(8, 64)
    lengths = torch.randint(0, 65, (8,), generator=_gen(27))
    y = _targets(8, 3, 28)
    device = torch.device("cuda")
    cpu_out = WaveformAugment(32, generator=_gen(29))(x, lengths)
    gpu_out = WaveformAugment(32, generator=_gen(29))(x.to(device), lengths.to(device))
    assert gpu_out.device.type == "cuda" and torch.equal(gpu_out.cpu(), cpu_out)
    # Without a generator the draws happen on the device itself.
    out = WaveformAugment(32)(x.to(device), lengths.to(device))
    assert out.device.type == "cuda" and out.shape == (8, 32)
    x_mixed, y_mixed = Mixup(same_class_prob=0.5)(x.to(device), y.to(device))
    assert x_mixed.device.type == "cuda"
    assert torch.allclose(y_mixed.sum(dim=1), torch.ones(8, device=device))
