"""Recipe: self-forcing rollouts with distribution matching (the stage after the ODE initialisation).

Exposure bias is what the earlier stages leave: the student learnt each chunk from clean (real or teacher)
history, but streams on its own outputs. Here it trains on its own outputs (Self-Forcing): each step it
streams a window chunk by chunk exactly as the StreamingGenerator does — x̂0 from noise through the few-step
σs, re-noised between steps, every finished chunk becoming clean history for the next — and the loss is
taken on the whole rollout by distribution matching distillation (DMD, as CausVid and Self-Forcing use):

  1. rollout: a random exit step k (the same for every chunk of one rollout); steps before k run without
     gradient, step k keeps it, so the generator learns every step count it is used with (4, 2, 1);
     history is detached: finished chunks go into a KV cache of the streaming window, as in a stream.
  2. DMD: re-noise the rollout x̂0 at a random σ; the frozen teacher (with audio CFG) and the fake score
     (trained on the generator's outputs) each predict x0; their difference is the gradient of the
     KL between the generator's and the data distribution, pushed into x̂0 through a stop-gradient target
     (normalised by the mean distance to the teacher's x0, DMD's weighting), weighted by the facial mask.
  3. the fake score learns the generator's current outputs by flow matching (`fake_updates` per step).
  4. with `data_weight` > 0, the diffusion-forcing loss on real clips (the earlier stages' loss) is added to
     the generator's: DMD pulls towards the teacher's distribution, this keeps it on the data's, the
     portrait's identity above all (the teacher renders identity worse than the distilled student).
     `dmd_region` "face" or "mouth" keeps DMD off the rest of the frame (the teacher renders the backdrop and
     the face's identity worse than the distilled student), where the anchor alone acts.
  5. with `backdrop_weight` > 0, the rollout's backdrop (over a latent pixel away from the face) regresses on
     the clip's true latents: it is still in a talking portrait, so there the truth is the one right answer.
  6. with `mouth_truth_weight` > 0, the rollout's mouth (the mouth mask's latent pixels) regresses on the clip's
     true latents: the opening the clip's audio made, in silence too, learnt under the generator's own history.
  7. with `silence_weight` > 0, the same regression in the quiet latent frames alone (0.2 s or more from speech):
     there the resting mouth is the one right answer, so DMD on the mouth cannot open it in silence.
  8. `dmd_weight` 0 drops DMD (and the teacher and fake score with it): the anchor and the backdrop regression
     alone train the rollouts, the control of what DMD adds. `rollout_frames` sets a rollout's length (the last
     phase's frames by default), up to a whole evaluated stream.

Writes like engine/train/dit.py (same config, data cache, logs, checkpoints, resume): `talkstream train
demo-selfforce --init DISTILLED --teacher TEACHER`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoints.io import read_state
from engine.checkpoints.wan import load_dit, save_dit
from engine.diffusion.flow import add_noise, x0_from_velocity
from engine.diffusion.guidance import cfg as guidance
from engine.diffusion.schedules import shift_sigmas
from engine.errors import ConfigError
from engine.generate.streaming import sigma_list
from engine.models.attention import KVCache
from engine.models.dit import DiT, emotion_tokens
from engine.train.dit import (LatentClips, Phase, TrainDiTConfig, data_loss, latent_clips, layout_for, masked_mse,
                              save_checkpoint, velocity)


def rollout(generator: DiT, data: LatentClips, clips: torch.Tensor, starts: torch.Tensor, cfg: TrainDiTConfig,
            grid, exit_step: int, g: torch.Generator) -> torch.Tensor:
    """Stream `frames` latent frames chunk by chunk from noise with the generator's own history, through a KV
    cache of `cfg.window` frames beside the reference sink, as the StreamingGenerator streams; returns x̂0
    [B, C, F, h, w], differentiable through each chunk's exit step only. The cache holds keys and values
    computed without gradient (the sink's, and each finished chunk's clean pass at σ = 0), so each step of
    each chunk costs one pass over that chunk alone, not over its history."""
    frames = rollout_length(cfg)
    _, ref, audio, _ = data.window(clips, starts, frames)
    sigmas = sigma_list(cfg.few_steps, cfg.few_shift)[: exit_step + 1]
    audio_tokens = generator.encode_audio(audio)
    text_kv = generator.encode_text(emotion_tokens(data.expression[clips], generator.cfg.text_dim))
    b, c, device = len(clips), cfg.chunk, ref.device
    shape = (b, data.latents.shape[1], c, *grid)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16)
    cache = KVCache(generator.cache_config(generator.token_grid(grid), 1, cfg.window), b, device)  # float32 keys
    with torch.no_grad(), autocast:
        generator(ref, torch.zeros(b, 1, device=device), cache.sink(), text_kv=text_kv, sink_frames=1)
    chunks: list[torch.Tensor] = []
    for start in range(0, frames, c):
        chunk_audio = audio_tokens[:, start:start + c]
        x = torch.randn(shape, generator=g, device=g.device)
        for i, sigma in enumerate(sigmas):
            last = i == len(sigmas) - 1
            with torch.set_grad_enabled(last and torch.is_grad_enabled()), autocast:
                t = torch.full((b, c), 1000.0 * sigma, device=device)
                v = generator(x, t, cache.chunk(c), audio=chunk_audio, text_kv=text_kv)
            x0 = x0_from_velocity(x.float(), v.float(), sigma)
            if not last:
                x = add_noise(x0.detach(), torch.randn(shape, generator=g, device=g.device), sigmas[i + 1])
        with torch.no_grad(), autocast:  # the finished chunk becomes clean history
            generator(x0.detach(), torch.zeros(b, c, device=device), cache.chunk(c, write=True), audio=chunk_audio,
                      text_kv=text_kv)
        cache.advance(c)
        chunks.append(x0)
    return torch.cat(chunks, 2)


def rollout_length(cfg: TrainDiTConfig) -> int:
    """Latent frames of each rollout: `rollout_frames`, or the last phase's frames."""
    return cfg.rollout_frames or cfg.phases[-1].frames


