"""PyTorch vocoders, tokenizers and generators for evalsite, plus checkpoint loading.

Pure library: no Django, Celery or evalsite imports, no network access, no weight downloads.

Example:
    >>> import models
    >>> vocoder = models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")).eval()
    >>> path = models.save_checkpoint(vocoder, "/tmp/tiny.pt")  # doctest: +SKIP
    >>> models.load(path).copy_synthesis(wav)  # doctest: +SKIP
"""

from models.aar import AARConfig, AARGenerator
from models.base import AudioModel, Generator, Tokenizer, Vocoder
from models.checkpoint import (
    CHECKPOINT_FAMILY_NOT_REGISTERED,
    config_from_checkpoint,
    extract_state_dict,
    load,
    load_state_dict_strict,
    normalize_state_dict_keys,
    save_checkpoint,
)
from models.errors import CheckpointNotFoundError, ModelLoadError
from models.evagan import EVAGANConfig, EVAGANVocoder
from models.hifigan import HiFiGANConfig, HiFiGANVocoder
from models.mel import MelConfig, MelFrontEnd, mel_filterbank
from models.registry import (
    BUILTIN_FAMILIES,
    ENTRY_POINT_GROUP,
    FAMILY_NOT_ALLOWED,
    available_families,
    build_model,
    is_registered_family,
    resolve_family,
)
from models.sat import SATConfig, SATTokenizer

__all__ = [
    "AARConfig",
    "AARGenerator",
    "AudioModel",
    "BUILTIN_FAMILIES",
    "CHECKPOINT_FAMILY_NOT_REGISTERED",
    "CheckpointNotFoundError",
    "ENTRY_POINT_GROUP",
    "FAMILY_NOT_ALLOWED",
    "EVAGANConfig",
    "EVAGANVocoder",
    "Generator",
    "HiFiGANConfig",
    "HiFiGANVocoder",
    "MelConfig",
    "MelFrontEnd",
    "ModelLoadError",
    "SATConfig",
    "SATTokenizer",
    "Tokenizer",
    "Vocoder",
    "available_families",
    "build_model",
    "config_from_checkpoint",
    "extract_state_dict",
    "is_registered_family",
    "load",
    "load_state_dict_strict",
    "mel_filterbank",
    "normalize_state_dict_keys",
    "resolve_family",
    "save_checkpoint",
]
