"""Recipe: train the demo causal VAE, or distil the tiny decoder from a trained VAE, on video clips.

config → build → loop → save. Losses:
  * VAE: masked L1 + λ_ssim·(1 − SSIM) on the reconstruction (L1 keeps colours exact, SSIM keeps edges and
    texture that L1 alone blurs), + λ_kl·KL(q(z|x) ‖ N(0, I)) with a small weight so the latent stays smooth
    for the DiT without costing detail (as in LDM/Wan's VAEs). The L1 is weighted per pixel by
    1 + λ_face·face + λ_mouth·mouth from SynthTalk's masks: the mouth is ~1% of the frame, yet lip sync is
    read there, and a plain L1 spends the capacity on the background. No GAN term: on SynthTalk's flat-shaded portraits
    L1 + SSIM already reach a sharp reconstruction, and a discriminator would double the cost.
  * tiny decoder: distillation — decode the frozen VAE's latents and match the VAE's own decode (same
    latent space, same look), plus half-weight L1 + SSIM to the real frames.
Resumable: `out/last.safetensors` (weights), `out/optim.safetensors` (AdamW state), `out/state.json`; logs
in `out/log.jsonl`. The final checkpoint carries its config, with the latent mean/std measured on the data.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoints.io import read_state, save_state
from engine.checkpoints.vae import load_tiny_vae, load_vae, save_vae
from engine.data.synthtalk import Bank, SynthTalk
from engine.errors import ConfigError
from engine.models.tiny_vae import MemoryState, TinyVAE, tiny_vae_config
from engine.models.vae import CausalVAE, vae_config
from engine.train.widen import widen_tiny, widen_vae


@dataclass(frozen=True)
class TrainVAEConfig:
    data: str  # SynthTalk folder(s), comma-separated
    out: str  # run folder
    model: str = "vae"  # "vae" or "tiny"
    preset: str = "demo"
    teacher: str = ""  # trained VAE checkpoint, for model="tiny"
    init: str = ""  # start from these weights (a previous run's final checkpoint) instead of from scratch
    resolution: int = 128
    frames: int = 9
    batch: int = 4
    steps: int = 2000
    lr: float = 2e-4
    warmup: int = 100  # steps of linear learning-rate warm-up
    ssim_weight: float = 0.5
    kl_weight: float = 1e-6
    face_weight: float = 1.0  # extra L1 weight on face pixels
    mouth_weight: float = 8.0  # extra L1 weight on lips and mouth pixels
    mouth_truth_weight: float = 0.0  # tiny decoder: an extra L1 on the mouth's pixels against the true frames (not
    # the VAE's decode): the opening the latents hold, shown as the clip showed it rather than as the VAE renders it
    save_every: int = 200
    log_every: int = 20
    eval_clips: int = 16
    max_clips: int = 0  # clips of the training split held in memory (0: all; a 4 s 256² clip is ~20 MB)
    reader: str = ""  # a trained mouth reader: evaluation also reads the mouth on reconstructions
    latent_noise: float = 0.0  # tiny decoder: the latents it decodes get Gaussian noise of a std drawn per clip
    # in [0, latent_noise] (the target stays the VAE's decode of the clean latents), so that a generator's
    # latents, which are never exactly the VAE's, do not move its colours
    tiny_layers: str = "all"  # tiny decoder: "all" its decoder learns; "first" only its first convolution, the rest
    # frozen (a decoder gaining the portrait's latent as an input learns to use it without moving what works)
    teacher_clips: int = 0  # tiny decoder: train on this many whole clips of the split, each from its first frame as
    # a stream starts, with the teacher's latents and decodes computed once (0: random windows, the teacher run on
    # every batch). For a fine-tune on a CPU, where the teacher's pass is most of each step's cost
    decoder_only: bool = False  # fine-tune the decoder of `init` alone: the latent space (and any DiT
    # trained on it) stays as it is, as with the ft-MSE decoders of latent diffusion
    time_budget_s: float = 0.0  # stop training after this long (0: run all steps); the run stays resumable
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    bf16: bool = torch.cuda.is_available()

    def __post_init__(self) -> None:
        if self.model not in ("vae", "tiny"):
            raise ConfigError(f"model must be 'vae' or 'tiny', got {self.model!r}")
        if self.model == "tiny" and not self.teacher:
            raise ConfigError("the tiny decoder is distilled from a trained VAE: pass teacher=PATH")
        if self.tiny_layers not in ("all", "first") or self.tiny_layers == "first" and self.model != "tiny":
            raise ConfigError(f"tiny_layers is 'all' or 'first' (the tiny decoder's first convolution alone), got "
                              f"{self.tiny_layers!r} for model {self.model!r}")
        if self.mouth_truth_weight and self.model != "tiny":
            raise ConfigError("mouth_truth_weight weighs the tiny decoder's mouth against the true frames: model='tiny' "
                              "(a VAE already trains on the true frames: raise mouth_weight)")
        if self.teacher_clips and self.model != "tiny":
            raise ConfigError("teacher_clips caches a VAE's latents and decodes for the tiny decoder: model='tiny'")


# ----------------------------------------------------------------------------- metrics

def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum())[:, None] * (g / g.sum())[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, 11×11 Gaussian window) of frames [N, C, H, W] in [-1, 1]."""
    a, b = (a.float() + 1) / 2, (b.float() + 1) / 2
    c = a.shape[1]
    w = _gaussian().to(a.device)[None, None].expand(c, 1, -1, -1)
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    var_a = F.conv2d(a * a, w, groups=c) - mu_a ** 2
    var_b = F.conv2d(b * b, w, groups=c) - mu_b ** 2
    cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B*T, 3, H, W]."""
    return video.transpose(1, 2).flatten(0, 1)


def reconstruction_loss(x: torch.Tensor, target: torch.Tensor, ssim_weight: float,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) L1 + λ·(1 − SSIM). `weight` [B, 1, T, H, W] ≥ 1, normalised so the L1 keeps its scale."""
    l1 = (x - target).abs()
    l1 = (l1 * weight).sum() / (weight.sum() * x.shape[1]) if weight is not None else l1.mean()
    return l1 + ssim_weight * (1 - ssim(frames_of(x), frames_of(target)))