def dmd_loss(x0: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, phase: Phase, region: str) -> torch.Tensor:
    """DMD's regression of x̂0 on its target, over `region`: "frame" (the facial-mask weights), "face" (the
    face and mouth terms alone) or "mouth" (the mouth term alone)."""
    if region == "frame":
        return masked_mse(x0, target, masks, phase)
    return masked_mse(x0, target, masks, replace(phase, face_weight=0.0) if region == "mouth" else phase, background=0.0)


def mouth_truth_loss(x0: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor, phase: Phase) -> torch.Tensor:
    """Mean squared error over the mouth mask's latent pixels (weighted by the mask), against the true latents."""
    return masked_mse(x0, truth, masks, replace(phase, face_weight=0.0, mouth_weight=1.0), background=0.0)


def silence_loss(x0: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor, quiet: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the mouth mask's latent pixels of the quiet frames (quiet [B, F]), against the true
    latents; 0 where a window has no quiet frame."""
    w = masks[:, 1:2].float() * quiet[:, None, :, None, None].float()
    return (w * (x0.float() - truth.float()) ** 2).sum() / (w.sum() * x0.shape[1]).clamp(min=1)


def backdrop_loss(x0: torch.Tensor, truth: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the latent pixels more than one pixel away from the face mask."""
    face = F.max_pool3d(masks[:, :1].float(), (1, 3, 3), 1, (0, 1, 1))
    w = 1 - face
    return (w * (x0.float() - truth.float()) ** 2).sum() / (w.sum() * x0.shape[1]).clamp(min=1)


def predict_x0(model: DiT, x: torch.Tensor, ref: torch.Tensor, sigma: torch.Tensor, audio: torch.Tensor,
               expression: torch.Tensor, cfg: TrainDiTConfig, grid, scale: float = 1.0) -> torch.Tensor:
    """x0 predicted by a bidirectional score model at per-sample σ [B], with audio CFG `scale`."""
    frames = x.shape[2]
    layout = layout_for(model, frames, grid, cfg, causal=False)
    sig = sigma[:, None].expand(-1, frames)
    with torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16):
        text_kv = model.encode_text(emotion_tokens(expression, model.cfg.text_dim))
        v = velocity(model, x, ref, sig, layout, model.encode_audio(audio), text_kv).float()
        if scale != 1.0:
            v = guidance(v, velocity(model, x, ref, sig, layout, None, text_kv).float(), scale)
    return x0_from_velocity(x.float(), v, sigma[:, None, None, None, None])


