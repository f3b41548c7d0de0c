"""A caller's speech for the voice tests: espeak-ng (Debian's package, installed by ``.ci/run``),
synthesised once per text and rate, as 16-bit mono PCM.

Silero takes espeak-ng's voice for speech (≥0.9 on most 32 ms windows of a sentence, at 8 and
16 kHz), unlike synthetic signals (a sine scores ≤0.13), so the VAD-driven paths really run.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

ESPEAK = "espeak-ng"


@functools.cache
def espeak(text: str, rate: int) -> bytes:
    """``text`` spoken by espeak-ng, resampled to ``rate``, its leading and trailing silence cut, so the
    speech ends where the PCM ends (the benchmark and the tests time "end of speech" from there)."""
    binary = shutil.which(ESPEAK)
    if binary is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (.ci/run does)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([binary, "-w", str(path), text], check=True, capture_output=True, timeout=30)
        with wave.open(str(path)) as wav:
            source_rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    resampled = soxr.resample(samples.astype(np.float32) / 32768.0, source_rate, rate)
    pcm = np.clip(resampled * 32768.0, -32768, 32767).astype(np.int16)
    voiced = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)
    return pcm[voiced[0] : voiced[-1] + 1].tobytes()


def silence(seconds: float, rate: int) -> bytes:
    return bytes(int(rate * seconds) * 2)
