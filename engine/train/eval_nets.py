"""Recipe: train the two reading networks of `talkstream eval` on SynthTalk (engine/eval/nets.py).

config → build → loop → save. Frames come from a SynthTalk bank in memory (on the GPU when there is one)
and are degraded on the fly — blur, down-and-up sampling, noise, brightness and small shifts — because the
readers must read generated frames, which are softer than the renderer's, as well as real ones.

  * mouth: smooth-L1 regression of the ground-truth opening (weighted 2x), width and rounding.
    Scored on held-out clips by the Pearson correlation of the read opening with the truth.
  * identity: two views (frames at different times of one clip: other mouth, pose, blink) of P identities
    per batch; additive-margin softmax against the batch's other identities and against `public`
    identities that belong to no split (rendered here from their own seed). Scored by the ROC AUC of
    same- against different-identity pairs of held-out clips.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoints.io import save_state
from engine.data.synthtalk import Bank, SynthTalk
from engine.errors import ConfigError
from engine.eval.metrics import pearson, roc_auc
from engine.eval.nets import IdentityEmbedder, MouthReader, margin_loss, prepare, reader_config

PUBLIC_SEED = 777_777  # identities of no split: Identity.sample(default_rng([PUBLIC_SEED, i]))


@dataclass(frozen=True)
class TrainReaderConfig:
    data: str  # SynthTalk folder(s), comma-separated
    out: str  # run folder; writes final.safetensors and log.jsonl
    model: str = "mouth"  # "mouth" or "identity"
    steps: int = 3000
    batch: int = 128  # frames (mouth) or identities (identity)
    lr: float = 1e-3
    warmup: int = 100
    public_identities: int = 512
    eval_clips: int = 64
    max_clips: int = 0
    vae: str = ""  # half of each batch (mouth) or of the second views (identity) is this VAE's reconstructions
    time_budget_s: float = 0.0
    log_every: int = 50
    seed: int = 0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def __post_init__(self) -> None:
        if self.model not in ("mouth", "identity"):
            raise ConfigError(f"model must be 'mouth' or 'identity', got {self.model!r}")


# ----------------------------------------------------------------------------- degradations

def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x [N, 3, S, S] in [-1, 1] -> the same frames, each blurred, resampled, shifted and noised at random."""
    n, dev = x.shape[0], x.device
    u = torch.rand(n, 5, generator=g, device=dev)
    # down-and-up sampling by 1x-2.5x (a VAE's softness)
    small = _resample(x, 1 + 1.6 * u[:, 0])
    # small shifts (up to 4% of the frame), brightness/contrast, noise
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = (u[:, 1:3] - 0.5) * 0.08
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(small, grid, padding_mode="border", align_corners=False)
    y = y * (0.85 + 0.3 * u[:, 3, None, None, None]) + (u[:, 4, None, None, None] - 0.5) * 0.2
    y = y + torch.randn(y.shape, generator=g, device=dev) * 0.03 * torch.rand(n, 1, 1, 1, generator=g, device=dev)
    return y.clamp(-1, 1)


