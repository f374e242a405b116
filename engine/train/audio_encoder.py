"""Recipe: pretrain the DiT's conv audio encoder on SynthTalk's mouth tracks (audio only, nothing rendered).

data → trunk → token map → save (`python -m engine.train.audio_encoder --out FILE`):

  * data — SynthTalk's speech (espeak-ng voices and grammar sentences of each split, with pauses; with
    `--sources`, also flite's voices and the recorded asterisk prompts, in SynthTalk's shares) and the mouth
    track the renderer would draw for it (engine.data.visemes): opening, width and rounding per video frame. No
    frames are rendered, so thousands of clips take a minute on two cores. The eval clips come from the
    held-out split (voices, sentences and prompts never trained on), one set per source of `--eval-sources`.
  * trunk — the ConvAudioEncoder's convolutions, with a linear read-out per video frame, learn to predict the
    three mouth curves (standardised) from each latent frame's log-mel window: what the DiT needs to know of
    the audio, learnt from a direct signal instead of through the diffusion loss.
  * token map (with `--match-dit D`) — the encoder's `token` linear, `position` and LayerNorm are fitted, trunk frozen, to
    reproduce the audio tokens of an existing DiT's audio projection, so a trained DiT can switch encoder
    (`talkstream train ... --audio-encoder FILE`) and start from what it did before.

The file holds the encoder's weights (`trunk.*`, `token.*`, `position`, `norm.*`, as in `DiT.audio_proj`), and its metadata
the config and the held-out figures: Pearson r per clip of each predicted mouth curve, averaged over clips
(`espeak_r_open`, …, `real_r_open`, …).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from engine.audio.features import AudioFeatureConfig, latent_audio_windows, log_mel
from engine.checkpoints.io import save_state
from engine.errors import ConfigError
from engine.models.dit import AudioProjection, ConvAudioEncoder, dit_config

CURVES = ("open", "width", "round")


@dataclass(frozen=True)
class AudioEncoderConfig:
    out: str
    clips: int = 3000  # training clips of 4 s (SynthTalk's train split)
    eval_clips: int = 400  # held-out clips (the eval split: voices and sentences never trained on)
    seconds: float = 4.0
    sources: str = "espeak"  # training speech, comma-separated among engine.data.synth.SOURCES
    eval_sources: str = "espeak"  # one held-out set per source
    seed: int = 0
    eval_seed: int = 11
    channels: int = 128
    audio_dim: int = 128  # the DiT preset's audio_dim
    epochs: int = 10
    batch: int = 256
    lr: float = 1e-3
    match_dit: str = ""  # fit the token map to this DiT's audio tokens
    match_epochs: int = 6
    encoder: str = "conv"  # "mlp": the flattened-window projection of the DiT's "mlp" encoder, trained alike to compare
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("name the output file: --out FILE.safetensors")
        if self.encoder not in ("conv", "mlp"):
            raise ConfigError(f"encoder must be conv or mlp, got {self.encoder!r}")
        if self.encoder == "mlp" and self.match_dit:
            raise ConfigError("--match-dit fits the conv encoder's token map; drop it with --encoder mlp")
        from engine.data.synth import SOURCES

        unknown = set(self.sources.split(",") + self.eval_sources.split(",")) - set(SOURCES)
        if unknown:
            raise ConfigError(f"unknown speech sources {sorted(unknown)}; choose among {list(SOURCES)}")
        if min(self.clips, self.eval_clips, self.epochs) < 1:
            raise ConfigError("clips, eval_clips and epochs must each be at least 1")


# ----------------------------------------------------------------------------- data: speech and mouth tracks

def _speech_and_track(job: tuple[int, int, str, float, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    from engine.data.espeak import Espeak
    from engine.data.synth import FPS, pick_source, speak
    from engine.data.visemes import mouth_track

    i, seed, split, seconds, sources = job
    rng = np.random.default_rng([seed, i])
    audio, phonemes, _, _, phoneset = speak(Espeak(), rng, seconds, split, pick_source(rng, sources))
    track = mouth_track(phonemes, seconds, FPS, phoneset=phoneset)
    return audio.astype(np.float32), np.stack([getattr(track, c) for c in CURVES], 1).astype(np.float32)


def speech_tracks(clips: int, seed: int, split: str, seconds: float, workers: int,
                  sources: tuple[str, ...] = ("espeak",)) -> tuple[np.ndarray, np.ndarray]:
    """(audio [N, samples] at 16 kHz, mouth curves [N, frames, 3]) of `clips` SynthTalk utterances of `split`,
    each from one of `sources` (SynthTalk's shares)."""
    jobs = [(i, seed, split, seconds, tuple(sources)) for i in range(clips)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_speech_and_track, jobs, chunksize=8)
    else:
        rows = [_speech_and_track(j) for j in jobs]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def windows_and_targets(audio: np.ndarray, curves: np.ndarray, cfg: AudioFeatureConfig = AudioFeatureConfig()):
    """Latent frames 1… of each clip: windows [N·L, window, n_mels] and their video frames' curves [N·L, k, 3]."""
    k = cfg.video_frames_per_latent
    latents = 1 + (curves.shape[1] - 1) // k
    windows = torch.stack([latent_audio_windows(log_mel(a, cfg), latents, cfg)[1:] for a in audio])
    targets = torch.from_numpy(curves[:, 1:1 + (latents - 1) * k]).unflatten(1, (latents - 1, k))
    return windows.flatten(0, 1), targets.flatten(0, 1)


# ----------------------------------------------------------------------------- training

def pearson_per_clip(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean over clips of Pearson r along time; pred/truth [N, T]. Flat clips (no speech) are skipped."""
    p, t = pred - pred.mean(1, keepdim=True), truth - truth.mean(1, keepdim=True)
    r = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)).clamp(min=1e-8)
    return r[t.norm(dim=1) > 1e-6].mean()


def _batches(n: int, batch: int, g: torch.Generator):
    order = torch.randperm(n, generator=g)
    for i in range(0, n, batch):
        yield order[i:i + batch]


def front(encoder: ConvAudioEncoder | AudioProjection, windows: torch.Tensor) -> torch.Tensor:
    """What the read-out sees of windows [N, window, n_mels]: the conv trunk's features per video frame, or the
    MLP's tokens (it has no other per-frame features), [N, k, ·]."""
    if isinstance(encoder, ConvAudioEncoder):
        return encoder.features(windows[:, None])[:, 0]
    return encoder(windows[:, None])[:, 0]


def train_trunk(encoder: ConvAudioEncoder | AudioProjection, windows: torch.Tensor, targets: torch.Tensor,
                cfg: AudioEncoderConfig, g: torch.Generator) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """Trunk (or the whole MLP) + a linear read-out of the three curves (standardised). Returns (read-out, mean,
    std)."""
    mean, std = targets.mean((0, 1)), targets.std((0, 1)).clamp(min=1e-3)
    conv = isinstance(encoder, ConvAudioEncoder)
    readout = nn.Linear(encoder.token.in_features if conv else encoder.norm.normalized_shape[0], len(CURVES))
    params = list((encoder.trunk if conv else encoder).parameters()) + list(readout.parameters())
    opt = torch.optim.AdamW(params, cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * -(-len(windows) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.05)
    for epoch in range(cfg.epochs):
        t0, total = time.perf_counter(), 0.0
        for idx in _batches(len(windows), cfg.batch, g):
            loss = ((readout(front(encoder, windows[idx])) - (targets[idx] - mean) / std) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(json.dumps({"stage": "trunk", "epoch": epoch, "loss": round(total / len(windows), 5),
                          "s": round(time.perf_counter() - t0, 1)}), flush=True)
    return readout, mean, std


def fit_token_map(encoder: ConvAudioEncoder, windows: torch.Tensor, tokens: torch.Tensor, cfg: AudioEncoderConfig,
                  g: torch.Generator) -> tuple[float, float]:
    """Trunk frozen: `token` + `norm` learn to reproduce `tokens` [N, k, audio_dim]. Returns the R² before and
    after."""
    with torch.no_grad():
        feats = torch.cat([encoder.features(windows[i:i + 4096][:, None])[:, 0] for i in range(0, len(windows), 4096)])

    def r2() -> float:
        with torch.no_grad():
            return float(1 - ((encoder.norm(encoder.token(feats) + encoder.position) - tokens) ** 2).mean()
                         / tokens.var(0).mean())

    start = r2()
    params = list(encoder.token.parameters()) + [encoder.position] + list(encoder.norm.parameters())
    opt = torch.optim.AdamW(params, cfg.lr, weight_decay=0.0)
    for epoch in range(cfg.match_epochs):
        for idx in _batches(len(feats), cfg.batch, g):
            loss = ((encoder.norm(encoder.token(feats[idx]) + encoder.position) - tokens[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    end = r2()
    print(json.dumps({"stage": "token-map", "r2_start": round(start, 4), "r2": round(end, 4)}), flush=True)
    return start, end


@torch.no_grad()
def evaluate(encoder: ConvAudioEncoder | AudioProjection, readout: nn.Linear, mean: torch.Tensor, std: torch.Tensor,
             windows: torch.Tensor, targets: torch.Tensor, clips: int, source: str) -> dict[str, float]:
    """Held-out Pearson r per curve (per clip along time, averaged over clips), named after the source."""
    pred = readout(front(encoder, windows)) * std + mean  # [N·L, k, 3]
    pred, truth = pred.reshape(clips, -1, len(CURVES)), targets.reshape(clips, -1, len(CURVES))
    return {f"{source}_r_{c}": round(float(pearson_per_clip(pred[..., i], truth[..., i])), 4) for i, c in enumerate(CURVES)}


def train(cfg: AudioEncoderConfig) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train_w, train_y = windows_and_targets(*speech_tracks(cfg.clips, cfg.seed, "train", cfg.seconds, cfg.workers,
                                                          tuple(cfg.sources.split(","))))
    held_out = {source: windows_and_targets(*speech_tracks(cfg.eval_clips, cfg.eval_seed, "eval", cfg.seconds,
                                                           cfg.workers, (source,)))
                for source in cfg.eval_sources.split(",")}
    print(json.dumps({"stage": "data", "train_windows": len(train_w), "s": round(time.perf_counter() - t0, 1)}),
          flush=True)
    audio = AudioFeatureConfig()
    if cfg.encoder == "conv":
        encoder = ConvAudioEncoder(audio, cfg.channels, audio.video_frames_per_latent, cfg.audio_dim)
    else:  # the demo preset's MLP, as wide as the DiT has it
        demo = dit_config("demo")
        encoder = AudioProjection(demo.audio_in_dim, demo.audio_hidden, audio.video_frames_per_latent, cfg.audio_dim)
    readout, mean, std = train_trunk(encoder, train_w, train_y, cfg, g)
    metrics = {}
    for source, (eval_w, eval_y) in held_out.items():
        metrics |= evaluate(encoder, readout, mean, std, eval_w, eval_y, cfg.eval_clips, source)
    if cfg.match_dit:
        from engine.checkpoints.wan import load_dit

        dit = load_dit(cfg.match_dit).eval()
        if dit.cfg.audio_dim != cfg.audio_dim:
            raise ConfigError(f"{cfg.match_dit} has audio_dim {dit.cfg.audio_dim}; pass --audio-dim {dit.cfg.audio_dim}")
        with torch.no_grad():
            tokens = torch.cat([dit.encode_audio(train_w[i:i + 4096][:, None])[:, 0]
                                for i in range(0, len(train_w), 4096)])
        start, end = fit_token_map(encoder, train_w, tokens, cfg, g)
        metrics["token_r2_start"], metrics["token_r2"] = round(start, 4), round(end, 4)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    state = {k: v for k, v in encoder.state_dict().items()}
    save_state(cfg.out, state, kind="audio-encoder", recipe=json.dumps(asdict(cfg)), metrics=json.dumps(metrics))
    return metrics


def config_from_args(argv: list[str] | None = None) -> AudioEncoderConfig:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(AudioEncoderConfig(out="-")).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=None, required=name == "out")
    args = vars(ap.parse_args(argv))
    return AudioEncoderConfig(**{k: v for k, v in args.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(train(config_from_args(argv))))


if __name__ == "__main__":
    main()
