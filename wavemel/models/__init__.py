"""The poster's networks behind one registry: cnn-audio, cnn-spec and cnn-comb (and cnn14).

Every model takes a waveform batch ``(B, T)`` at its ``sample_rate`` and returns logits
``(B, num_classes)``; ``features(x)`` gives the embedding ``(B, embedding_dim)`` before the
classifier, and ``config_dict()`` is enough to rebuild it with :func:`model_from_config`.
"""

from wavemel.models._registry import (
    create_model,
    list_models,
    list_sizes,
    model_from_config,
    register_model,
)
from wavemel.models.cnn14 import Cnn14, Cnn14Config
from wavemel.models.cnn_audio import CnnAudio, CnnAudioConfig
from wavemel.models.cnn_comb import CnnComb, CnnCombConfig
from wavemel.models.cnn_spec import CnnSpec, CnnSpecConfig

__all__ = [
    "Cnn14",
    "Cnn14Config",
    "CnnAudio",
    "CnnAudioConfig",
    "CnnComb",
    "CnnCombConfig",
    "CnnSpec",
    "CnnSpecConfig",
    "create_model",
    "list_models",
    "list_sizes",
    "model_from_config",
    "register_model",
]