def _resample(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Down-sample each frame by its own factor (area), then back up (bilinear), in a few groups."""
    s = x.shape[-1]
    out = x.clone()
    for lo, hi in ((1.25, 1.75), (1.75, 2.25), (2.25, 2.6)):
        pick = (scale >= lo) & (scale < hi)
        if pick.any():
            size = int(s / ((lo + hi) / 2))
            out[pick] = F.interpolate(F.interpolate(x[pick], size=size, mode="area"), size=s, mode="bilinear",
                                      align_corners=False)
    return out


# ----------------------------------------------------------------------------- data

def random_frames(bank: Bank, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (clip, frame) pairs -> (uint8 frames [n, S, S, 3], indices [n, 2])."""
    dev = bank.frames.device
    c = torch.randint(bank.frames.shape[0], (n,), generator=g, device=dev)
    t = torch.randint(bank.frames.shape[1], (n,), generator=g, device=dev)
    return bank.frames[c, t], torch.stack([c, t], 1)


def public_frames(count: int, size: int, seed: int = PUBLIC_SEED) -> torch.Tensor:
    """uint8 [count, size, size, 3]: one frame each of `count` identities from no split, random pose,
    expression, mouth and blink."""
    from engine.data.motion import EXPRESSIONS, face_state, sample_motion
    from engine.data.portrait import Identity, render

    frames = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        motion = sample_motion(rng, 1, 25, np.ones(1, bool), int(rng.integers(len(EXPRESSIONS))))
        state = face_state(rng.uniform(0, 0.6, 1), rng.uniform(0.3, 0.7, 1), rng.uniform(0, 1, 1), motion)
        frames.append(render(Identity.sample(rng), state, size).frames[0])
    return torch.from_numpy(np.stack(frames))


@torch.no_grad()
def reconstructed_clip(vae, frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, S, S, 3] (T = 1 + 4k) -> its VAE round trip, uint8 [T, S, S, 3]."""
    video = frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    y = vae.decode(vae.encode(video)).float()
    return ((y[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)


@torch.no_grad()
def reconstructed(vae, bank: Bank, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n frames taken from VAE round trips of 9-frame windows: (uint8 [n, S, S, 3], indices [n, 2])."""
    k = 9
    clips, idx = bank.window_index((n + k - 1) // k, k, g)
    video = bank.frames[clips[:, None], idx].permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # [b, 3, k, S, S]
    with torch.autocast("cuda", torch.bfloat16, enabled=video.is_cuda):
        y = vae.decode(vae.encode(video)).float()
    frames = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).flatten(0, 1)
    index = torch.stack([clips[:, None].expand(-1, k), idx], -1).flatten(0, 1)
    return frames[:n], index[:n]


@torch.no_grad()
def reconstructed_at(vae, bank: Bank, clips: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The VAE round trip of frame t of each clip, uint8 [n, S, S, 3]: the last frame of the 5-frame window
    that ends there (a frame in mid-stream, as generated frames are; t < 4 takes the window 0..4)."""
    end = t.clamp(min=4)
    idx = end[:, None] - 4 + torch.arange(5, device=t.device)
    video = bank.frames[clips[:, None], idx].permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # [n, 3, 5, S, S]
    with torch.autocast("cuda", torch.bfloat16, enabled=video.is_cuda):
        y = vae.decode(vae.encode(video)).float()
    pick = (t - end + 4).clamp(min=0)  # frame t inside the window
    y = y[torch.arange(len(t), device=t.device), :, pick]  # [n, 3, S, S]
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------- scores

@torch.no_grad()
def score_mouth(model: MouthReader, bank: Bank) -> dict[str, float]:
    """Mean over held-out clips of the Pearson r between read and true opening; and its mean abs error."""
    model.eval()
    rs, errs = [], []
    for i in range(bank.frames.shape[0]):
        read = model.read(bank.frames[i])[:, 0].numpy()
        truth = bank.truth["mouth_open"][i].cpu().numpy()
        rs.append(pearson(read, truth))
        errs.append(np.abs(read - truth).mean())
    model.train()
    return {"correlation": float(np.mean(rs)), "mae": float(np.mean(errs))}


@torch.no_grad()
def score_identity(model: IdentityEmbedder, bank: Bank, pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """ROC AUC of cosine similarity: frames of one clip (same identity) against frames of two clips."""
    model.eval()
    n, t = bank.frames.shape[:2]
    g = torch.Generator().manual_seed(seed)
    emb = torch.stack([model.embed(bank.frames[i, ::max(1, t // 16)]) for i in range(n)])  # [N, 16, D]
    k = emb.shape[1]
    a, b = torch.randint(n, (pairs,), generator=g), torch.randint(n - 1, (pairs,), generator=g)
    b = b + (b >= a).long()
    i, j = torch.randint(k, (pairs,), generator=g), torch.randint(k, (pairs,), generator=g)
    same = (emb[a, i] * emb[a, (i + 1 + j % (k - 1)) % k]).sum(-1).numpy()
    different = (emb[a, i] * emb[b, j]).sum(-1).numpy()
    model.train()
    return {"roc_auc": roc_auc(same, different), "same_mean": float(same.mean()),
            "different_mean": float(different.mean())}


# ----------------------------------------------------------------------------- the recipe

def train(cfg: TrainReaderConfig) -> dict[str, float]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net_cfg = reader_config(cfg.model)
    folders = cfg.data.split(",")
    size = net_cfg.input_size
    train_bank = SynthTalk(folders, "train").bank(size, cfg.device, cfg.max_clips or None)
    eval_bank = SynthTalk(folders, "eval").bank(size, cfg.device, cfg.eval_clips)
    model = (MouthReader(net_cfg) if cfg.model == "mouth" else IdentityEmbedder(net_cfg)).to(cfg.device).train()
    public = public_frames(cfg.public_identities, size).to(cfg.device) if cfg.model == "identity" else None
    vae = None
    if cfg.vae:
        from engine.checkpoints.vae import load_vae

        vae = load_vae(cfg.vae).to(cfg.device).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    g = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    log = (out / "log.jsonl").open("a")
    t0 = time.perf_counter()
    step = 0
    while step < cfg.steps and not (cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s):
        progress = max(step / cfg.steps, (time.perf_counter() - t0) / cfg.time_budget_s if cfg.time_budget_s else 0)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        if cfg.model == "mouth":
            frames, idx = random_frames(train_bank, cfg.batch, g)
            if vae is not None:  # half the batch: frames through the VAE, as generated frames are
                frames[: cfg.batch // 2], idx[: cfg.batch // 2] = reconstructed(vae, train_bank, cfg.batch // 2, g)
            target = torch.stack([train_bank.truth[k][idx[:, 0], idx[:, 1]]
                                  for k in ("mouth_open", "mouth_width", "mouth_round")], 1)
            pred = model(degrade(prepare(frames, size), g))
            loss = (F.smooth_l1_loss(pred, target, beta=0.05, reduction="none")
                    * torch.tensor([2.0, 1.0, 1.0], device=pred.device)).mean()
        else:
            n, t = train_bank.frames.shape[:2]
            clips = torch.randperm(n, generator=g, device=cfg.device)[: cfg.batch]
            t1 = torch.randint(t, (len(clips),), generator=g, device=cfg.device)
            t2 = (t1 + torch.randint(t // 4, t, (len(clips),), generator=g, device=cfg.device)) % t
            second = train_bank.frames[clips, t2]
            if vae is not None:  # half the second views through the VAE: generated frames are judged too
                h = len(clips) // 2
                second = torch.cat([reconstructed_at(vae, train_bank, clips[:h], t2[:h]), second[h:]])
            views = torch.cat([train_bank.frames[clips, t1], second])
            assert public is not None
            negs = public[torch.randint(len(public), (cfg.batch,), generator=g, device=cfg.device)]
            emb = model(degrade(prepare(torch.cat([views, negs]), size), g))
            a, p, m = emb[: len(clips)], emb[len(clips): 2 * len(clips)], emb[2 * len(clips):]
            loss = 0.5 * (margin_loss(a, p, m) + margin_loss(p, a, m))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % cfg.log_every == 0:
            log.write(json.dumps({"step": step, "loss": loss.item(), "s": round(time.perf_counter() - t0, 1)}) + "\n")
            log.flush()
    scores = score_mouth(model, eval_bank) if cfg.model == "mouth" else score_identity(model, eval_bank)  # type: ignore[arg-type]
    if vae is not None:  # the same score on the VAE's reconstructions of the held-out clips
        with torch.no_grad():
            t = 1 + (eval_bank.frames.shape[1] - 1) // 4 * 4
            rec = [reconstructed_clip(vae, eval_bank.frames[i, :t]) for i in range(eval_bank.frames.shape[0])]
        recon_bank = Bank(torch.stack(rec), eval_bank.masks[:, :t], {k: v[:, :t] for k, v in eval_bank.truth.items()},
                          eval_bank.audio, eval_bank.identity_ids, eval_bank.rows)
        score = score_mouth if cfg.model == "mouth" else score_identity
        scores |= {f"reconstructed_{k}": v for k, v in score(model, recon_bank).items()}  # type: ignore[arg-type]
        if cfg.model == "identity":  # a frame against the VAE round trip of its own clip
            scores["reconstructed_to_original"] = round(float(np.mean([
                (model.embed(eval_bank.frames[i, :t:8]) * model.embed(recon_bank.frames[i, ::8])).sum(-1).mean()
                for i in range(eval_bank.frames.shape[0])])), 4)
    save_state(out / "final.safetensors", model.state_dict(), net_cfg, kind=type(model).__name__,
               metrics=json.dumps(scores), steps=str(step), recipe=json.dumps(asdict(cfg)))
    log.write(json.dumps({"step": step, "eval": scores}) + "\n")
    log.close()
    return scores


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainReaderConfig(data="", out="")
    for name, value in asdict(defaults).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args(argv)
    print(json.dumps(train(replace(defaults, **vars(args)))))


if __name__ == "__main__":
    main()