def pixel_weight(masks: torch.Tensor, face_weight: float, mouth_weight: float) -> torch.Tensor:
    """masks [B, 2, T, H, W] (face, mouth) in [0, 1] -> weight [B, 1, T, H, W]."""
    return 1 + face_weight * masks[:, :1] + mouth_weight * masks[:, 1:]


def mouth_l1(x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """L1 over the mouth's pixels (weighted by the mouth mask), per pixel and channel."""
    w = masks[:, 1:]
    return ((x - target).abs() * w).sum() / (w.sum() * x.shape[1]).clamp(min=1)


# ----------------------------------------------------------------------------- checkpoints

def perturbed(z: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Latents [B, z, F, h, w] plus Gaussian noise whose std is drawn per clip in [0, std]."""
    if std <= 0:
        return z
    scale = torch.rand(z.shape[0], 1, 1, 1, 1, generator=g, device=z.device) * std
    return z + scale.to(z.dtype) * torch.randn(z.shape, generator=g, device=z.device).to(z.dtype)


@dataclass
class TeacherCache:
    """Whole clips with the teacher's latents and decodes, computed once: uint8 frames, decodes [N, 3, T, S, S],
    masks [N, 2, T, S, S], latents [N, z, F, h, w]."""

    frames: torch.Tensor
    decodes: torch.Tensor
    masks: torch.Tensor
    latents: torch.Tensor

    @staticmethod
    def build(teacher: CausalVAE, bank: Bank, clips: int, frames: int, device: str) -> TeacherCache:
        if clips > len(bank.frames) or frames > bank.frames.shape[1]:
            raise ConfigError(f"teacher_clips={clips} of {frames} frames, but the split holds {len(bank.frames)} "
                              f"clips of {bank.frames.shape[1]}: ask for fewer, or pass a larger --max-clips")
        parts: dict[str, list[torch.Tensor]] = {"frames": [], "decodes": [], "masks": [], "latents": []}
        for i in range(clips):
            video = bank.frames[i:i + 1, :frames].permute(0, 4, 1, 2, 3)
            with torch.no_grad():
                z = teacher.encode(video.to(device).float() / 127.5 - 1)
                y = teacher.decode(z).clamp(-1, 1)
            parts["frames"].append(video.cpu())
            parts["decodes"].append((y * 127.5 + 127.5).round().to(torch.uint8).cpu())
            parts["masks"].append(bank.masks[i:i + 1, :frames].permute(0, 4, 1, 2, 3).cpu())
            parts["latents"].append(z.float().cpu())
        return TeacherCache(**{k: torch.cat(v) for k, v in parts.items()})

    def batch(self, size: int, g: torch.Generator, device: str) -> tuple[torch.Tensor, ...]:
        """Random whole clips: (frames, teacher decodes) in [-1, 1], masks in [0, 1], latents."""
        i = torch.randint(len(self.frames), (size,), generator=g)
        return (self.frames[i].to(device).float() / 127.5 - 1, self.decodes[i].to(device).float() / 127.5 - 1,
                self.masks[i].to(device).float() / 255, self.latents[i].to(device))


def save_optimizer(path: Path, opt: torch.optim.Optimizer) -> None:
    tensors = {}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{i}.{name}"] = torch.as_tensor(value)
    save_state(path, tensors)


def load_optimizer(path: Path, opt: torch.optim.Optimizer) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in read_state(path).items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    full = opt.state_dict()
    full["state"] = state
    opt.load_state_dict(full)


def save_checkpoint(out: Path, model, opt: torch.optim.Optimizer, step: int, cfg: TrainVAEConfig) -> None:
    save_vae(out / "last.safetensors", model)  # with its config: a run cut short still ships its last checkpoint
    save_optimizer(out / "optim.safetensors", opt)
    (out / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}))


# ----------------------------------------------------------------------------- the recipe

START_FRAMES = 17  # a clip's start: the window the first demo VAE was trained on
LATE_FROM = 48  # from here on the demo VAE's receptive field (~80 frames) holds mostly real frames


@torch.no_grad()
def evaluate(model, teacher, bank: Bank, cfg: "TrainVAEConfig") -> dict[str, float]:
    """PSNR / SSIM of whole held-out clips reconstructed (for the tiny decoder: from the VAE's latents), PSNR
    on the mouth alone, and PSNR over a clip's first frames against its frames from LATE_FROM on. A causal VAE
    trained on short windows can reconstruct a clip's start and drift after it, once its receptive field holds
    real frames rather than the causal padding: `psnr_late` below `psnr_start` shows it."""
    model.eval()
    s = model.cfg.temporal_stride
    t = 1 + (bank.frames.shape[1] - 1) // s * s
    n = min(cfg.eval_clips, bank.frames.shape[0])
    scores = {"psnr": 0.0, "ssim": 0.0, "mouth_psnr": 0.0, "psnr_start": 0.0, "psnr_late": 0.0}
    for i in range(n):
        x = (bank.frames[i:i + 1, :t].permute(0, 4, 1, 2, 3).float() / 127.5 - 1).to(cfg.device)  # [1, 3, T, H, W]
        mouth = (bank.masks[i:i + 1, :t, ..., 1:].permute(0, 4, 1, 2, 3).float() / 255).to(cfg.device)
        y = model.decode((teacher or model).encode(x)).float()
        per_frame = ((y - x) ** 2).mean(dim=(0, 1, 3, 4))  # [T]
        start, late = min(START_FRAMES, t - 1), min(LATE_FROM, t - 1)
        scores["psnr"] += psnr(y, x) / n
        scores["psnr_start"] += float(10 * np.log10(4.0 / max(per_frame[:start].mean().item(), 1e-12))) / n
        scores["psnr_late"] += float(10 * np.log10(4.0 / max(per_frame[late:].mean().item(), 1e-12))) / n
        scores["ssim"] += ssim(frames_of(y), frames_of(x)).item() / n
        mse = (((y - x) ** 2) * mouth).sum() / (mouth.sum() * 3).clamp(min=1)
        scores["mouth_psnr"] += float(10 * np.log10(4.0 / max(mse.item(), 1e-12))) / n
    if cfg.reader:  # can the mouth still be read after the round trip? (the lip-sync metric needs it)
        scores.update(reader_scores(model, teacher, bank, cfg))
    model.train()
    return scores


@torch.no_grad()
def reader_scores(model, teacher, bank: Bank, cfg: "TrainVAEConfig", clips: int = 8) -> dict[str, float]:
    """Pearson r of the mouth reader's opening against the truth on whole held-out clips: on the frames
    themselves (the ceiling) and on their reconstructions."""
    from engine.checkpoints.io import config_from_metadata, read_metadata
    from engine.eval.metrics import pearson
    from engine.eval.nets import MouthReader, ReaderConfig
    from engine.generate.decoders import to_uint8

    reader = MouthReader(config_from_metadata(read_metadata(cfg.reader), ReaderConfig)).to(cfg.device)
    reader.load_state_dict(read_state(cfg.reader))
    s = model.cfg.temporal_stride
    t = 1 + (bank.frames.shape[1] - 1) // s * s
    r_true, r_rec = [], []
    for i in range(min(clips, bank.frames.shape[0])):
        frames = bank.frames[i, :t]
        x = (frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1).to(cfg.device)  # [1, 3, T, H, W]
        y = to_uint8(model.decode((teacher or model).encode(x)).clamp(-1, 1))
        truth = bank.truth["mouth_open"][i, :t].cpu().numpy()
        r_true.append(pearson(reader.read(frames)[:, 0].numpy(), truth))
        r_rec.append(pearson(reader.read(y)[:, 0].numpy(), truth))
    return {"reader_r_frames": float(np.mean(r_true)), "reader_r_reconstructed": float(np.mean(r_rec))}


@torch.no_grad()
def latent_statistics(vae: CausalVAE, bank: Bank, cfg: "TrainVAEConfig", n: int):
    """Per-channel mean and std of the unnormalised posterior means over `n` windows."""
    g = torch.Generator(device=bank.frames.device).manual_seed(54321)
    zs = torch.cat([vae.encode(bank.windows(1, cfg.frames, g)[0].to(cfg.device)).transpose(0, 1).flatten(1)
                    for _ in range(n)], 1)
    raw = zs * vae.std.view(-1, 1) + vae.mean.view(-1, 1)
    return raw.mean(1).cpu(), raw.std(1).cpu()


def load_banks(cfg: "TrainVAEConfig") -> tuple[Bank, Bank]:
    folders = cfg.data.split(",")
    train_set, eval_set = SynthTalk(folders, "train"), SynthTalk(folders, "eval")
    return (train_set.bank(cfg.resolution, cfg.device, cfg.max_clips or None),
            eval_set.bank(cfg.resolution, cfg.device, max(cfg.eval_clips, 1)))


def train(cfg: TrainVAEConfig) -> dict[str, float]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train_bank, eval_bank = load_banks(cfg)
    teacher = load_vae(cfg.teacher).to(cfg.device) if cfg.model == "tiny" else None
    if teacher is not None:
        teacher.requires_grad_(False)
    if cfg.decoder_only:
        if cfg.model != "vae" or not cfg.init:
            raise ConfigError("decoder_only fine-tunes the decoder of a trained VAE: model='vae' and init=PATH")
        model = load_vae(cfg.init)  # its config carries the latent statistics, which stay
    else:
        model = CausalVAE(vae_config(cfg.preset)) if cfg.model == "vae" else \
            TinyVAE(replace(tiny_vae_config(cfg.preset), z_dim=teacher.cfg.z_dim))  # the teacher's latent space
    model = model.to(cfg.device).train()
    if cfg.decoder_only:
        model.encoder.requires_grad_(False)
        model.conv1.requires_grad_(False)
    if cfg.tiny_layers == "first":
        model.requires_grad_(False)
        model.decoder[1].requires_grad_(True)  # conv(z (+ the reference's z), widths[0]), after the clamp
    params = ([p for p in model.decoder.parameters() if p.requires_grad] if cfg.model == "tiny" else
              [p for p in model.parameters() if p.requires_grad])
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step = 0
    if cfg.init and not cfg.decoder_only:  # through the loaders: names checked; a shipped tiny file has no encoder
        init = load_vae(cfg.init) if cfg.model == "vae" else load_tiny_vae(cfg.init)
        # a wider latent space, or a tiny decoder that gains the reference input: from the trained weights (Net2Net)
        if cfg.model == "vae" and init.cfg.z_dim != model.cfg.z_dim:
            widen_vae(init, model)
        elif cfg.model == "tiny" and (init.cfg.z_dim, init.cfg.reference) != (model.cfg.z_dim, model.cfg.reference):
            widen_tiny(init, model)
        else:
            model.load_state_dict(init.state_dict(), strict=init.encoder is not None)
    if (out / "state.json").exists():  # resume
        state = json.loads((out / "state.json").read_text())
        model.load_state_dict(read_state(out / "last.safetensors"))
        load_optimizer(out / "optim.safetensors", opt)
        step = state["step"]
    cache = TeacherCache.build(teacher, train_bank, cfg.teacher_clips, cfg.frames, cfg.device) \
        if cfg.teacher_clips else None
    data_g = torch.Generator(device="cpu" if cache else train_bank.frames.device).manual_seed(cfg.seed * 1_000_003 + step)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed + step)
    log = (out / "log.jsonl").open("a")
    t0 = time.perf_counter()
    while step < cfg.steps and not (cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s):
        if cache is not None:
            x, target, masks, z = cache.batch(cfg.batch, data_g, cfg.device)
        else:
            x, masks = train_bank.windows(cfg.batch, cfg.frames, data_g)
            x, masks = x.to(cfg.device), masks.to(cfg.device)
        weight = pixel_weight(masks, cfg.face_weight, cfg.mouth_weight)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.bf16):
            if teacher is None:
                y, mu, log_var = model(x, generator)
            else:
                if cache is None:
                    with torch.no_grad():
                        z = teacher.encode(x)
                        target = teacher.decode(z)
                z = perturbed(z, cfg.latent_noise, generator)
                y = model.decode_chunk(z, MemoryState(), clamp=False)
        # losses in float32, outside autocast: SSIM's variances cancel catastrophically in bf16
        if teacher is None:
            kl = 0.5 * (mu.float() ** 2 + log_var.float().exp() - 1 - log_var.float()).mean()
            loss = reconstruction_loss(y.float(), x, cfg.ssim_weight, weight) + cfg.kl_weight * kl * (not cfg.decoder_only)
        else:
            loss = reconstruction_loss(y.float(), target.float(), cfg.ssim_weight, weight) \
                + 0.5 * reconstruction_loss(y.float(), x, cfg.ssim_weight, weight)
            if cfg.mouth_truth_weight:
                loss = loss + cfg.mouth_truth_weight * mouth_l1(y.float(), x, masks)
        # linear warm-up, then a cosine decay over the steps or the time budget, whichever ends first
        progress = max(step / cfg.steps, (time.perf_counter() - t0) / cfg.time_budget_s if cfg.time_budget_s else 0)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.55 + 0.45 * np.cos(np.pi * min(progress, 1.0)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.write(json.dumps({"step": step, "loss": loss.item(), "s": round(time.perf_counter() - t0, 1)}) + "\n")
            log.flush()
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(out, model, opt, step, cfg)
    save_checkpoint(out, model, opt, step, cfg)
    if teacher is None and not cfg.decoder_only:  # measure the latent statistics the DiT will be normalised with
        mean, std = latent_statistics(model, train_bank, cfg, max(4, cfg.eval_clips))
        final = CausalVAE(model.cfg.with_statistics(mean, std)).to(cfg.device)
        final.load_state_dict(model.state_dict())
        model = final
    scores = evaluate(model, teacher, eval_bank, cfg)
    save_vae(out / "final.safetensors", model, metrics=json.dumps(scores), steps=str(step))
    log.write(json.dumps({"step": step, "eval": scores}) + "\n")
    log.close()
    return scores


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainVAEConfig(data="", out="")
    for name, value in asdict(defaults).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value) if not isinstance(value, bool) else
                        (lambda s: s.lower() in ("1", "true", "yes")), default=value)
    args = ap.parse_args(argv)
    print(json.dumps(train(replace(defaults, **vars(args)))))


if __name__ == "__main__":
    main()
