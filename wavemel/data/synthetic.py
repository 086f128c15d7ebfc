"""The built-in sound-event dataset: procedurally made clips in the folder-per-class layout.

``generate(root)`` writes ``root/<class>/<class>_<nnnn>.wav`` (mono 16-bit PCM) for the classes in
:data:`SYNTHETIC_CLASSES`. Every clip draws its own parameters (pitch, timbre, envelope, duration,
onset, gain, background noise and its SNR) from a NumPy generator seeded by the dataset seed, the
class name and the clip number, so the same settings give byte-identical files on any machine and
adding clips never changes the existing ones. Within-class variety is real (pitch spans more than
three octaves, durations 0.4-4 s, gains 30 dB) while the classes stay separable by what makes them
different: spectral shape, modulation and temporal envelope. It is the embedded default data set
of ``wavemel quickstart`` and of the tests that need no external data.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import wave
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wavemel.errors import DataError

__all__ = [
    "SYNTHETIC_CLASSES",
    "CLASS_DESCRIPTIONS",
    "generate",
    "is_synthetic_dataset",
    "synthesize_clip",
]

#: Bumped whenever the generator's output changes, so that an old folder is not reused.
GENERATOR_VERSION = 1

# Hidden so that dataset adapters walking ``root`` never mistake it for a class folder or clip.
_MARKER = ".wavemel-synthetic.json"

CLASS_DESCRIPTIONS: dict[str, str] = {
    "sine_tone": "pure tone, 200-2000 Hz, ADSR envelope",
    "harmonic_tone": "harmonic tone, 80-500 Hz fundamental, sawtooth/square-like partials, ADSR",
    "noise_burst": "band-limited noise burst (random centre and width), sharp attack, decay",
    "chirp": "exponential sweep over 1.5-3.5 octaves, up or down",
    "click_train": "periodic clicks (4-40 per second) of short damped resonances",
    "ringing": "struck bell: inharmonic modal partials with exponential decays",
    "am_tone": "tone with tremolo (3-14 Hz amplitude modulation, deep)",
    "fm_tone": "warble: tone with vibrato (4-9 Hz, 6-15 % frequency deviation)",
}

#: Class names, in a fixed order (also the sub-folder names).
SYNTHETIC_CLASSES: tuple[str, ...] = tuple(CLASS_DESCRIPTIONS)


# --- building blocks -------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _adsr(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Attack-decay-sustain-release envelope of ``n`` samples with random segment times."""
    attack = rng.uniform(0.005, 0.08)
    decay = rng.uniform(0.03, 0.2)
    release = rng.uniform(0.05, 0.4)
    sustain = rng.uniform(0.4, 0.9)
    seconds = n / sample_rate
    # Short events keep the envelope's shape by shrinking all segments together.
    scale = min(1.0, 0.9 * seconds / (attack + decay + release))
    a, d, r = (int(round(s * scale * sample_rate)) for s in (attack, decay, release))
    knots = [0, a, a + d, max(a + d, n - 1 - r), n - 1]
    return np.interp(np.arange(n), knots, [0.0, 1.0, sustain, sustain, 0.0])


