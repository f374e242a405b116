"""Recipe: the DiT stages, teacher → causal student → few-step student, on SynthTalk latents.

config → build → loop → save, one stage per run (`talkstream train STAGE` or `python -m engine.train.dit`):

  * teacher — the bidirectional DiT, flow matching (rectified flow: x_σ = (1−σ)·x0 + σ·ε, target v = ε − x0),
    conditioned on the reference portrait (latent frame 0 of the clip, pinned as a sink frame), the audio
    (dropped for a whole batch with probability `audio_drop`, so audio CFG has its unconditional branch) and
    the emotion (a one-hot token through the text branch, dropped likewise).
  * student — the same weights run block-causally (chunks of `chunk` latent frames, a window of `window`),
    trained with diffusion forcing (per-chunk σ sorted along time, SkyReels-V2 / Diffusion Forcing) mixed
    with streaming batches: clean history at σ = 0 and one noisy chunk, exactly what the KV-cache sees when
    it streams (the loss is taken on the noisy chunk only).
  * distill — few-step distillation by ODE trajectories (CausVid's initialisation): the teacher, with audio
    CFG, integrates the flow ODE from noise through a σ grid that contains the student's few-step σs; the
    student learns to jump from each recorded point straight to the teacher's x0 (loss on x̂0 = x − σ·v),
    with the clean teacher frames as its history; a diffusion-forcing term on real data keeps it grounded.
    Training at the 4-step σs covers 2 and 1 steps too (their σs are a subset).
  * selfforce — the student streams its own rollouts and learns from them by distribution matching
    (engine/train/selfforce.py).

Every stage: the facial-mask loss (per latent pixel 1 + λ_face·face + λ_mouth·mouth, from SynthTalk masks
max-pooled to the latent grid) and the hybrid curriculum of `phases` (mouth first: short windows, a heavy
mouth weight; then the whole face and head motion; then long windows). Mixed precision (bf16 autocast on
CUDA), a seed, resumable (`last.safetensors` + `state.json`), losses in `log.jsonl`; under torchrun it runs
DDP (one process per GPU, rank-seeded data, rank 0 writes), or with `--fsdp true` FSDP2 (the model sharded
over the processes; sharded checkpoints that resume on any process count).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.audio.features import AudioFeatureConfig, latent_audio_windows, log_mel
from engine.checkpoints.io import read_state, save_state
from engine.checkpoints.vae import load_vae
from engine.checkpoints.wan import load_dit, save_dit
from engine.data.synthtalk import SynthTalk
from engine.diffusion.flow import add_noise, x0_from_velocity
from engine.diffusion.forcing import sample_forcing_sigmas
from engine.diffusion.guidance import cfg as guidance
from engine.diffusion.schedules import shift_sigmas
from engine.errors import ConfigError
from engine.eval.metrics import quiet_frames
from engine.generate.streaming import STUDENT_WINDOW, sigma_list
from engine.models.attention import SequenceLayout
from engine.models.dit import DiT, dit_config, emotion_tokens
from engine.models.vae import CausalVAE
from engine.train.widen import widen_dit

STAGES = ("teacher", "student", "distill", "selfforce")
DMD_REGIONS = ("frame", "face", "mouth")


@dataclass(frozen=True)
class Phase:
    """One step of the curriculum, active until `until` (a fraction of the run)."""

    name: str
    until: float
    frames: int  # latent frames per training window (after the reference frame)
    mouth_weight: float
    face_weight: float


DEFAULT_CURRICULUM = (
    Phase("mouth", 0.3, 4, mouth_weight=8.0, face_weight=1.0),
    Phase("face-and-motion", 0.75, 8, mouth_weight=4.0, face_weight=1.0),
    Phase("long", 1.0, 16, mouth_weight=4.0, face_weight=1.0),
)


@dataclass(frozen=True)
class TrainDiTConfig:
    stage: str
    data: str = ""  # SynthTalk folder(s), comma-separated
    out: str = ""
    vae: str = "engine/assets/demo-vae.safetensors"
    init: str = ""  # weights to start from (student, distill: the previous stage's final.safetensors)
    teacher: str = ""  # distill: the teacher's final.safetensors
    preset: str = "demo"
    resolution: int = 128  # frames are resized to this before the VAE encodes them
    steps: int = 20000
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 200
    shift: float = 3.0  # training σ shift (more steps at high noise, where structure is decided)
    audio_drop: float = 0.15
    emotion_drop: float = 0.1
    phases: tuple[Phase, ...] = DEFAULT_CURRICULUM
    chunk: int = 1  # student: latent frames per causal chunk
    window: int = STUDENT_WINDOW  # student: latent frames of history attention sees (the window streams use)
    stream_share: float = 0.5  # student: share of batches with clean history and one noisy chunk
    few_steps: int = 4  # distill: the student's step count (its σs include those of 2 and 1 steps)
    few_shift: float = 5.0  # distill: the σ shift the streaming generator uses
    teacher_steps: int = 24  # distill: Euler steps of the teacher's ODE
    teacher_guidance: float = 2.0  # distill: audio CFG scale of the teacher
    ode_pairs: int = 1024  # distill: teacher trajectories made at the start
    ode_weight: float = 1.0  # distill: weight of the ODE regression beside the diffusion-forcing term
    fake_lr: float = 1e-4  # selfforce: learning rate of the fake score
    fake_updates: int = 2  # selfforce: fake-score updates per generator update
    dmd_region: str = "frame"  # selfforce: where DMD applies: the whole frame under the facial mask, the face alone
    # or the mouth alone (elsewhere the generator stays the init's, held there by the data anchor)
    backdrop_weight: float = 0.0  # selfforce: weight of a regression of the rollouts' backdrop (latent pixels over
    # one pixel away from the face) on the clip's true latents: a portrait's backdrop stays still as it talks, and
    # the backdrop is where the students lose identity (engine/eval/heldout.py's identity_backdrop)
    mouth_truth_weight: float = 0.0  # selfforce: weight of a regression of the rollouts' mouth (the mouth mask's
    # latent pixels) on the clip's true latents: the opening follows the clip's own audio, in speech and in silence,
    # learnt under the generator's own history as it streams (the anchor learns it under true history only)
    silence_weight: float = 0.0  # selfforce: weight of the same regression in quiet latent frames alone (every video
    # frame 0.2 s or more from speech, SynthTalk's speaking labels): in silence the truth's resting mouth is the one
    # right answer, so what DMD on the mouth adds in speech cannot open the mouth there
    data_weight: float = 0.0  # selfforce: weight of the diffusion-forcing loss on real clips beside DMD (an
    # anchor to the data: DMD alone follows the teacher, whose identity is weaker than the student's)
    dmd_weight: float = 1.0  # selfforce: weight of DMD; 0 runs the stage without it (no teacher or fake-score passes):
    # the rollouts trained by the anchor and the backdrop regression alone, the control of what DMD adds
    rollout_frames: int = 0  # selfforce: latent frames of each rollout (0: the last phase's frames); as long as a
    # stream evaluated, the losses see errors grow over a whole stream, not only its first frames
    audio_encoder: str = ""  # a pretrained conv audio encoder (engine.train.audio_encoder) replacing the MLP
    # projection of `init` (an init that has a conv encoder keeps its own: it was trained with it)
    train_audio_trunk: bool = False  # a conv encoder's trunk stays as pretrained unless this is set
    max_clips: int = 0
    fsdp: bool = False  # under torchrun: shard the model over the processes (FSDP2), sharded checkpoints
    latents: str = ""  # a cache of the encoded split (safetensors), shared by the stages of one run
    time_budget_s: float = 0.0
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    bf16: bool = torch.cuda.is_available()

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"unknown stage {self.stage!r}; choose one of {list(STAGES)}")
        if not self.phases or self.phases[-1].until < 1.0:
            raise ConfigError("the curriculum's last phase must run until 1.0")
        if any(p.frames % self.chunk for p in self.phases):
            raise ConfigError(f"every phase's frames must be a multiple of chunk={self.chunk}")
        if self.dmd_region not in DMD_REGIONS:
            raise ConfigError(f"unknown dmd_region {self.dmd_region!r}; choose one of {list(DMD_REGIONS)}")
        if self.rollout_frames < 0 or self.rollout_frames % self.chunk:
            raise ConfigError(f"rollout_frames must be 0 (the last phase's frames) or a multiple of chunk={self.chunk}")
        if self.dmd_weight < 0 or self.dmd_weight == 0 and not (self.data_weight or self.backdrop_weight
                                                                 or self.mouth_truth_weight or self.silence_weight):
            raise ConfigError("dmd_weight must be >= 0, and with dmd_weight 0 give data_weight, backdrop_weight, "
                              "mouth_truth_weight or silence_weight, or nothing trains the generator")


# The committed configs of the demo model, one per stage (data/out/paths are given on the command line).
TRAIN_PRESETS: dict[str, TrainDiTConfig] = {
    "demo-teacher": TrainDiTConfig("teacher", steps=12000, batch=48, lr=4e-4),
    "demo-student": TrainDiTConfig("student", steps=8000, batch=48, lr=2e-4, warmup=100),
    "demo-distill": TrainDiTConfig("distill", steps=6000, batch=48, lr=1e-4, warmup=100,
                                   phases=(Phase("long", 1.0, 8, mouth_weight=4.0, face_weight=1.0),)),
    "demo-selfforce": TrainDiTConfig("selfforce", steps=3000, batch=24, lr=3e-5, fake_lr=1e-4, warmup=50,
                                     phases=(Phase("long", 1.0, 8, mouth_weight=4.0, face_weight=1.0),)),
}


# ----------------------------------------------------------------------------- data: latents once

@dataclass
class LatentClips:
    """A split encoded once: latents [N, C, L, h, w] (frame 0 is the reference), audio windows
    [N, L, window, mels], latent-grid masks [N, 2, L, h, w] (face, mouth), expression [N], and quiet [N, L]: 1 where
    every video frame of the latent frame is at least 0.2 s from speech (None in a cache written before it)."""

    latents: torch.Tensor
    audio: torch.Tensor
    masks: torch.Tensor
    expression: torch.Tensor
    quiet: torch.Tensor | None = None

    def window(self, clips: torch.Tensor, start: torch.Tensor, frames: int):
        idx = start[:, None] + torch.arange(frames, device=start.device)  # [B, F]
        x0 = self.latents[clips[:, None], :, idx].permute(0, 2, 1, 3, 4)  # [B, C, F, h, w]
        masks = self.masks[clips[:, None], :, idx].permute(0, 2, 1, 3, 4)
        return x0, self.latents[clips, :, :1], self.audio[clips[:, None], idx], masks

    def quiet_window(self, clips: torch.Tensor, start: torch.Tensor, frames: int) -> torch.Tensor:
        """quiet [B, F] of the frames `window` returns."""
        if self.quiet is None:
            raise ConfigError("this latent cache predates the quiet labels (written before they were added): "
                              "delete the cache file and the stage encodes the split again")
        return self.quiet[clips[:, None], start[:, None] + torch.arange(frames, device=start.device)]


def quiet_latents(speaking: np.ndarray, k: int) -> np.ndarray:
    """Per latent frame of a clip's `speaking` [T] (frame 0 alone, then groups of k video frames): True where every
    video frame is quiet as the held-out evaluation counts it (at least 0.2 s from speech)."""
    quiet = quiet_frames(np.asarray(speaking) > 0.5)
    t = 1 + (len(quiet) - 1) // k * k
    return np.concatenate([quiet[:1], quiet[1:t].reshape(-1, k).all(1)])


@torch.no_grad()
def encode_clips(data: SynthTalk, vae: CausalVAE, device: str, limit: int | None = None,
                 audio_cfg: AudioFeatureConfig = AudioFeatureConfig(), size: int = 128,
                 batch: int = 16) -> LatentClips:
    """Encode a split with the VAE (posterior means), `batch` clips at a time."""
    k = vae.cfg.temporal_stride
    bank = data.bank(size, "cpu", limit)
    n, t = bank.frames.shape[:2]
    t = 1 + (t - 1) // k * k
    latents, windows, masks = [], [], []
    p = next(vae.parameters())
    for i in range(0, n, batch):
        video = bank.frames[i:i + batch, :t].permute(0, 4, 1, 2, 3).to(device).float() / 127.5 - 1  # [b, 3, T, H, W]
        z = vae.encode(video.to(p.dtype)).float()  # [b, C, L, h, w]
        latents.append(z)
        m = bank.masks[i:i + batch, :t].permute(0, 4, 1, 2, 3).float().to(device) / 255  # [b, 2, T, H, W]
        pooled = torch.cat([m[:, :, :1], m[:, :, 1:].unflatten(2, (-1, k)).amax(3)], 2)  # frame 0, groups of k
        masks.append(F.adaptive_max_pool3d(pooled, z.shape[2:]))  # [b, 2, L, h, w]
    latents_t = torch.cat(latents)
    for i in range(n):
        mel = log_mel(bank.audio[i], audio_cfg)
        windows.append(latent_audio_windows(mel, latents_t.shape[2], audio_cfg))
    quiet = np.stack([quiet_latents(s[:t], k)[:latents_t.shape[2]] for s in bank.truth["speaking"].cpu().numpy()])
    return LatentClips(latents_t, torch.stack(windows).to(device), torch.cat(masks),
                       bank.truth["expression"][:, 0].long().to(device), torch.from_numpy(quiet).float().to(device))


def latent_clips(cfg: "TrainDiTConfig", device: str) -> LatentClips:
    """The training split as latents: read from `cfg.latents` when that cache exists (stages of one run
    share it), else encoded with `cfg.vae` and, when `cfg.latents` is named, written there."""
    from safetensors.torch import load_file, save_file

    if cfg.latents and Path(cfg.latents).exists():
        t = load_file(cfg.latents, device=str(device))
        clips = LatentClips(t["latents"], t["audio"], t["masks"], t["expression"], t.get("quiet"))
        if cfg.max_clips:
            clips = LatentClips(*(v[:cfg.max_clips] if v is not None else None for v in
                                  (clips.latents, clips.audio, clips.masks, clips.expression, clips.quiet)))
        return clips
    vae = load_vae(cfg.vae).to(device)
    clips = encode_clips(SynthTalk(cfg.data.split(","), "train"), vae, device, cfg.max_clips or None,
                         size=cfg.resolution)
    if cfg.latents:
        Path(cfg.latents).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cfg.latents + ".tmp")
        save_file({"latents": clips.latents.contiguous(), "audio": clips.audio.contiguous(),
                   "masks": clips.masks.contiguous(), "expression": clips.expression.contiguous(),
                   "quiet": clips.quiet.contiguous()}, str(tmp),
                  metadata={"vae": cfg.vae, "data": cfg.data})
        tmp.replace(cfg.latents)
    return clips


def with_audio_encoder(model: DiT, path: str) -> DiT:
    """`model` with its audio projection replaced by the conv encoder pretrained at `path`
    (engine.train.audio_encoder); every other weight is kept."""
    state = read_state(path)
    if "token.weight" not in state or not any(k.startswith("trunk.") for k in state):
        raise ConfigError(f"{path} is not an audio encoder of engine.train.audio_encoder (no trunk.*/token.*)")
    audio_dim, channels = state["token.weight"].shape
    if audio_dim != model.cfg.audio_dim:
        raise ConfigError(f"{path} makes {audio_dim}-dim tokens; the DiT reads {model.cfg.audio_dim}: pretrain it "
                          f"with --audio-dim {model.cfg.audio_dim}")
    swapped = DiT(replace(model.cfg, audio_encoder="conv", audio_hidden=channels))
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("audio_proj.")}
    missing, unexpected = swapped.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith("audio_proj.") for k in missing), (missing, unexpected)
    swapped.audio_proj.load_state_dict(state)
    return swapped


# ----------------------------------------------------------------------------- pieces of a step

def phase_at(cfg: TrainDiTConfig, progress: float) -> Phase:
    return next(p for p in cfg.phases if progress < p.until or p is cfg.phases[-1])


def masked_mse(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, phase: Phase,
               frame_weight: torch.Tensor | None = None, background: float = 1.0) -> torch.Tensor:
    """The facial-mask loss: squared error weighted by `background` + λ_face·face + λ_mouth·mouth on the latent
    grid (`background` 0: the face alone counts); `frame_weight` [B, F] (0 or 1) keeps only some frames."""
    w = background + phase.face_weight * masks[:, :1] + phase.mouth_weight * masks[:, 1:]  # [B, 1, F, h, w]
    if frame_weight is not None:
        w = w * frame_weight[:, None, :, None, None]
    return (w * (pred.float() - target.float()) ** 2).sum() / (w.sum() * pred.shape[1]).clamp(min=1)


def conditions(model: DiT, audio: torch.Tensor, expression: torch.Tensor, cfg: TrainDiTConfig,
               g: torch.Generator, train: bool = True, drop_g: torch.Generator | None = None):
    """Audio tokens and emotion keys/values, each dropped for the whole batch at its rate (for CFG). `drop_g`
    draws the drops (default g): under FSDP every process must drop alike, since a branch's weights are
    gathered by all processes together."""
    dg = drop_g or g
    drop = torch.rand(2, generator=dg, device=dg.device).tolist() if train else [1.0, 1.0]
    raw = model.module if hasattr(model, "module") else model
    audio_tokens = raw.encode_audio(audio) if drop[0] >= cfg.audio_drop else None
    text_kv = raw.encode_text(emotion_tokens(expression, raw.cfg.text_dim)) if drop[1] >= cfg.emotion_drop else None
    return audio_tokens, text_kv


def velocity(model, x: torch.Tensor, ref: torch.Tensor, sigma: torch.Tensor, layout, audio, text_kv) -> torch.Tensor:
    """Velocity of the video frames of [ref | x] at per-frame σ [B, F] (the reference sits at t = 0)."""
    t = torch.cat([torch.zeros_like(sigma[:, :1]), sigma], 1) * 1000  # [B, 1 + F]
    return model(torch.cat([ref, x], 2), t, layout, audio=audio, text_kv=text_kv, sink_frames=1)[:, :, 1:]


def layout_for(model: DiT, frames: int, grid: tuple[int, int], cfg: TrainDiTConfig, causal: bool) -> SequenceLayout:
    raw = model.module if hasattr(model, "module") else model
    head_dim = raw.cfg.dim // raw.cfg.num_heads
    return SequenceLayout(1, frames, raw.token_grid(grid), head_dim,
                          causal_chunk=cfg.chunk if causal else None, window_frames=cfg.window if causal else None)


def student_sigmas(cfg: TrainDiTConfig, batch: int, frames: int, g: torch.Generator) -> tuple[torch.Tensor, int | None]:
    """(σ, history frames h). Streaming batches: σ [B, h + chunk], h clean frames then one noisy chunk at a
    σ per sample; otherwise diffusion forcing over every chunk: σ [B, frames], h None."""
    if torch.rand(1, generator=g, device=g.device).item() < cfg.stream_share:
        h = int(torch.randint(0, frames // cfg.chunk, (1,), generator=g, device=g.device)) * cfg.chunk
        noisy = shift_sigmas(torch.rand(batch, 1, generator=g, device=g.device), cfg.shift)
        sig = torch.cat([torch.zeros(batch, h, device=g.device), noisy.expand(-1, cfg.chunk)], 1)
        return sig, h
    u = sample_forcing_sigmas(batch, frames, cfg.chunk, cfg.shift)
    return u.to(g.device), None


# ----------------------------------------------------------------------------- distillation targets

@torch.no_grad()
def teacher_trajectories(teacher: DiT, data: LatentClips, cfg: TrainDiTConfig, frames: int, g: torch.Generator):
    """Run the teacher's ODE (Euler, audio CFG) over windows of real conditions, from noise through a grid
    containing the few-step σs. Returns (clip ids, starts, x at each few-step σ [K, P, C, F, h, w], x0)."""
    few = sigma_list(cfg.few_steps, cfg.few_shift)  # e.g. [1.0, 0.9375, 0.833, 0.625]
    stops = few + [0.0]
    per_gap = max(1, cfg.teacher_steps // len(few))
    grid = torch.cat([torch.linspace(a, b, per_gap + 1)[:-1] for a, b in zip(stops[:-1], stops[1:])] + [torch.zeros(1)])
    n, _, length = data.latents.shape[:3]
    clips = torch.randint(n, (cfg.ode_pairs,), generator=g, device=g.device)
    starts = torch.randint(1, length - frames + 1, (cfg.ode_pairs,), generator=g, device=g.device)
    layout = layout_for(teacher, frames, data.latents.shape[-2:], cfg, causal=False)
    points, finals = [], []
    for i in range(0, cfg.ode_pairs, cfg.batch):
        c, s = clips[i:i + cfg.batch], starts[i:i + cfg.batch]
        x0_real, ref, audio, _ = data.window(c, s, frames)
        audio_tokens = teacher.encode_audio(audio)
        text_kv = teacher.encode_text(emotion_tokens(data.expression[c], teacher.cfg.text_dim))
        x = torch.randn(x0_real.shape, generator=g, device=g.device)
        recorded = []
        for j in range(len(grid) - 1):
            sigma = float(grid[j])
            if any(abs(sigma - f) < 1e-6 for f in few):
                recorded.append(x.clone())
            sig = torch.full(x.shape[:1] + x.shape[2:3], sigma, device=x.device)
            with torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16):
                v_c = velocity(teacher, x, ref, sig, layout, audio_tokens, text_kv)
                v_u = velocity(teacher, x, ref, sig, layout, None, text_kv)
            x = x + (float(grid[j + 1]) - sigma) * guidance(v_c.float(), v_u.float(), cfg.teacher_guidance)
        points.append(torch.stack(recorded))
        finals.append(x)
    return clips, starts, torch.cat(points, 1), torch.cat(finals), few


# ----------------------------------------------------------------------------- the recipe

def train(cfg: TrainDiTConfig) -> dict[str, float]:
    if cfg.stage == "selfforce":
        from engine.train.selfforce import train_selfforce

        return train_selfforce(cfg)
    if cfg.stage == "distill" and not cfg.teacher:
        raise ConfigError("distill needs --teacher PATH (the teacher's final.safetensors)")
    if not (cfg.data or cfg.latents) or not cfg.out:
        raise ConfigError("name the data (--data FOLDER, or --latents CACHE) and the run folder (--out FOLDER)")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    device = cfg.device
    if distributed:  # torchrun: one process per GPU (or CPU processes on gloo)
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = dist.get_rank()
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    if torch.cuda.is_available() and cfg.stage != "teacher":
        # The fused SDPA kernels gave NaN losses, then illegal memory accesses, in the backward of the
        # block-causal layout (many small query blocks over sliced keys; H100, torch 2.11, bf16); the math
        # kernel is exact. The teacher's bidirectional layout (whole sequences) keeps the fused kernels.
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = latent_clips(cfg, device)
    grid = tuple(data.latents.shape[-2:])
    z = data.latents.shape[1]  # the VAE's latent channels: the DiT reads and predicts those
    model = load_dit(cfg.init) if cfg.init else DiT(replace(dit_config(cfg.preset), in_dim=z, out_dim=z))
    if model.cfg.in_dim != z:  # a wider VAE than the one `init` was trained on: its weights, widened (Net2Net)
        model = widen_dit(model, z)
    if cfg.audio_encoder and model.cfg.audio_encoder != "conv":
        model = with_audio_encoder(model, cfg.audio_encoder)
    model = model.to(device).train()
    if model.cfg.audio_encoder == "conv" and not cfg.train_audio_trunk:
        model.audio_proj.trunk.requires_grad_(False)
    sharded = distributed and cfg.fsdp
    resume = json.loads((out / "state.json").read_text()) if (out / "state.json").exists() else None
    if resume is not None and not resume.get("sharded"):
        model.load_state_dict(read_state(out / "last.safetensors"))
    if sharded:
        shard_model(model)
    if resume is not None and resume.get("sharded"):  # any process count: the checkpoint reshards on load
        load_sharded(model, out / resume["sharded"])
    step = resume["step"] if resume is not None else 0
    teacher = load_dit(cfg.teacher).to(device).eval().requires_grad_(False) if cfg.stage == "distill" else None
    # text/audio branches sit out of batches that drop them, hence find_unused_parameters
    ddp = distributed and not sharded
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if ddp else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    g = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + step * 31 + rank)
    drop_g = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + step * 31) if sharded else None
    ode = None
    if teacher is not None:
        frames = cfg.phases[-1].frames
        ode = teacher_trajectories(teacher, data, cfg, frames, g)
    log = (out / "log.jsonl").open("a") if rank == 0 else None
    t0 = time.perf_counter()
    causal = cfg.stage != "teacher"
    loss = torch.tensor(float("nan"))  # a run resumed at its last step trains no further
    while step < cfg.steps and not (cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s):
        progress = max(step / cfg.steps, (time.perf_counter() - t0) / cfg.time_budget_s if cfg.time_budget_s else 0)
        phase = phase_at(cfg, progress)
        loss = data_loss(net, data, cfg, grid, phase, causal, g, drop_g)
        if ode is not None:  # jump from a recorded point of the teacher's trajectory to its x0
            loss = 0.5 * loss + cfg.ode_weight * ode_loss(net, ode, data, cfg, grid, g)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.55 + 0.45 * np.cos(np.pi * min(progress, 1.0)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        probe = None  # on rank 0, or on every process when the model is sharded (its forward needs them all)
        if step % (cfg.log_every * 4) == 0 and (log is not None or sharded):
            probe = audio_probe(model, data, cfg, grid, causal, torch.Generator(device=device).manual_seed(step))
        if log is not None and step % cfg.log_every == 0:
            log.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "phase": phase.name,
                                  "s": round(time.perf_counter() - t0, 1)}
                                 | ({"audio_gain": round(probe, 4)} if probe is not None else {})) + "\n")
            log.flush()
        if step % cfg.save_every == 0 and (rank == 0 or sharded):
            save_checkpoint(out, model, step, cfg, sharded, rank)
    if rank == 0 or sharded:
        save_checkpoint(out, model, step, cfg, sharded, rank)
        final = gathered(model) if sharded else model
    if rank == 0:
        save_dit(out / "final.safetensors", final, stage=cfg.stage, steps=str(step),
                 recipe=json.dumps(asdict(cfg)), seconds=str(round(time.perf_counter() - t0)))
        log.write(json.dumps({"step": step, "done": True, "s": round(time.perf_counter() - t0, 1)}) + "\n")
        log.close()
    if distributed:
        torch.distributed.destroy_process_group()
    return {"steps": step, "loss": loss.item()}


def data_loss(net, data: LatentClips, cfg: TrainDiTConfig, grid, phase: Phase, causal: bool, g: torch.Generator,
              drop_g: torch.Generator | None = None) -> torch.Tensor:
    """The loss on real clips: flow matching over a whole window (teacher), or diffusion forcing with
    streaming batches (causal stages), under the facial mask of `phase`."""
    n, _, length = data.latents.shape[:3]
    frames = min(phase.frames, length - 1)
    device = g.device
    clips = torch.randint(n, (cfg.batch,), generator=g, device=device)
    starts = torch.randint(1, length - frames + 1, (cfg.batch,), generator=g, device=device)
    x0, ref, audio, masks = data.window(clips, starts, frames)
    noise = torch.randn(x0.shape, generator=g, device=device)
    with torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16):
        audio_tokens, text_kv = conditions(net, audio, data.expression[clips], cfg, g, drop_g=drop_g)
        if not causal:
            sigma = shift_sigmas(torch.rand(cfg.batch, 1, generator=g, device=device), cfg.shift).expand(-1, frames)
            keep = None
        else:
            sigma, h = student_sigmas(cfg, cfg.batch, frames, g)
            keep = (sigma > 0).float()
            if h is not None:  # a streaming batch: only the history and the noisy chunk
                x0, noise, masks, sigma, keep = (v[:, :, :h + cfg.chunk] if v.ndim == 5 else v[:, :h + cfg.chunk]
                                                 for v in (x0, noise, masks, sigma, keep))
                audio_tokens = audio_tokens[:, :h + cfg.chunk] if audio_tokens is not None else None
        f = x0.shape[2]
        layout = layout_for(net, f, grid, cfg, causal)
        x_t = add_noise(x0, noise, sigma[:, None, :, None, None])
        v = velocity(net, x_t, ref, sigma, layout, audio_tokens, text_kv)
    return masked_mse(v, noise - x0, masks, phase, keep)


def ode_loss(net, ode, data: LatentClips, cfg: TrainDiTConfig, grid, g: torch.Generator) -> torch.Tensor:
    """Streaming form of the ODE regression: h teacher frames as clean history, then the last chunk at a
    recorded few-step σ; the student's x̂0 of that chunk against the teacher's."""
    clips, starts, points, finals, few = ode
    pick = torch.randint(len(clips), (cfg.batch,), generator=g, device=g.device)
    k = int(torch.randint(len(few), (1,), generator=g, device=g.device))
    frames = finals.shape[2]
    h = int(torch.randint(0, frames // cfg.chunk, (1,), generator=g, device=g.device)) * cfg.chunk
    target = finals[pick][:, :, h:h + cfg.chunk]
    x = torch.cat([finals[pick][:, :, :h], points[k][pick][:, :, h:h + cfg.chunk]], 2)
    _, ref, audio, masks = data.window(clips[pick], starts[pick], h + cfg.chunk)
    sigma = torch.cat([torch.zeros(cfg.batch, h, device=x.device), torch.full((cfg.batch, cfg.chunk), few[k], device=x.device)], 1)
    with torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16):
        raw = net.module if hasattr(net, "module") else net
        audio_tokens = raw.encode_audio(audio)
        text_kv = raw.encode_text(emotion_tokens(data.expression[clips[pick]], raw.cfg.text_dim))
        v = velocity(net, x, ref, sigma, layout_for(net, h + cfg.chunk, grid, cfg, True), audio_tokens, text_kv)
    x0 = x0_from_velocity(x[:, :, h:].float(), v[:, :, h:].float(), few[k])
    return masked_mse(x0, target, masks[:, :, h:], cfg.phases[-1])


@torch.no_grad()
def audio_probe(model: DiT, data: LatentClips, cfg: TrainDiTConfig, grid, causal: bool, g: torch.Generator,
                sigma: float = 0.6, batch: int = 16) -> float:
    """How much the model uses the audio: the relative rise of its mouth-region error at σ when every clip
    gets another clip's audio (0: the audio is ignored). Logged beside the loss while training; run on the
    bare model (rank 0 alone), never through DDP."""
    n, _, length = data.latents.shape[:3]
    frames = min(cfg.phases[-1].frames, length - 1)
    clips = torch.randint(n, (batch,), generator=g, device=g.device)
    starts = torch.randint(1, length - frames + 1, (batch,), generator=g, device=g.device)
    x0, ref, audio, masks = data.window(clips, starts, frames)
    noise = torch.randn(x0.shape, generator=g, device=g.device)
    sig = torch.full((batch, frames), sigma, device=g.device)
    x_t = add_noise(x0, noise, sig[:, None, :, None, None])
    errors = []
    for a in (audio, audio.roll(1, 0)):
        with torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16):
            text_kv = model.encode_text(emotion_tokens(data.expression[clips], model.cfg.text_dim))
            v = velocity(model, x_t, ref, sig, layout_for(model, frames, grid, cfg, causal), model.encode_audio(a), text_kv)
        only_mouth = torch.cat([torch.zeros_like(masks[:, :1]), masks[:, 1:]], 1)  # weight = mouth mask
        errors.append(float((only_mouth[:, 1:] * (v.float() - (noise - x0)) ** 2).sum() / only_mouth[:, 1:].sum().clamp(min=1)))
    return errors[1] / max(errors[0], 1e-12) - 1


def save_checkpoint(out: Path, model: DiT, step: int, cfg: TrainDiTConfig, sharded: bool = False,
                    rank: int = 0) -> None:
    """`last.safetensors` (rank 0), or with a sharded model a torch.distributed.checkpoint folder
    `sharded-STEP` written by every process; `state.json` names what to resume from (written last)."""
    if not sharded:
        save_state(out / "last.safetensors", model.state_dict(), model.cfg, kind="dit")
        (out / "state.json").write_text(json.dumps({"step": step, "stage": cfg.stage}))
        return
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    folder = f"sharded-{step:08d}"
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=out / folder)  # collective: all have written
    if rank == 0:
        tmp = out / "state.json.tmp"
        tmp.write_text(json.dumps({"step": step, "stage": cfg.stage, "sharded": folder}))
        tmp.replace(out / "state.json")
        for old in out.glob("sharded-*"):
            if old.name != folder:
                shutil.rmtree(old)


# ----------------------------------------------------------------------------- FSDP (torchrun --fsdp true)

def shard_model(model: DiT) -> None:
    """FSDP2: every block is a unit and the model the root. The conditioning the trainer computes outside
    `forward` (encode_audio, encode_text and each block's text keys/values) is registered as forward methods,
    so those calls gather their weights too."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in model.blocks:
        if model.cfg.text_dim:
            fully_shard(block.cross_attn)
            register_fsdp_forward_method(block.cross_attn, "kv")
        fully_shard(block)
    fully_shard(model)
    for method in ("encode_audio", "encode_text"):
        register_fsdp_forward_method(model, method)


def load_sharded(model: DiT, folder: Path) -> None:
    """Load a sharded checkpoint into this model, sharded over any number of processes or not at all."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])


def gathered(model: DiT) -> DiT | None:
    """The full weights of a sharded model as a plain DiT on the CPU, on rank 0 (None elsewhere); every
    process takes part."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    plain = DiT(model.cfg)
    plain.load_state_dict(full)
    return plain


def config_from_args(argv: list[str] | None = None) -> TrainDiTConfig:
    """`PRESET --data D --out O [--field value ...]`: a committed preset with flags overriding its fields."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(TRAIN_PRESETS))
    base = TRAIN_PRESETS["demo-teacher"]
    for f in asdict(base):
        if f in ("phases", "stage"):
            continue
        value = getattr(base, f)
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        ap.add_argument("--" + f.replace("_", "-"), type=kind, default=None)
    args = vars(ap.parse_args(argv))
    preset = TRAIN_PRESETS[args.pop("preset")]
    return replace(preset, **{k: v for k, v in args.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(train(config_from_args(argv))))


if __name__ == "__main__":
    main()
