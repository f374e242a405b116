"""Score a model on held-out SynthTalk clips (voices, sentences and identities never trained on), beside the
ground-truth ceiling and the wrong-audio floor — the figures of the model card.

    python -m engine.eval.heldout --data DIR [--dit D --vae V --tiny T] --clips 16 --out scores.json

For each clip: the portrait is its first frame; the audio is its audio. Rows:
  * ground truth — the clip's own frames (the ceiling of every metric);
  * wrong audio — the clip's frames against another clip's opening curve (the floor: r near 0);
  * ground truth through the VAE — the clip's frames encoded and decoded: what any generator decoding
    with this VAE can reach at best;
  * ground truth through the tiny decoder (when the tiny decoder is asked for) — the same latents decoded
    one at a time by the tiny decoder, as streams decode: its ceiling;
  * student N steps — the StreamingGenerator, chunk by chunk through the KV cache, decoded by the VAE;
  * student N steps, true history (`--true-history`) — the same, but each chunk's true latents (the clip's
    frames through the VAE encoder) go into the KV cache instead of what the student made: the rise over the
    row above is what the student loses to its own history (exposure bias), the rest it loses in each chunk;
  * teacher — the bidirectional DiT over the whole clip (24 Euler steps, audio CFG 2).
Lip sync: Pearson r of the read opening against the true opening, and the lag at the cross-correlation
peak. Identity: cosine similarity of each frame's embedding to the portrait's; with `--identity-halves`,
`identity_face` reads the row's face (the clip's face mask, widened) on the true backdrop and `identity_backdrop` the
true face on the row's backdrop, so a loss of identity shows where it sits. Silence: the read opening in
frames at least 0.2 s from speech, against the same reading of the ground-truth frames (its 95th percentile
is the idle range).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.audio.features import AudioFeatureConfig, latent_audio_windows, log_mel
from engine.data.synthtalk import ClipArrays, SynthTalk
from engine.eval.metrics import lip_sync, quiet_frames
from engine.eval.nets import IdentityEmbedder, MouthReader
from engine.eval.readers import load_readers
from engine.generate.avatar import Avatar, AvatarFiles, fit_square, load_avatar
from engine.generate.decoders import to_uint8
from engine.generate.offline import generate_clip
from engine.generate.streaming import StreamConfig, StreamingGenerator, sigma_list, student_chunk
from engine.models.dit import emotion_tokens


@dataclass
class Readers:
    mouth: MouthReader
    identity: IdentityEmbedder


def face_region(clip: ClipArrays, size: int, frames: int) -> torch.Tensor:
    """The clip's face mask at `size`, widened by 7 % of the frame (the jaw and cheeks as they move): float
    [T, S, S, 1], 1 on the face."""
    face = torch.from_numpy(clip.truth["face_mask"][:frames]).float()[:, None] / 255
    face = F.interpolate(face, size=(size, size), mode="area")
    k = 2 * max(1, round(0.035 * size)) + 1
    return (F.max_pool2d(face, k, 1, k // 2) > 0.05).float().permute(0, 2, 3, 1)


def score_frames(frames: torch.Tensor, clip: ClipArrays, portrait: torch.Tensor, readers: Readers,
                 truth_open: np.ndarray | None = None, real: torch.Tensor | None = None) -> dict[str, float]:
    """With `real` (the clip's true frames), identity is also read in two halves: the frames' face on the true
    backdrop (`identity_face`) and the true face on the frames' backdrop (`identity_backdrop`), which says
    where a generator loses the portrait."""
    n = min(len(frames), len(clip.truth["mouth_open"]))
    read = readers.mouth.read(frames[:n])[:, 0].numpy()
    truth = (truth_open if truth_open is not None else clip.truth["mouth_open"])[:n]
    sync = lip_sync(read, truth)
    ref = readers.identity.embed(portrait[None])[0]

    def identity(x: torch.Tensor) -> float:
        return float((readers.identity.embed(x) @ ref).mean())

    quiet = quiet_frames(clip.truth["speaking"][:n])
    scores = {"lip_sync_r": sync.correlation, "lag_ms": sync.lag_ms, "identity": identity(frames[:n]),
              "silent_open_p95": float(np.percentile(read[quiet], 95)) if quiet.any() else float("nan")}
    if real is not None:
        n = min(n, len(real))
        face = face_region(clip, frames.shape[1], n)
        ours, true = frames[:n].float(), real[:n].float()
        scores["identity_face"] = identity((face * ours + (1 - face) * true).round().to(torch.uint8))
        scores["identity_backdrop"] = identity((face * true + (1 - face) * ours).round().to(torch.uint8))
    return scores


def student_frames(avatar: Avatar, portrait: np.ndarray, clip: ClipArrays, steps: int, seed: int,
                   decoder: str = "vae", audio_guidance: float = 1.0, window: int = 0) -> torch.Tensor:
    """`window` > 0: that many latent frames of history in the KV window instead of the session default."""
    stream = StreamConfig(steps=steps, audio_guidance=audio_guidance)
    if window:
        stream = replace(stream, window_frames=window)
    gen = avatar.generator(stream, decoder=decoder,
                           emotion=int(clip.truth["expression"][0]))
    gen.reset(avatar.reference(portrait), seed=seed)
    gen.push_audio(clip.audio, 16000)
    with torch.no_grad():
        frames = [c.frames for c in gen.flush()]
    return torch.cat(frames)


class TrueHistory(StreamingGenerator):
    """A StreamingGenerator whose KV cache holds the clip's true latents [1, C, F, h, w] as history (the
    student's own chunk where the clip has ended)."""

    def __init__(self, avatar: Avatar, truth: torch.Tensor, steps: int, decoder: str, emotion: int):
        text = emotion_tokens(torch.tensor([emotion]), avatar.model.cfg.text_dim) if avatar.model.cfg.text_dim else None
        super().__init__(avatar.model, StreamConfig(steps=steps), decoder=avatar.decoder(decoder), text=text)
        self.truth = truth.to(self.device, self.dtype)

    def _denoise(self, audio: torch.Tensor) -> torch.Tensor:
        start, c = self.latents_out, audio.shape[1]
        truth = self.truth[:, :, start:start + c]
        return student_chunk(self.model, self.cache, audio, self.text_kv, sigma_list(self.steps, self.config.shift),
                             self.noise, self.latent_shape, context=truth if truth.shape[2] == c else None)


def true_history_frames(avatar: Avatar, portrait: np.ndarray, clip: ClipArrays, truth: torch.Tensor, steps: int,
                        seed: int, decoder: str = "vae") -> torch.Tensor:
    gen = TrueHistory(avatar, truth, steps, decoder, int(clip.truth["expression"][0]))
    gen.reset(avatar.reference(portrait), seed=seed)
    gen.push_audio(clip.audio, 16000)
    with torch.no_grad():
        return torch.cat([c.frames for c in gen.flush()])


def teacher_frames(avatar: Avatar, teacher, portrait: np.ndarray, clip: ClipArrays, seed: int) -> torch.Tensor:
    k = avatar.vae.cfg.temporal_stride
    latent_frames = 1 + (len(clip.frames) - 1) // k
    windows = latent_audio_windows(log_mel(clip.audio), latent_frames, AudioFeatureConfig())[None]
    emotion = emotion_tokens(torch.tensor([int(clip.truth["expression"][0])]), teacher.cfg.text_dim)
    g = torch.Generator(device=avatar.device).manual_seed(seed)
    z = generate_clip(teacher, avatar.reference(portrait), windows, emotion=emotion, generator=g)
    with torch.no_grad():
        return to_uint8(avatar.vae.decode(z.to(next(avatar.vae.parameters()).dtype)))


def evaluate(data: str, files: AvatarFiles, readers: Readers, clips: int = 16, steps: tuple[int, ...] = (4, 2, 1),
             teacher_path: str = "", device: str = "cpu", seed: int = 0,
             decoders: tuple[str, ...] = ("vae",), true_history: bool = False,
             split: str = "eval", audio_guidance: float = 1.0, window: int = 0,
             identity_halves: bool = False) -> dict[str, dict[str, float]]:
    """The rows of the module doc; the student's rows once per decoder in `decoders` (the VAE's named
    "student N steps", the tiny decoder's "student N steps, tiny decoder"), and with `true_history` each
    of them again fed the true history ("student N steps, true history[, tiny decoder]"). `split` "train"
    scores clips of the training pool instead (voices, sentences and identities the models were trained on):
    the generalisation gap. `audio_guidance` above 1 runs the student rows with audio CFG (a second pass without
    the audio per step), as `StreamConfig.audio_guidance` does in a session; `window` > 0 gives them that KV
    window (latent frames of history) instead of the session default. `identity_halves` adds `identity_face` and
    `identity_backdrop` to every row but the floor (score_frames; ~50 % more time)."""
    avatar = load_avatar(files, device=device)
    teacher = None
    if teacher_path:
        from engine.checkpoints.wan import load_dit

        teacher = load_dit(teacher_path).to(device).eval()
    dataset = SynthTalk(data.split(","), split)
    rows: dict[str, list[dict[str, float]]] = {}
    for i in range(min(clips, len(dataset))):
        clip = dataset.load(i)
        other = dataset.load((i + 1) % len(dataset))
        portrait = fit_square(clip.frames[0], avatar.resolution)
        portrait_t = torch.from_numpy(portrait)
        real = torch.from_numpy(np.stack([fit_square(f, avatar.resolution) for f in clip.frames]))
        halves = real if identity_halves else None
        rows.setdefault("ground truth", []).append(score_frames(real, clip, portrait_t, readers, real=halves))
        k = avatar.vae.cfg.temporal_stride
        t = 1 + (len(real) - 1) // k * k
        with torch.no_grad():  # the VAE's own ceiling: the real frames through encode and decode
            p = next(avatar.vae.parameters())
            video = real[:t].permute(3, 0, 1, 2)[None].to(p.device, p.dtype) / 127.5 - 1
            truth = avatar.vae.encode(video)
            round_trip = to_uint8(avatar.vae.decode(truth))
        rows.setdefault("ground truth through the VAE", []).append(
            score_frames(round_trip, clip, portrait_t, readers, real=halves))
        if "tiny" in decoders:
            tiny = avatar.decoder("tiny")
            with torch.no_grad():
                tiny_trip = torch.cat([tiny.decode(truth[:, :, j:j + 1]) for j in range(truth.shape[2])])
            rows.setdefault("ground truth through the tiny decoder", []).append(
                score_frames(tiny_trip, clip, portrait_t, readers, real=halves))
        n = min(len(clip.frames), len(other.frames))
        rows.setdefault("wrong audio", []).append(score_frames(real[:n], clip, portrait_t, readers,
                                                               other.truth["mouth_open"][:n]))
        for s in steps:
            for decoder in decoders:
                frames = student_frames(avatar, portrait, clip, s, seed + i, decoder, audio_guidance, window)
                name = f"student {s} steps" + ("" if decoder == "vae" else f", {decoder} decoder")
                rows.setdefault(name, []).append(score_frames(frames, clip, portrait_t, readers, real=halves))
                if true_history:
                    frames = true_history_frames(avatar, portrait, clip, truth, s, seed + i, decoder)
                    name = f"student {s} steps, true history" + ("" if decoder == "vae" else f", {decoder} decoder")
                    rows.setdefault(name, []).append(score_frames(frames, clip, portrait_t, readers, real=halves))
        if teacher is not None:
            frames = teacher_frames(avatar, teacher, portrait, clip, seed + i)
            rows.setdefault("teacher", []).append(score_frames(frames, clip, portrait_t, readers, real=halves))
    return {name: {k: float(np.nanmean([r[k] for r in rs])) for k in rs[0]} | {"clips": len(rs)}
            for name, rs in rows.items()}


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dit", default=str(AvatarFiles().dit))
    ap.add_argument("--vae", default=str(AvatarFiles().vae))
    ap.add_argument("--tiny", default=str(AvatarFiles().tiny))
    ap.add_argument("--teacher", default="")
    ap.add_argument("--mouth-reader", default="")
    ap.add_argument("--identity", default="")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--steps", default="4,2,1")
    ap.add_argument("--decoders", default="vae", help="decoders of the student rows, comma-separated: vae, tiny")
    ap.add_argument("--true-history", action="store_true",
                    help="also the student rows with the true latents as history (exposure bias apart)")
    ap.add_argument("--split", default="eval", choices=("eval", "train"),
                    help="train: clips of the training pool (the generalisation gap), not held-out ones")
    ap.add_argument("--audio-guidance", type=float, default=1.0,
                    help="audio CFG scale of the student rows (1: one conditional pass, the default of sessions)")
    ap.add_argument("--window", type=int, default=0,
                    help="latent frames of history in the student rows' KV window (0: the session default)")
    ap.add_argument("--identity-halves", action="store_true",
                    help="also read identity as the face on the true backdrop and the true face on the row's backdrop")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    mouth, identity = load_readers(args.mouth_reader or None, args.identity or None, args.device)
    scores = evaluate(args.data, AvatarFiles(Path(args.dit), Path(args.vae), Path(args.tiny)), Readers(mouth, identity),
                      args.clips, tuple(int(s) for s in args.steps.split(",") if s), args.teacher, args.device,
                      decoders=tuple(d for d in args.decoders.split(",") if d), true_history=args.true_history,
                      split=args.split, audio_guidance=args.audio_guidance, window=args.window,
                      identity_halves=args.identity_halves)
    text = json.dumps(scores, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