def _fades(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Raised-cosine fade in and out (10-50 ms) so that no event starts with a click."""
    fade = min(int(rng.uniform(0.01, 0.05) * sample_rate), n // 4)
    env = np.ones(n)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        env[:fade] = ramp
        env[n - fade :] = ramp[::-1]
    return env


def _coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _time(n: int, sample_rate: int) -> np.ndarray:
    return np.arange(n) / sample_rate


# --- one function per class: (samples, sample_rate, rng) -> event waveform --------------------


def _sine_tone(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    freq = min(_log_uniform(rng, 200, 2000), 0.4 * sr)
    return np.sin(2 * np.pi * freq * _time(n, sr) + rng.uniform(0, 2 * np.pi)) * _adsr(n, sr, rng)


def _harmonic_tone(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    f0 = _log_uniform(rng, 80, 500)
    odd_only = rng.random() < 0.4  # square-like (clarinet) rather than sawtooth-like (brass)
    slope = rng.uniform(0.8, 1.4)  # spectral tilt: brighter or duller timbres
    t = _time(n, sr)
    out = np.zeros(n)
    max_partial = min(30, int(0.45 * sr / f0))
    for k in range(1, max_partial + 1):
        if odd_only and k % 2 == 0:
            continue
        amp = rng.uniform(0.7, 1.3) / k**slope
        out += amp * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return out * _adsr(n, sr, rng)


def _noise_burst(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    centre = min(_log_uniform(rng, 300, 5000), 0.35 * sr)
    width_octaves = rng.uniform(0.3, 2.0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    # Gaussian band on a log-frequency axis: the same shape at every centre frequency.
    distance = np.log2(np.maximum(freqs, 1.0) / centre) / width_octaves
    noise = np.fft.irfft(spectrum * np.exp(-0.5 * (2 * distance) ** 2), n)
    attack = max(int(rng.uniform(0.002, 0.02) * sr), 1)
    tau = rng.uniform(0.15, 0.6) * n / sr
    env = np.exp(-_time(n, sr) / tau)
    env[:attack] *= np.linspace(0.0, 1.0, attack)
    return noise * env


def _chirp(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    low = _log_uniform(rng, 150, 800)
    high = min(low * 2 ** rng.uniform(1.5, 3.5), 0.4 * sr)
    start, end = (low, high) if rng.random() < 0.5 else (high, low)
    duration = n / sr
    ratio = end / start
    # Exponential sweep: instantaneous frequency start * ratio**(t / duration).
    t = _time(n, sr)
    phase = 2 * np.pi * start * duration / np.log(ratio) * (ratio ** (t / duration) - 1)
    out = np.sin(phase) + rng.uniform(0, 0.4) * np.sin(2 * phase)
    return out * _fades(n, sr, rng)


def _click_train(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    rate = rng.uniform(4, 40)
    jitter = rng.uniform(0, 0.1)
    resonance = min(_log_uniform(rng, 1000, 6000), 0.4 * sr)
    kernel_len = max(int(0.01 * sr), 8)
    tk = _time(kernel_len, sr)
    kernel = np.sin(2 * np.pi * resonance * tk) * np.exp(-tk / rng.uniform(0.001, 0.004))
    out = np.zeros(n + kernel_len)
    period = sr / rate
    position = rng.uniform(0, period)
    while position < n:
        start = int(position)
        out[start : start + kernel_len] += rng.uniform(0.6, 1.0) * kernel
        position += period * (1 + jitter * rng.standard_normal())
    return out[:n]


# Partial ratios of a struck bell-like bar: clearly inharmonic, so no pitch class shares them.
_BELL_RATIOS = np.array([1.0, 2.32, 4.25, 6.63, 9.38, 12.6])


def _ringing(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    f0 = _log_uniform(rng, 200, 1200)
    t = _time(n, sr)
    base_decay = _log_uniform(rng, 0.2, 1.5)
    out = np.zeros(n)
    for i, ratio in enumerate(_BELL_RATIOS[: rng.integers(4, len(_BELL_RATIOS) + 1)]):
        freq = f0 * ratio * rng.uniform(0.96, 1.04)
        if freq >= 0.45 * sr:
            break
        # Higher modes die out faster, as in real struck objects.
        decay = base_decay / np.sqrt(ratio)
        amp = rng.uniform(0.3, 1.0) / (1 + 0.3 * i)
        out += amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / decay)
    attack = max(int(0.001 * sr), 1)
    out[:attack] *= np.linspace(0.0, 1.0, attack)
    return out


def _am_tone(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    freq = min(_log_uniform(rng, 200, 2000), 0.4 * sr)
    rate = rng.uniform(3, 14)
    depth = rng.uniform(0.6, 1.0)
    t = _time(n, sr)
    tremolo = 1 - depth * (0.5 - 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    tone = np.sin(2 * np.pi * freq * t) + rng.uniform(0, 0.3) * np.sin(4 * np.pi * freq * t)
    return tone * tremolo * _adsr(n, sr, rng)


def _fm_tone(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    freq = min(_log_uniform(rng, 250, 1500), 0.35 * sr)
    rate = rng.uniform(4, 9)
    deviation = rng.uniform(0.06, 0.15) * freq
    t = _time(n, sr)
    # Instantaneous frequency freq + deviation * sin(2 pi rate t), integrated to a phase.
    phase = 2 * np.pi * freq * t - deviation / rate * np.cos(2 * np.pi * rate * t)
    tone = np.sin(phase) + rng.uniform(0, 0.3) * np.sin(2 * phase)
    return tone * _adsr(n, sr, rng)


_EVENTS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "sine_tone": _sine_tone,
    "harmonic_tone": _harmonic_tone,
    "noise_burst": _noise_burst,
    "chirp": _chirp,
    "click_train": _click_train,
    "ringing": _ringing,
    "am_tone": _am_tone,
    "fm_tone": _fm_tone,
}
assert tuple(_EVENTS) == SYNTHETIC_CLASSES


# --- clips and files --------------------------------------------------------------------------


def _clip_rng(seed: int, label: str, number: int) -> np.random.Generator:
    # Seeded by the class *name* (crc32 is stable across runs, unlike hash()), so adding a class
    # or more clips never changes the clips that already exist.
    return np.random.default_rng([seed, zlib.crc32(label.encode()), number])


def synthesize_clip(
    label: str,
    number: int,
    *,
    seed: int = 0,
    sample_rate: int = 16000,
    min_seconds: float = 0.4,
    max_seconds: float = 4.0,
) -> np.ndarray:
    """Make one clip of the built-in dataset in memory.

    Args:
        label: One of :data:`SYNTHETIC_CLASSES`.
        number: Clip number within the class; with ``seed`` it fixes every random choice.
        seed: Dataset seed.
        sample_rate: Output rate in Hz.
        min_seconds: Shortest clip duration.
        max_seconds: Longest clip duration.

    Returns:
        ``(T,)`` float32 in [-1, 1], already quantised to 16-bit steps (exactly what the WAV file
        holds), with ``T / sample_rate`` in ``[min_seconds, max_seconds]``.
    """
    if label not in _EVENTS:
        raise ValueError(f"unknown synthetic class {label!r}; known: {', '.join(_EVENTS)}")
    rng = _clip_rng(seed, label, number)
    n = max(int(round(rng.uniform(min_seconds, max_seconds) * sample_rate)), 1)
    # The event fills 50-100 % of the clip at a random onset: clips have leading and trailing
    # background, as field recordings do.
    event_len = max(int(n * rng.uniform(0.5, 1.0)), 1)
    onset = int(rng.integers(0, n - event_len + 1))
    event = _EVENTS[label](event_len, sample_rate, rng)
    event_power = np.mean(event**2) + 1e-12

    snr_db = rng.uniform(10, 40)
    colour = rng.choice([0.0, 1.0, 2.0])  # white, pink or brown background
    clip = _coloured_noise(n, rng, colour) * np.sqrt(event_power / 10 ** (snr_db / 10))
    clip[onset : onset + event_len] += event

    peak_db = rng.uniform(-30.0, -1.0)  # stays below full scale: no clipping anywhere
    clip *= 10 ** (peak_db / 20) / (np.max(np.abs(clip)) + 1e-12)
    return (np.round(clip * 32767) / 32767).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    # The standard library's writer has no timestamps or tool names in the header: the bytes
    # depend on the samples only, which is what "same seed -> identical files" needs.
    pcm = np.round(samples.astype(np.float64) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())


def _settings(seed: int, clips_per_class: int, sample_rate: int, lo: float, hi: float) -> dict:
    return {
        "generator": "wavemel.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "clips_per_class": clips_per_class,
        "sample_rate": sample_rate,
        "min_seconds": lo,
        "max_seconds": hi,
        "classes": list(SYNTHETIC_CLASSES),
    }


def _file_names(clips_per_class: int) -> list[str]:
    return [
        f"{label}/{label}_{number:04d}.wav"
        for label in SYNTHETIC_CLASSES
        for number in range(clips_per_class)
    ]


def _readme(settings: dict) -> str:
    lines = [
        "wavemel built-in sound-event dataset (synthetic)",
        "",
        "Procedurally generated by wavemel.data.synthetic.generate(); not recorded audio.",
        "Layout: <class>/<class>_<nnnn>.wav, mono 16-bit PCM WAV (folder-per-class).",
        f"Seed {settings['seed']}, {settings['clips_per_class']} clips per class, "
        f"{settings['sample_rate']} Hz, durations {settings['min_seconds']}-"
        f"{settings['max_seconds']} s.",
        "Each clip: one event at a random onset filling 50-100 % of the clip, background noise",
        "(white, pink or brown) at 10-40 dB SNR, peak level -30..-1 dBFS.",
        "The same settings always give byte-identical files.",
        "",
        "Classes:",
    ]
    lines += [f"  {label:<14} {CLASS_DESCRIPTIONS[label]}" for label in SYNTHETIC_CLASSES]
    return "\n".join(lines) + "\n"


def is_synthetic_dataset(root: str | os.PathLike) -> bool:
    """Whether ``root`` was written by :func:`generate` (with any settings)."""
    return (Path(root) / _MARKER).is_file()


def _matches(root: Path, settings: dict) -> bool:
    """Whether ``root`` is a complete synthetic dataset made with exactly ``settings``."""
    try:
        found = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    if found != settings:
        return False
    return all((root / name).is_file() for name in _file_names(settings["clips_per_class"]))


def generate(
    root: str | os.PathLike,
    *,
    clips_per_class: int = 40,
    seed: int = 0,
    sample_rate: int = 16000,
    min_seconds: float = 0.4,
    max_seconds: float = 4.0,
) -> Path:
    """Write the built-in dataset to ``root`` (folder-per-class layout), or reuse it.

    The files are written to a temporary sibling folder that is renamed to ``root`` at the end,
    so an interrupted run never leaves a half-written dataset behind.

    Args:
        root: Destination folder. It must be absent, empty, or a previous synthetic dataset made
            with the same settings (then it is reused as is, file times untouched, so caches
            built on it stay valid).
        clips_per_class: Clips per class.
        seed: Seed of every random choice; the same settings give byte-identical files.
        sample_rate: Sample rate of the WAV files in Hz (at least 8000).
        min_seconds: Shortest clip duration in seconds.
        max_seconds: Longest clip duration in seconds.

    Returns:
        ``root`` as a :class:`~pathlib.Path`, holding ``<class>/<class>_<nnnn>.wav`` for each
        class in :data:`SYNTHETIC_CLASSES`, a ``README.txt`` and a hidden settings file.

    Raises:
        DataError: ``root`` is a file, or a non-empty folder that is not a synthetic dataset
            made with these settings.
        ValueError: A setting is out of range.
    """
    if clips_per_class < 1:
        raise ValueError(f"clips_per_class must be at least 1, got {clips_per_class}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")

    root = Path(root)
    settings = _settings(seed, clips_per_class, sample_rate, float(min_seconds), float(max_seconds))
    if root.exists():
        if not root.is_dir():
            raise DataError(f"{root}: exists and is not a folder")
        if any(root.iterdir()):
            if _matches(root, settings):
                return root
            raise DataError(
                f"{root}: folder is not empty and is not a synthetic dataset made with these "
                "settings; choose another folder or remove it"
            )

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        for label in SYNTHETIC_CLASSES:
            (staging / label).mkdir(parents=True)
            for number in range(clips_per_class):
                samples = synthesize_clip(
                    label,
                    number,
                    seed=seed,
                    sample_rate=sample_rate,
                    min_seconds=min_seconds,
                    max_seconds=max_seconds,
                )
                _write_wav(staging / label / f"{label}_{number:04d}.wav", samples, sample_rate)
        (staging / "README.txt").write_text(_readme(settings))
        (staging / _MARKER).write_text(json.dumps(settings, indent=2) + "\n")
        if root.exists():
            root.rmdir()  # empty (checked above); rename cannot replace a folder on every OS
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root
