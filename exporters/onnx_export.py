"""ONNX export of the chunk step: the DiT's three graphs and the decoders' step graphs, as one bundle.

A bundle is a folder:

    manifest.json          what was exported: the chunk shape, dtype, model configs and weight fingerprints,
                           each graph's file and the decoders' state layout
    dit_sink.onnx          reference latent -> sink keys/values (once per session)
    dit_pass.onnx          one denoising pass: (x, t, audio tokens, cache, position, RoPE) -> velocity
    dit_commit.onnx        the t = 0 pass on the clean chunk: (x0, audio tokens, cache, ...) -> updated ring
    vae_first.onnx         causal VAE, the stream's first latent frame -> 1 video frame + state
    vae_step_<n>.onnx      causal VAE, n latent frames + state -> 4n video frames + state
    tiny_step_<n>.onnx     tiny decoder, n latent frames + state -> 4n video frames + state

Why a pass graph and a commit graph rather than one graph for the whole chunk: the number of denoising
steps changes from chunk to chunk (4, 2 or 1, chosen to hold real time), and one pass graph serves every
count; the few-step sampler (noise, x̂0, re-noising) stays in the caller's code, so ONNX and eager draw the
same noise from the same generator and a stream is the same for a seed whatever the backend. The graphs
take the audio *tokens* (DiT.encode_audio), not the log-mel windows: the projection runs once per chunk, as
in the engine, instead of once per pass. Shapes are static (the ring has a fixed size and hides unfilled
slots), which the dynamo exporter turns into a graph ONNX Runtime plans once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from engine.models.attention import KVCacheConfig
from engine.models.dit import DiT, DiTConfig
from engine.models.tiny_vae import TinyVAE, TinyVAEConfig
from engine.models.vae import CausalVAE
from exporters.chunk_graph import ChunkShape, CommitGraph, PassGraph, SinkGraph, rope_tables
from exporters.decoder_graph import DecoderState, TinyDecodeGraph, VAEDecodeGraph
from exporters.errors import BackendError, ExportError

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
CACHE_INPUTS = ["sink_k", "sink_v", "ring_k", "ring_v", "position", "cos_chunk", "sin_chunk", "cos_sink", "sin_sink"]
PASS_INPUTS = ["x", "t", "audio", *CACHE_INPUTS]
COMMIT_INPUTS = ["x0", "audio", *CACHE_INPUTS]
# Opset 23 has the fused Attention operator, which the exporter emits for scaled_dot_product_attention:
# ONNX Runtime's CPU kernel for it runs a demo pass 16% (16x16 latents) to 32% (32x32) faster than the
# MatMul/Softmax chain of opset 18.
OPSET = 23
# Above this many bytes of weights a graph keeps them in a side file (protobuf stops at 2 GB).
SINGLE_FILE_BYTES = 1 << 30


def fingerprint(model: nn.Module) -> str:
    """sha256 over every state-dict tensor's name, shape, dtype and bytes: a bundle runs only the weights it
    was exported from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise ExportError(f"models in {dtype} cannot be exported; use one of {sorted(DTYPES)}")


# ----------------------------------------------------------------------------- one graph

def export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                 output_names: list[str], check: bool = True) -> Path:
    """Export with the dynamo exporter (static shapes), then run onnx.checker on the file."""
    import onnx

    params = sum(p.numel() * p.element_size() for p in module.parameters())
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            torch.onnx.export(module.eval(), args, str(path), dynamo=True, opset_version=OPSET,
                              input_names=input_names, output_names=output_names,
                              external_data=params > SINGLE_FILE_BYTES, verbose=False)
    except Exception as e:  # the exporter raises many types; say which graph failed
        raise ExportError(f"exporting {path.name} failed: {type(e).__name__}: {e}") from e
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s in %.1f s", path.name, time.perf_counter() - t0)
    return path


# ----------------------------------------------------------------------------- the DiT

