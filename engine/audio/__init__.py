"""Audio: decoding and resampling through PyAV, and log-mel windows per latent frame."""
from engine.audio.features import AudioFeatureConfig, StreamingAudioFeatures, latent_audio_windows, log_mel
from engine.audio.io import StreamResampler, load_audio

__all__ = ["AudioFeatureConfig", "StreamingAudioFeatures", "latent_audio_windows", "log_mel", "StreamResampler",
           "load_audio"]
