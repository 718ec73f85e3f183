"""Offline, deterministic speech synthesis (eSpeak NG through ctypes): the demo corpus and the spoken
attention checks of listening tests both use it.

The ``espeakng-loader`` wheel ships ``libespeak-ng`` and its voice data, so no system package and
no network are needed. The library is driven with ``AUDIO_OUTPUT_SYNCHRONOUS``: ``espeak_Synth``
hands 22.05 kHz int16 samples to a callback and returns when the utterance is done.

Determinism: libespeak-ng keeps synthesis state in C function-level statics (for example the
pitch-flutter table index in the wave generator) that ``espeak_Terminate`` does not reset, so
the same text synthesised twice in one process gives slightly different samples. Each call
therefore loads a private copy of the library, initialises it, synthesises, and unloads it again
(``dlclose``), which costs a few milliseconds and makes every call start from the same state.
The private copy (not the wheel's file) is loaded so that another user of libespeak-ng in the
same process (a phonemizer, say) neither shares nor disturbs that state. Noise for breathy and
rough variants (``f2``, ``f3`` ...) comes from a generator that ``espeak_Initialize`` seeds with
the wall clock, so each call re-seeds it (``espeak_ng_SetRandSeed(0)``), and the C library's
``rand()``, which the library also calls and which lives outside it, with ``srand(0)``.
A process-wide lock serialises calls, because the copy has a single set of globals.

Voices are named ``<language voice>[+<variant>]``, e.g. ``en-us``, ``en-us+f3``,
``en-gb-x-rp+m3``: the language voice is the lower-cased file name of an eSpeak NG voice
(``available_voices()``), the variant one of ``available_variants()``.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import os
import shutil
import tempfile
import threading

import numpy as np

SAMPLE_RATE = 22050
MIN_RATE_WPM = 80
MAX_RATE_WPM = 450

# espeak_AUDIO_OUTPUT, espeak_POSITION_TYPE, espeak_PARAMETER and Synth flags from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_ENDPAUSE = 0x1000
_EE_OK = 0
_BUFLENGTH_MS = 200

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    """``espeak_VOICE`` from speak_lib.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_lock = threading.Lock()
_private_lib_path: str | None = None
_voice_cache: tuple[tuple[str, ...], tuple[str, ...]] | None = None


def _paths() -> tuple[str, str]:
    """Library and data paths inside the ``espeakng-loader`` wheel."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise RuntimeError(
            "offline speech needs the 'espeakng-loader' package: pip install espeakng-loader"
        ) from exc
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _private_library() -> str:
    """Copy libespeak-ng once per process to a private path (see module docstring). Call under ``_lock``."""
    global _private_lib_path
    if _private_lib_path is None or not os.path.exists(_private_lib_path):
        source, _ = _paths()
        directory = tempfile.mkdtemp(prefix="evalsite-espeak-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        target = os.path.join(directory, "libespeak-ng-evalsite.so")
        shutil.copyfile(source, target)
        _private_lib_path = target
    return _private_lib_path


class _Session:
    """A freshly loaded, initialised libespeak-ng; unloaded again on exit. Use under ``_lock``."""

    def __enter__(self) -> ctypes.CDLL:
        _, data_path = _paths()
        self._lib = ctypes.CDLL(_private_library(), mode=os.RTLD_LOCAL)
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_EspeakVoice)]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFLENGTH_MS, data_path.encode(), 0)
        if rate != SAMPLE_RATE:
            self._unload()
            raise RuntimeError(
                f"espeak_Initialize with data {data_path!r} returned {rate}, expected {SAMPLE_RATE}"
            )
        return lib

    def __exit__(self, *exc_info: object) -> None:
        self._lib.espeak_Terminate()
        self._unload()

    def _unload(self) -> None:
        _ctypes.dlclose(self._lib._handle)
        del self._lib


def _libc() -> ctypes.CDLL:
    """The process's C library (``srand`` lives there, shared with libespeak-ng)."""
    libc = ctypes.CDLL(None)
    libc.srand.argtypes = [ctypes.c_uint]
    libc.srand.restype = None
    return libc


def _list_identifiers(lib: ctypes.CDLL, spec: _EspeakVoice | None) -> list[str]:
    voices = lib.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
    names = []
    i = 0
    while voices[i]:
        names.append(voices[i].contents.identifier.decode("utf-8").rsplit("/", 1)[-1])
        i += 1
    return names


def _voices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    global _voice_cache
    with _lock:
        if _voice_cache is None:
            with _Session() as lib:
                languages = sorted({name.lower() for name in _list_identifiers(lib, None)})
                spec = _EspeakVoice()
                spec.languages = b"variant"
                variants = sorted(set(_list_identifiers(lib, spec)))
            _voice_cache = (tuple(languages), tuple(variants))
        return _voice_cache


def available_voices() -> list[str]:
    """Language voices shipped with the wheel (e.g. ``en-us``); combine with a variant as ``en-us+f3``."""
    return list(_voices()[0])


def available_variants() -> list[str]:
    """Voice variants shipped with the wheel (e.g. ``f3``, ``m3``, ``klatt``), used as ``<voice>+<variant>``."""
    return list(_voices()[1])


def _check_voice(voice: str) -> None:
    languages, variants = _voices()
    base, _, variant = voice.partition("+")
    if base in languages and (not variant or variant in variants):
        return
    raise ValueError(
        f"unknown eSpeak NG voice {voice!r}; use '<voice>' or '<voice>+<variant>' with "
        f"voice one of: {', '.join(languages)}; variant one of: {', '.join(variants)}"
    )


def synthesize(
    text: str, *, voice: str, rate_wpm: int = 160, pitch: int | None = None
) -> tuple[np.ndarray, int]:
    """Speak ``text`` with eSpeak NG; same arguments always give the same samples.

    Returns ``(samples, 22050)``: float32 mono samples in [-1, 1), shape ``(n,)``.
    ``pitch`` is eSpeak's 0-100 base pitch; ``None`` keeps the voice's own.
    """
    if not text.strip():
        raise ValueError("text to synthesise is empty")
    if not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
        raise ValueError(f"rate_wpm must be in [{MIN_RATE_WPM}, {MAX_RATE_WPM}], got {rate_wpm}")
    if pitch is not None and not 0 <= pitch <= 100:
        raise ValueError(f"pitch must be in [0, 100], got {pitch}")
    _check_voice(voice)

    chunks: list[bytes] = []

    @_SynthCallback
    def collect(wav: ctypes.POINTER(ctypes.c_short), n_samples: int, events: int) -> int:
        if wav and n_samples > 0:
            chunks.append(ctypes.string_at(wav, n_samples * 2))
        return 0

    encoded = text.encode("utf-8") + b"\0"
    with _lock, _Session() as lib:
        lib.espeak_ng_SetRandSeed(0)
        _libc().srand(0)
        lib.espeak_SetSynthCallback(collect)
        if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
            raise ValueError(f"eSpeak NG could not load voice {voice!r}")
        lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0)
        if pitch is not None:
            lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        status = lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8 | _ESPEAK_ENDPAUSE, None, None
        )
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for voice {voice!r}")
        lib.espeak_Synchronize()

    pcm = np.frombuffer(b"".join(chunks), dtype="<i2")
    if pcm.size == 0:
        raise RuntimeError(f"eSpeak NG produced no audio for {text!r} with voice {voice!r}")
    return (pcm.astype(np.float32) / np.float32(32768.0)), SAMPLE_RATE
