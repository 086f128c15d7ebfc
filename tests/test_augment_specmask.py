"""Tests for wavemel.augment's log-mel masking: exact bands, widths, fill, randomness, eval mode."""

from __future__ import annotations

import pytest
import torch

from wavemel.augment import MaskBands, SpecMask, mask_spectrogram


def _spec(batch: int, n_freq: int = 16, n_frames: int = 20, seed: int = 0) -> torch.Tensor:
    """Random log-mel-like values (dB around -40): no entry equals its example's mean."""
    generator = torch.Generator().manual_seed(seed)
    return -40.0 + 10.0 * torch.randn(batch, 1, n_freq, n_frames, generator=generator)


def _bands(*rows: tuple[int, int, int, int]) -> MaskBands:
    """One (freq_start, freq_width, time_start, time_width) band of each kind per example."""
    columns = torch.tensor(rows, dtype=torch.long).T.unsqueeze(-1)  # 4 x (B, 1)
    return MaskBands(*columns)


def _runs(changed: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, length)`` of each run of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, flag in enumerate([*changed.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_mask_spectrogram_exact():
    spec = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    # Example 0: bins 1-2, no frames; example 1: no bins, frames 2-3.
    out = mask_spectrogram(spec, _bands((1, 2, 0, 0), (3, 0, 2, 2)), torch.tensor([100.0, -1.0]))
    expected = spec.clone()
    expected[0, 0, 1:3, :] = 100.0
    expected[1, 0, :, 2:4] = -1.0
    assert torch.equal(out, expected)


def test_mask_spectrogram_with_no_bands_is_the_input():
    spec = _spec(3)
    empty = torch.zeros(3, 0, dtype=torch.long)
    assert torch.equal(
        mask_spectrogram(spec, MaskBands(empty, empty, empty, empty), spec[:, 0, 0, 0]), spec
    )


def test_frequency_masks_are_one_contiguous_band_of_bins_of_width_up_to_the_maximum():
    spec = _spec(400)
    masking = SpecMask(freq_masks=1, freq_width=5, generator=torch.Generator().manual_seed(0))
    changed = masking(spec) != spec  # (B, 1, F, T)
    # Whole bins change (every frame of a masked bin, none of an unmasked one) ...
    per_bin = changed[:, 0].any(dim=2)
    assert torch.equal(changed[:, 0].all(dim=2), per_bin)
    widths = []
    for bins in per_bin:
        runs = _runs(bins)
        assert len(runs) <= 1  # ... in one contiguous band
        widths.append(runs[0][1] if runs else 0)
    # ... whose width takes every value of [0, 5] and no other.
    assert set(widths) == set(range(6))


def test_time_masks_are_contiguous_frames_up_to_the_fraction_of_the_input():
    spec = _spec(400, n_frames=20)
    masking = SpecMask(time_masks=1, time_width=0.25, generator=torch.Generator().manual_seed(1))
    assert masking.max_frames(20) == 5
    changed = masking(spec) != spec
    per_frame = changed[:, 0].any(dim=1)
    assert torch.equal(changed[:, 0].all(dim=1), per_frame)
    widths = []
    for frames in per_frame:
        runs = _runs(frames)
        assert len(runs) <= 1
        widths.append(runs[0][1] if runs else 0)
    assert set(widths) == set(range(6))
    # Bands reach both ends of the input: starts are drawn among all positions that fit.
    runs = [_runs(frames)[0] for frames in per_frame if frames.any()]
    assert min(start for start, _ in runs) == 0
    assert max(start + length for start, length in runs) == 20


def test_widths_are_capped_at_the_input():
    spec = _spec(50, n_freq=4, n_frames=6)
    masking = SpecMask(2, 100, 2, 1.0, generator=torch.Generator().manual_seed(2))
    bands = masking.draw(50, 4, 6)
    assert int(bands.freq_width.max()) <= 4 and int(bands.time_width.max()) <= 6
    assert bool(((bands.freq_start + bands.freq_width) <= 4).all())
    assert bool(((bands.time_start + bands.time_width) <= 6).all())
    assert masking(spec).shape == spec.shape


def test_fill_is_each_examples_mean_log_mel_before_masking():
    spec = _spec(8)
    spec[4:] += 30.0  # louder examples: their own mean, not the batch's
    out = SpecMask(2, 6, 2, 0.3, generator=torch.Generator().manual_seed(3))(spec)
    means = spec.mean(dim=(1, 2, 3))
    masked = 0
    for b in range(8):
        changed = out[b] != spec[b]  # (every width may be 0: then nothing is)
        masked += bool(changed.any())
        torch.testing.assert_close(out[b][changed], means[b].expand(int(changed.sum())))
    assert masked >= 6


def test_examples_get_their_own_masks():
    spec = _spec(1).expand(16, -1, -1, -1).clone()  # 16 identical examples
    out = SpecMask(2, 6, 2, 0.3, generator=torch.Generator().manual_seed(4))(spec)
    patterns = {tuple((out[b] != spec[b]).flatten().tolist()) for b in range(16)}
    assert len(patterns) >= 12


def test_eval_mode_and_no_masks_return_the_input_unchanged():
    spec = _spec(4)
    masking = SpecMask(2, 6, 2, 0.3).eval()
    assert masking(spec) is spec
    assert SpecMask(0, 6, 0, 0.3)(spec) is spec
    masking.train()
    assert not torch.equal(masking(spec), spec)


def test_reproducible_with_a_seeded_generator_or_the_global_seed():
    spec = _spec(8)

    def masked(seed: int, *, global_seed: bool = False) -> torch.Tensor:
        if global_seed:
            torch.manual_seed(seed)
            return SpecMask(2, 6, 2, 0.3)(spec)
        return SpecMask(2, 6, 2, 0.3, generator=torch.Generator().manual_seed(seed))(spec)

    assert torch.equal(masked(5), masked(5))
    assert not torch.equal(masked(5), masked(6))
    assert torch.equal(masked(5, global_seed=True), masked(5, global_seed=True))
    assert not torch.equal(masked(5, global_seed=True), masked(6, global_seed=True))


def test_dtype_and_memory_format_are_kept():
    spec = _spec(4).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = SpecMask(1, 4, 1, 0.2, generator=torch.Generator().manual_seed(7))(spec)
    assert out.dtype == torch.bfloat16 and out.shape == spec.shape


@pytest.mark.parametrize(
    "build",
    [
        lambda: SpecMask(freq_masks=-1),
        lambda: SpecMask(freq_masks=1.5),
        lambda: SpecMask(freq_width=-2),
        lambda: SpecMask(time_masks=True),
        lambda: SpecMask(time_width=1.5),
        lambda: SpecMask(time_width=float("nan")),
    ],
)
def test_invalid_parameters_raise(build):
    with pytest.raises(ValueError):
        build()


def test_a_waveform_batch_is_refused():
    with pytest.raises(ValueError, match="spectrogram batch"):
        SpecMask(1, 4, 1, 0.2)(torch.zeros(2, 100))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_a_cpu_generator():
    spec = _spec(8)
    cpu = SpecMask(2, 6, 2, 0.3, generator=torch.Generator().manual_seed(8))(spec)
    cuda = SpecMask(2, 6, 2, 0.3, generator=torch.Generator().manual_seed(8))(spec.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu)