def dit_example(model: DiT, shape: ChunkShape, position: int = 0) -> dict[str, torch.Tensor]:
    """Random non-zero example inputs of the pass graph (names as in PASS_INPUTS), on the model's device."""
    p = next(model.parameters())
    cache = shape.cache_config(model)
    g = torch.Generator(device=p.device).manual_seed(0)
    T, L, H, D = cache.tokens_per_frame, cache.num_layers, cache.num_heads, cache.head_dim

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=g, device=p.device).to(p.dtype)

    tables = rope_tables(cache, shape.chunk_frames, position, p.dtype, p.device)
    return {"x": rand(*shape.latents(model)), "t": torch.full((1, shape.chunk_frames), 500.0, device=p.device),
            "audio": rand(*shape.audio(model)), "sink_k": rand(L, 1, shape.sink_frames * T, H, D),
            "sink_v": rand(L, 1, shape.sink_frames * T, H, D), "ring_k": rand(L, 1, shape.window_frames * T, H, D),
            "ring_v": rand(L, 1, shape.window_frames * T, H, D),
            "position": torch.tensor(position, dtype=torch.int64, device=p.device),
            **dict(zip(CACHE_INPUTS[5:], tables))}


def export_dit(model: DiT, shape: ChunkShape, out: Path) -> dict[str, str]:
    """dit_sink, dit_pass and dit_commit for this chunk shape; returns {graph: file name}."""
    if not model.cfg.audio_dim:
        raise ExportError(f"preset {model.cfg.name!r} has no audio branch; the chunk step graphs take audio tokens")
    ex = dit_example(model, shape)
    reference = torch.randn(shape.latents(model, shape.sink_frames), device=ex["x"].device).to(ex["x"].dtype)
    export_graph(SinkGraph(model, shape), (reference,), out / "dit_sink.onnx", ["reference"], ["sink_k", "sink_v"])
    export_graph(PassGraph(model, shape), tuple(ex[n] for n in PASS_INPUTS), out / "dit_pass.onnx", PASS_INPUTS,
                 ["velocity"])
    commit_args = tuple(ex["x" if n == "x0" else n] for n in COMMIT_INPUTS)
    export_graph(CommitGraph(model, shape), commit_args, out / "dit_commit.onnx", COMMIT_INPUTS,
                 ["new_ring_k", "new_ring_v"])
    return {"sink": "dit_sink.onnx", "pass": "dit_pass.onnx", "commit": "dit_commit.onnx"}


# ----------------------------------------------------------------------------- the decoders

def decoder_frame_counts(kind: str, chunk_frames: int) -> list[int]:
    """Latent frames per step graph: a chunk, and for the tiny decoder also the stream's opening frame alone
    (1) -- the VAE decodes that one with its `first` graph."""
    counts = {chunk_frames}
    if kind == "tiny":
        counts.add(1)
    return sorted(counts)


def export_decoder(decoder: CausalVAE | TinyVAE, kind: str, model: DiT, shape: ChunkShape,
                   out: Path) -> dict[str, object]:
    """The decoder's graphs for this chunk shape; returns its manifest entry."""
    state = DecoderState.discover(decoder, shape.latents(model))
    p = next(decoder.parameters())
    g = torch.Generator(device=p.device).manual_seed(1)
    graphs: dict[str, str] = {}
    names = state.names
    if kind == "vae":
        assert isinstance(decoder, CausalVAE)
        z = torch.randn(shape.latents(model, 1), generator=g, device=p.device).to(p.dtype)
        export_graph(VAEDecodeGraph(decoder, state, first=True), (z,), out / "vae_first.onnx", ["z"],
                     ["video", *names])
        graphs["first"] = "vae_first.onnx"
    for n in decoder_frame_counts(kind, shape.chunk_frames):
        z = torch.randn(shape.latents(model, n), generator=g, device=p.device).to(p.dtype)
        history = [torch.randn(s, generator=g, device=p.device).to(p.dtype) for s in state.shapes]
        module = VAEDecodeGraph(decoder, state, first=False) if isinstance(decoder, CausalVAE) \
            else TinyDecodeGraph(decoder, state)
        file = f"{kind}_step_{n}.onnx"
        export_graph(module, (z, *history), out / file, ["z", *names], ["video", *[f"new_{s}" for s in names]])
        graphs[f"step_{n}"] = file
    return {"fingerprint": fingerprint(decoder), "config": asdict(decoder.cfg), "graphs": graphs,
            "state": {"shapes": [list(s) for s in state.shapes], "markers": list(state.markers)}}


# ----------------------------------------------------------------------------- the bundle

