"""Loading DiT checkpoints: this project's (config in metadata), public original/diffusers/sharded ones,
and clear refusals of anything that does not fit."""
import json

import pytest
import torch
from safetensors.torch import save_file

from engine.checkpoints import load_dit, save_dit
from engine.checkpoints.wan import OPTIONAL
from engine.errors import CheckpointError
from engine.models.attention import SequenceLayout
from engine.models.dit import DiT, DiTConfig

TINY = DiTConfig("tiny", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=8,
                 audio_dim=16, audio_tokens=2, audio_hidden=16, audio_in_dim=12)


def to_diffusers(key: str) -> str:
    """Original -> diffusers names, written out independently of the loader's table."""
    table = {"self_attn.o.": "attn1.to_out.0.", "cross_attn.o.": "attn2.to_out.0.",
             "self_attn.norm_q.": "attn1.norm_q.", "self_attn.norm_k.": "attn1.norm_k.",
             "cross_attn.norm_q.": "attn2.norm_q.", "cross_attn.norm_k.": "attn2.norm_k.",
             "norm3.": "norm2.", "ffn.0.": "ffn.net.0.proj.", "ffn.2.": "ffn.net.2."}
    for p in "qkv":
        table[f"self_attn.{p}."] = f"attn1.to_{p}."
        table[f"cross_attn.{p}."] = f"attn2.to_{p}."
    if key.startswith("blocks."):
        _, i, rest = key.split(".", 2)
        if rest == "modulation":
            return f"blocks.{i}.scale_shift_table"
        for a, b in table.items():
            if rest.startswith(a):
                return f"blocks.{i}.{b}{rest[len(a):]}"
        raise AssertionError(key)
    top = {"text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
           "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
           "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
           "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
           "time_projection.1.": "condition_embedder.time_proj.", "head.head.": "proj_out."}
    if key == "head.modulation":
        return "scale_shift_table"
    for a, b in top.items():
        if key.startswith(a):
            return b + key[len(a):]
    return key


def public_state(model):
    """What a public T2V checkpoint of this shape holds: everything but the audio branch."""
    return {k: v.clone() for k, v in model.state_dict().items() if not OPTIONAL.match(k)}


def outputs(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    t = torch.tensor([[0.0, 300.0, 700.0]])
    text = model.encode_text(torch.randn(1, 5, 8, generator=g))
    audio = model.encode_audio(torch.randn(1, 2, 3, 4, generator=g))
    with torch.no_grad():
        return model(x, t, SequenceLayout(1, 2, (2, 2), 16), audio=audio, text_kv=text, sink_frames=1)


@pytest.fixture
def model():
    m = DiT(TINY).eval()
    with torch.no_grad():
        m.head.head.weight.normal_(0, 0.1)
    return m


def test_own_checkpoint_round_trip_keeps_config(tmp_path, model):
    save_dit(tmp_path / "m.safetensors", model)
    loaded = load_dit(tmp_path / "m.safetensors").eval()
    assert loaded.cfg == TINY
    assert torch.equal(outputs(loaded), outputs(model))


def test_public_original_names_load_without_the_audio_branch(tmp_path, model):
    save_file(public_state(model), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    loaded = load_dit(tmp_path / "diffusion_pytorch_model.safetensors", TINY).eval()
    assert torch.allclose(outputs(loaded), outputs(model), atol=1e-6)
    assert loaded.blocks[0].audio_cross_attn.proj.weight.abs().sum() == 0


def test_diffusers_names_sharded_with_index(tmp_path, model):
    state = {to_diffusers(k): v for k, v in public_state(model).items()}
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(tmp_path / name))
        weight_map.update({k: name for k in ks})
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    for source in (index, tmp_path):
        loaded = load_dit(source, TINY).eval()
        assert torch.allclose(outputs(loaded), outputs(model), atol=1e-6)


def test_wrapper_prefix_is_stripped(tmp_path, model):
    save_file({"model." + k: v for k, v in public_state(model).items()}, str(tmp_path / "sf.safetensors"))
    assert torch.allclose(outputs(load_dit(tmp_path / "sf.safetensors", TINY).eval()), outputs(model), atol=1e-6)


def test_refusals_name_the_problem(tmp_path, model):
    state = public_state(model)
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "blocks.1.ffn.0.weight"}, "blocks.1.ffn.0.weight"),
        "extra": ({**state, "blocks.0.cross_attn.k_img.weight": torch.zeros(32, 32)}, "image-to-video"),
        "shape": ({**state, "head.head.weight": torch.zeros(63, 32)}, "wrong shape"),
        "partial audio": ({**state, "audio_proj.proj1.weight": torch.zeros(16, 12)}, "missing"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(bad, str(path))
        with pytest.raises(CheckpointError, match=message):
            load_dit(path, TINY)
    (tmp_path / "w.pth").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="pickled"):
        load_dit(tmp_path / "w.pth", TINY)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_dit(tmp_path / "garbage.safetensors", TINY)
    with pytest.raises(CheckpointError, match="no such"):
        load_dit(tmp_path / "absent.safetensors", TINY)
    with pytest.raises(CheckpointError, match="pass the config"):
        save_file(state, str(tmp_path / "noconf.safetensors"))
        load_dit(tmp_path / "noconf.safetensors")


def test_int8_delta_rebuilds_a_model_from_its_base(tmp_path, model):
    from engine.checkpoints.delta import pack, unpack

    base = DiT(TINY).eval()
    with torch.no_grad():  # a model trained on from `base`: near it, not equal
        for p, q in zip(model.parameters(), base.parameters()):
            p.copy_(q + 0.01 * torch.randn_like(q))
    save_dit(tmp_path / "base.safetensors", base)
    save_dit(tmp_path / "m.safetensors", model, stage="teacher")
    pack(tmp_path / "m.safetensors", tmp_path / "base.safetensors", tmp_path / "delta.safetensors")
    unpack(tmp_path / "delta.safetensors", tmp_path / "base.safetensors", tmp_path / "back.safetensors")
    back = load_dit(tmp_path / "back.safetensors").eval()
    assert back.cfg == TINY
    for (name, p), q in zip(model.named_parameters(), back.parameters()):
        step = (p - dict(base.named_parameters())[name]).abs().max() / 127
        assert (p - q).abs().max() <= step / 2 + 1e-6, name
    assert (outputs(back) - outputs(model)).abs().max() < 1e-2
    other = DiT(TINY.__class__(**{**TINY.__dict__, "num_layers": 1}))
    save_dit(tmp_path / "other.safetensors", other)
    with pytest.raises(CheckpointError, match="different tensors"):
        pack(tmp_path / "m.safetensors", tmp_path / "other.safetensors", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not a delta"):
        unpack(tmp_path / "m.safetensors", tmp_path / "base.safetensors", tmp_path / "x.safetensors")
