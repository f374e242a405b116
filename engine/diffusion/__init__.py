"""Diffusion: the flow parametrisation, schedules, samplers, guidance and diffusion forcing."""
from engine.diffusion.flow import add_noise, velocity_target, x0_from_velocity
from engine.diffusion.forcing import ForcingConfig, forcing_schedule
from engine.diffusion.guidance import audio_text_cfg, cfg
from engine.diffusion.samplers import sample_dpmpp_2m, sample_euler, sample_renoise
from engine.diffusion.schedules import flow_sigmas, shift_sigmas, warp_timesteps

__all__ = ["add_noise", "velocity_target", "x0_from_velocity", "ForcingConfig", "forcing_schedule", "cfg",
           "audio_text_cfg", "sample_euler", "sample_dpmpp_2m", "sample_renoise", "flow_sigmas", "shift_sigmas",
           "warp_timesteps"]