@dataclass(frozen=True)
class Bundle:
    """An exported folder, read back from its manifest."""

    root: Path
    manifest: dict

    @staticmethod
    def load(root: str | Path) -> Bundle:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise BackendError(f"{root} holds no {MANIFEST}; write one with `talkstream export onnx --out {root}`")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise BackendError(f"{path} has format {manifest.get('format')!r}; this version reads {FORMAT}")
        return Bundle(root, manifest)

    @property
    def shape(self) -> ChunkShape:
        s = self.manifest["shape"]
        return ChunkShape(tuple(s["latent_hw"]), s["sink_frames"], s["chunk_frames"], s["window_frames"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    def dit_config(self) -> DiTConfig:
        return DiTConfig(**_tuples(self.manifest["dit"]["config"]))

    def cache_config(self) -> KVCacheConfig:
        with torch.device("meta"):  # sizes only: nothing is allocated
            model = DiT(self.dit_config())
        return self.shape.cache_config(model)

    def frames_to_trim(self, kind: str) -> int:
        """Video frames the decoder's step graph gives before the stream's first one (the tiny decoder's)."""
        if kind == "vae":
            return 0
        return TinyVAEConfig(**_tuples(self.decoder(kind)["config"])).temporal_stride - 1

    def graph(self, part: str, name: str) -> Path:
        graphs = self.manifest["dit"]["graphs"] if part == "dit" else self.decoder(part)["graphs"]
        if name not in graphs:
            raise BackendError(f"bundle {self.root} has no {part} graph {name!r}; it has {sorted(graphs)}")
        return self.root / graphs[name]

    def decoder(self, kind: str) -> dict:
        decoders = self.manifest["decoders"]
        if kind not in decoders:
            raise BackendError(f"bundle {self.root} has no {kind!r} decoder; it has {sorted(decoders)}")
        return decoders[kind]

    def decoder_state(self, kind: str) -> DecoderState:
        s = self.decoder(kind)["state"]
        return DecoderState(kind, tuple(tuple(x) for x in s["shapes"]), tuple(s["markers"]))

    def check_matches(self, model: DiT, shape: ChunkShape, decoder: CausalVAE | TinyVAE | None = None,
                      kind: str | None = None) -> None:
        """Raise BackendError unless this bundle was exported from these weights for this chunk shape, by
        this version's exporter settings."""
        if self.manifest.get("opset") != OPSET:
            raise BackendError(f"bundle {self.root} was exported at opset {self.manifest.get('opset')}; this "
                               f"version exports opset {OPSET}: export it again")
        if shape != self.shape:
            raise BackendError(f"bundle {self.root} was exported for {self.shape}, the session needs {shape}")
        if fingerprint(model) != self.manifest["dit"]["fingerprint"]:
            raise BackendError(f"bundle {self.root} holds other DiT weights than the session's model "
                               f"({model.cfg.name}); export it again")
        if decoder is not None and kind is not None \
                and fingerprint(decoder) != self.decoder(kind)["fingerprint"]:
            raise BackendError(f"bundle {self.root} holds other {kind} decoder weights than the session's")
        if kind is not None:
            missing = [n for n in decoder_frame_counts(kind, shape.chunk_frames)
                       if f"step_{n}" not in self.decoder(kind)["graphs"]]
            if missing:
                raise BackendError(f"bundle {self.root} has no {kind} step graph for {missing} latent frame(s) (an "
                                   f"earlier exporter's bundle: the stream now opens on the portrait's frame "
                                   f"alone): export it again")


def _tuples(config: dict) -> dict:
    """A config as JSON gives it back (lists) -> as the frozen dataclass declares it (tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def export_bundle(model: DiT, shape: ChunkShape, out: str | Path, vae: CausalVAE | None = None,
                  tiny: TinyVAE | None = None) -> Bundle:
    """Export the DiT chunk step and the given decoders into `out` (created) and write the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = next(model.parameters()).dtype
    manifest: dict = {
        "format": FORMAT, "dtype": _dtype_name(dtype), "torch": torch.__version__, "exporter": "dynamo",
        "opset": OPSET,
        "shape": asdict(shape),
        "dit": {"config": asdict(model.cfg), "fingerprint": fingerprint(model), "graphs": export_dit(model, shape, out),
                "inputs": {"pass": PASS_INPUTS, "commit": COMMIT_INPUTS}},
        "decoders": {},
    }
    for kind, decoder in (("vae", vae), ("tiny", tiny)):
        if decoder is not None:
            manifest["decoders"][kind] = export_decoder(decoder, kind, model, shape, out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return Bundle(out, manifest)
