"""The mathematics of engine.diffusion: schedules, samplers, guidance, diffusion forcing."""
import pytest
import torch

from engine.diffusion.flow import add_noise, noise_from_velocity, velocity_target, x0_from_velocity
from engine.diffusion.forcing import ForcingConfig, forcing_schedule, sample_forcing_sigmas
from engine.diffusion.guidance import audio_text_cfg, cfg
from engine.diffusion.samplers import sample_dpmpp_2m, sample_euler, sample_renoise
from engine.diffusion.schedules import flow_sigmas, sample_training_sigmas, shift_sigmas, warp_timesteps
from engine.errors import ConfigError


def test_flow_parametrisation_round_trips():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    for sigma in (0.1, 0.5, 0.9):
        x = add_noise(x0, eps, sigma)
        v = velocity_target(x0, eps)
        assert torch.allclose(x0_from_velocity(x, v, sigma), x0, atol=1e-6)
        assert torch.allclose(noise_from_velocity(x, v, sigma), eps, atol=1e-6)


def test_shift_keeps_endpoints_and_order():
    s = torch.linspace(0, 1, 101)
    for shift in (1.0, 3.0, 5.0, 8.0):
        out = shift_sigmas(s, shift)
        assert out[0] == 0 and out[-1] == 1
        assert (out[1:] > out[:-1]).all()
        assert (out >= s - 1e-7).all()  # shift > 1 only moves levels up


def test_wan_grid_and_warped_few_step_lists_match_the_spec():
    t = (flow_sigmas(4, 5.0) * 1000).long().tolist()
    assert t == [999, 937, 833, 624, 0]
    t50 = (flow_sigmas(50, 5.0) * 1000).long()
    assert t50[:5].tolist() == [999, 995, 991, 987, 982] and t50[-4:-1].tolist() == [241, 172, 92]
    assert (t50[1:] <= t50[:-1]).all()
    base = torch.tensor([1000.0, 750.0, 500.0, 250.0])
    assert warp_timesteps(base, 5.0).tolist() == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    assert warp_timesteps(base, 8.0).tolist() == pytest.approx([1000.0, 960.0, 888.889, 727.273], abs=1e-3)


def test_training_sigmas_in_range():
    g = torch.Generator().manual_seed(0)
    for kind in ("uniform", "logit_normal"):
        s = sample_training_sigmas((4096,), 3.0, g, kind)
        assert s.min() >= 0 and s.max() <= 1 and s.mean() > 0.5  # shift 3 favours high noise
    with pytest.raises(ValueError, match="choose"):
        sample_training_sigmas((2,), 1.0, g, "cosine")


def test_solvers_integrate_a_straight_flow_exactly():
    """Data concentrated at x0*: the exact velocity is v(x, σ) = (x − x0*)/σ; every path is a straight line,
    so Euler (and the 2nd-order solver) land on x0* from any noise with any grid."""
    x_star = torch.tensor([0.3, -1.2, 2.0])
    v = lambda x, sigma: (x - x_star) / sigma  # noqa: E731
    noise = torch.randn(3)
    for sigmas in (torch.tensor([1.0, 0.0]), flow_sigmas(7, 3.0), torch.tensor([0.999, 0.6, 0.2, 0.0])):
        x = noise * sigmas[0] + (1 - sigmas[0]) * x_star
        assert torch.allclose(sample_euler(v, x, sigmas), x_star, atol=1e-5)
        assert torch.allclose(sample_dpmpp_2m(v, x, sigmas), x_star, atol=1e-5)


def test_second_order_beats_euler_on_a_curved_flow():
    """Gaussian data N(m, s²): the exact velocity is known in closed form and its paths curve."""
    m, s = 1.5, 0.5

    def v(x, sigma):  # E[ε − x0 | x_σ] for x0 ~ N(m, s²), ε ~ N(0, 1)
        a, var = 1 - sigma, (1 - sigma) ** 2 * s ** 2 + sigma ** 2
        x0 = m + a * s ** 2 / var * (x - a * m)
        eps = sigma / var * (x - a * m)
        return eps - x0

    x1 = torch.linspace(-2, 2, 9)
    sig_fine = flow_sigmas(2000, 1.0)
    exact = sample_euler(v, x1, sig_fine)
    coarse = flow_sigmas(8, 1.0)
    err_euler = (sample_euler(v, x1, coarse) - exact).abs().max()
    err_2m = (sample_dpmpp_2m(v, x1, coarse) - exact).abs().max()
    assert err_2m < err_euler / 3


def test_renoise_sampler_returns_the_last_prediction():
    x_star = torch.full((4,), 0.7)
    v = lambda x, sigma: (x - x_star) / sigma  # noqa: E731
    out = sample_renoise(v, torch.randn(4), torch.tensor([1.0, 0.9375, 0.833, 0.625]),
                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x_star, atol=1e-5)


def test_cfg_combinations():
    c, u, dt = torch.randn(5), torch.randn(5), torch.randn(5)
    assert torch.allclose(cfg(c, u, 1.0), c) and torch.allclose(cfg(c, u, 0.0), u)
    assert torch.allclose(cfg(c, u, 3.0), u + 3 * (c - u))
    assert torch.allclose(audio_text_cfg(c, dt, u, 5.0, 4.0), u + 5 * (c - dt) + 4 * (dt - u))
    assert torch.allclose(audio_text_cfg(c, dt, u, 1.0, 1.0), c)


TEMPLATE = (flow_sigmas(30, 8.0)[:-1] * 1000).long().float()


def test_forcing_matches_the_spec_example():
    sch = forcing_schedule(ForcingConfig(num_frames=25, block=5, ar_step=5), TEMPLATE)
    assert len(sch.timesteps) == 50
    assert sch.timesteps[6, ::5].tolist() == [969, 995, 999, 999, 999]
    assert sch.timesteps[24, ::5].tolist() == [666, 822, 901, 948, 980]
    assert sch.timesteps[30, ::5].tolist() == [0, 615, 799, 888, 941]


@pytest.mark.parametrize("frames,block,ar,prefix", [(25, 5, 5, 0), (12, 1, 0, 0), (12, 3, 2, 3), (8, 2, 7, 2),
                                                    (6, 1, 1, 1)])
def test_forcing_rows_never_decrease_and_every_block_finishes(frames, block, ar, prefix):
    n = len(TEMPLATE)
    sch = forcing_schedule(ForcingConfig(frames, block, ar, prefix), TEMPLATE)
    assert (sch.timesteps[:, 1:] >= sch.timesteps[:, :-1]).all()  # noise never decreases along time
    steps_taken = sch.update.sum(0)
    assert (steps_taken[prefix:] == n).all() and (steps_taken[:prefix] == 0).all()
    assert (sch.timesteps[:, :prefix] == 0).all()
    blocks = (frames - prefix) // block
    assert len(sch.timesteps) == n + (blocks - 1) * ar if ar else len(sch.timesteps) == n
    # each frame steps through t_1 … t_N in order
    for f in range(prefix, frames):
        assert sch.timesteps[sch.update[:, f], f].tolist() == TEMPLATE.tolist()


def test_forcing_config_and_training_levels():
    with pytest.raises(ConfigError):
        ForcingConfig(num_frames=10, block=3)
    s = sample_forcing_sigmas(16, 12, 3, 3.0, torch.Generator().manual_seed(0))
    assert s.shape == (16, 12) and (s[:, 1:] >= s[:, :-1]).all()
    assert (s[:, 0::3] == s[:, 2::3]).all()