def train_selfforce(cfg: TrainDiTConfig) -> dict[str, float]:
    if not cfg.init or cfg.dmd_weight and not cfg.teacher:
        raise ConfigError("selfforce needs --init (the distilled student) and, unless --dmd-weight 0, --teacher (the "
                          "teacher's weights)")
    if not cfg.data and not cfg.latents or not cfg.out:
        raise ConfigError("name the data (--data FOLDER or --latents CACHE) and the run folder (--out FOLDER)")
    device = cfg.device
    if torch.cuda.is_available():  # block-causal backward: the math kernel (see engine/train/dit.py)
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = latent_clips(cfg, device)
    if cfg.silence_weight and data.quiet is None:
        raise ConfigError(f"silence_weight needs the quiet labels, which the latent cache {cfg.latents} predates: "
                          "delete it and the stage encodes the split again")
    grid = tuple(data.latents.shape[-2:])
    generator = load_dit(cfg.init).to(device).train()
    fake = load_dit(cfg.teacher).to(device).train() if cfg.dmd_weight else None
    teacher = load_dit(cfg.teacher).to(device).eval().requires_grad_(False) if cfg.dmd_weight else None
    step = 0
    if (out / "state.json").exists():  # resume
        generator.load_state_dict(read_state(out / "last.safetensors"))
        if fake is not None:
            fake.load_state_dict(read_state(out / "fake.safetensors"))
        step = json.loads((out / "state.json").read_text())["step"]
    opt_g = torch.optim.AdamW(generator.parameters(), lr=cfg.lr, betas=(0.0, 0.99), weight_decay=0.01)
    opt_f = torch.optim.AdamW(fake.parameters(), lr=cfg.fake_lr, betas=(0.0, 0.99), weight_decay=0.01) if fake is not None else None
    g = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + step * 31)
    frames = rollout_length(cfg)
    phase = cfg.phases[-1]
    n, _, length = data.latents.shape[:3]
    if frames >= length:
        raise ConfigError(f"rollout_frames={frames} needs clips longer than the cache's {length} latent frames "
                          f"(frame 0 is the reference): at most {length - 1}")
    log = (out / "log.jsonl").open("a")
    t0 = time.perf_counter()
    while step < cfg.steps and not (cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s):
        clips = torch.randint(n, (cfg.batch,), generator=g, device=device)
        starts = torch.randint(1, length - frames + 1, (cfg.batch,), generator=g, device=device)
        truth, ref, audio, masks = data.window(clips, starts, frames)
        expression = data.expression[clips]
        exit_step = int(torch.randint(cfg.few_steps, (1,), generator=g, device=device))
        x0 = rollout(generator, data, clips, starts, cfg, grid, exit_step, g)

        loss_g = x0.new_zeros(())
        if teacher is not None:  # DMD: the teacher's and the fake score's x0 at a random σ, the difference pushed into x̂0
            sigma = shift_sigmas(0.02 + 0.96 * torch.rand(cfg.batch, generator=g, device=device), cfg.shift)
            noise = torch.randn(x0.shape, generator=g, device=device)
            with torch.no_grad():
                x_t = add_noise(x0.detach(), noise, sigma[:, None, None, None, None])
                real = predict_x0(teacher, x_t, ref, sigma, audio, expression, cfg, grid, cfg.teacher_guidance)
                fake_x0 = predict_x0(fake, x_t, ref, sigma, audio, expression, cfg, grid)
                weight = (x0.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-6)
                target = x0.detach() - (fake_x0 - real) / weight
            loss_g = cfg.dmd_weight * dmd_loss(x0, target, masks, phase, cfg.dmd_region)
        if cfg.backdrop_weight:
            loss_b = backdrop_loss(x0, truth, masks)
            loss_g = loss_g + cfg.backdrop_weight * loss_b
        if cfg.mouth_truth_weight:
            loss_m = mouth_truth_loss(x0, truth, masks, phase)
            loss_g = loss_g + cfg.mouth_truth_weight * loss_m
        if cfg.silence_weight:
            loss_s = silence_loss(x0, truth, masks, data.quiet_window(clips, starts, frames))
            loss_g = loss_g + cfg.silence_weight * loss_s
        opt_g.zero_grad(set_to_none=True)
        if loss_g.requires_grad:  # with dmd_weight 0 and no regression term, the anchor alone trains the generator
            loss_g.backward()
        loss_d = data_loss(generator, data, cfg, grid, phase, True, g) if cfg.data_weight else None
        if loss_d is not None:  # its own backward: the rollout's graph is freed first
            (cfg.data_weight * loss_d).backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), 1.0)
        opt_g.step()

        # the fake score follows the generator's outputs (flow matching on them)
        for _ in range(cfg.fake_updates if fake is not None else 0):
            s = shift_sigmas(torch.rand(cfg.batch, generator=g, device=device), cfg.shift)
            eps = torch.randn(x0.shape, generator=g, device=device)
            x_t = add_noise(x0.detach(), eps, s[:, None, None, None, None])
            with torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16):
                text_kv = fake.encode_text(emotion_tokens(expression, fake.cfg.text_dim))
                v = velocity(fake, x_t, ref, s[:, None].expand(-1, frames), layout_for(fake, frames, grid, cfg, False),
                             fake.encode_audio(audio), text_kv)
            loss_f = masked_mse(v, eps - x0.detach(), masks, phase)
            opt_f.zero_grad(set_to_none=True)
            loss_f.backward()
            torch.nn.utils.clip_grad_norm_(fake.parameters(), 1.0)
            opt_f.step()
        progress = max(step / cfg.steps, (time.perf_counter() - t0) / cfg.time_budget_s if cfg.time_budget_s else 0)
        for opt, lr in ((opt_g, cfg.lr), (opt_f, cfg.fake_lr)):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr * min(1.0, (step + 1) / cfg.warmup) * (0.55 + 0.45 * np.cos(np.pi * min(progress, 1.0)))
        step += 1
        if step % cfg.log_every == 0:
            record = {"step": step, "loss": round(loss_g.item(), 5), "exit_step": exit_step,
                      "s": round(time.perf_counter() - t0, 1)}
            if teacher is not None:
                record["fake_loss"] = round(loss_f.item(), 5)
                record["to_teacher"] = round(float((x0.detach() - real).pow(2).mean()), 5)
            if loss_d is not None:
                record["data_loss"] = round(loss_d.item(), 5)
            if cfg.backdrop_weight:
                record["backdrop_loss"] = round(loss_b.item(), 5)
            if cfg.mouth_truth_weight:
                record["mouth_truth_loss"] = round(loss_m.item(), 5)
            if cfg.silence_weight:
                record["silence_loss"] = round(loss_s.item(), 5)
            log.write(json.dumps(record) + "\n")
            log.flush()
        if step % cfg.save_every == 0:
            _save(out, generator, fake, step, cfg)
    _save(out, generator, fake, step, cfg)
    save_dit(out / "final.safetensors", generator, stage=cfg.stage, steps=str(step), recipe=json.dumps(asdict(cfg)),
             seconds=str(round(time.perf_counter() - t0)))
    log.write(json.dumps({"step": step, "done": True, "s": round(time.perf_counter() - t0, 1)}) + "\n")
    log.close()
    return {"steps": step, "loss": loss_g.item()}


def _save(out: Path, generator: DiT, fake: DiT | None, step: int, cfg: TrainDiTConfig) -> None:
    from engine.checkpoints.io import save_state

    if fake is not None:
        save_state(out / "fake.safetensors", fake.state_dict(), fake.cfg, kind="dit")
    save_checkpoint(out, generator, step, cfg)
