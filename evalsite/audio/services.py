"""Writes for audio assets: decode, validate, deduplicate by content, store."""

import logging
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from evalsite.audio.decoding import DecodedAudio, decode_audio, encode_wav
from evalsite.audio.models import AudioAsset, audio_upload_path

logger = logging.getLogger(__name__)


def audio_decode_for_ingest(
    source: str | Path | bytes | BinaryIO, *, name: str | None = None
) -> DecodedAudio:
    """Decode and validate with the site's limits; raises ``AudioValidationError`` naming the file."""
    return decode_audio(
        source,
        name=name,
        max_duration_s=settings.EVALSITE_MAX_AUDIO_DURATION_S,
        min_rate=settings.EVALSITE_MIN_SAMPLE_RATE,
        max_rate=settings.EVALSITE_MAX_SAMPLE_RATE,
        max_channels=settings.EVALSITE_MAX_CHANNELS,
    )


def audio_asset_store(*, decoded: DecodedAudio, original_name: str = "") -> tuple[AudioAsset, bool]:
    """Return the asset for this audio, creating it (file + row) only if its content is new.

    The file is written before the row and removed again if the row cannot be created, so a
    failure leaves neither a half-stored file nor a row pointing at nothing.
    """
    existing = AudioAsset.objects.filter(content_hash=decoded.content_hash).first()
    if existing is not None:
        return existing, False

    asset = AudioAsset(
        content_hash=decoded.content_hash,
        sample_rate=decoded.sample_rate,
        channels=decoded.channels,
        frames=decoded.frames,
        duration_s=decoded.duration_s,
        peak=decoded.peak,
        peak_dbfs=decoded.peak_dbfs,
        loudness_lufs=decoded.loudness_lufs,
        original_name=original_name[:512],
    )
    path = audio_upload_path(asset, "")
    data = encode_wav(decoded)
    wrote_file = False
    # Same content → same path and the same number of bytes. A file of another size there was left by a
    # writer killed mid-write (storage writes in place), so it is replaced rather than adopted.
    if default_storage.exists(path) and default_storage.size(path) != len(data):
        default_storage.delete(path)
    if not default_storage.exists(path):
        saved = default_storage.save(path, ContentFile(data))
        if saved != path:
            # A concurrent writer of the same audio got there first; the storage renamed ours. Theirs will do.
            default_storage.delete(saved)
        else:
            wrote_file = True
    asset.file.name = path
    try:
        with transaction.atomic():
            asset.full_clean(validate_unique=False)
            asset.save()
    except IntegrityError:
        # Another process stored the same audio between our check and our insert.
        return AudioAsset.objects.get(content_hash=decoded.content_hash), False
    except Exception:
        if wrote_file:
            default_storage.delete(path)
        raise
    return asset, True


def audio_asset_ingest(
    *, source: str | Path | bytes | BinaryIO, name: str | None = None
) -> tuple[AudioAsset, bool]:
    """Decode, validate and store one file; returns ``(asset, created)``."""
    label = name if name is not None else (str(source) if isinstance(source, (str, Path)) else "")
    decoded = audio_decode_for_ingest(source, name=label or None)
    return audio_asset_store(decoded=decoded, original_name=Path(label).name if label else "")
