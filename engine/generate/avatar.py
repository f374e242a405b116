"""An Avatar: the models one talking portrait needs (DiT, VAE, optional tiny decoder), loaded once and
shared by every session, and the portraits it can speak with.

    avatar = load_avatar()                      # the shipped demo model (random weights if none is shipped)
    reference = avatar.reference(portrait)      # uint8 [H, W, 3] -> the sink latent [1, C, 1, h, w]
    gen = avatar.generator(StreamConfig(steps=4), decoder="tiny")
    gen.reset(reference); gen.push_audio(pcm, 48000); chunk = gen.step()   # chunk.frames: [n, H, W, 3]

Sessions own their StreamingGenerator (its KV cache, clocks and decoder state); the Avatar's weights are
read-only and shared. Portrait images are decoded with PyAV (Pillow where PyAV is not installed), with the
pixel limits checked on the header before any pixel is decoded.
"""
from __future__ import annotations

import functools
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from engine.checkpoints.vae import load_tiny_vae, load_vae
from engine.checkpoints.wan import load_dit
from engine.errors import ConfigError, ImageError
from engine.generate.decoders import StreamDecoder, TinyDecoder, VAEDecoder
from engine.generate.streaming import StreamConfig, StreamingGenerator
from engine.models.dit import DiT, dit_config, emotion_tokens
from engine.models.tiny_vae import TinyVAE, tiny_vae_config
from engine.models.vae import CausalVAE, FeatureCache, vae_config

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DECODERS = ("vae", "tiny")
EMOTIONS = ("neutral", "happy", "sad", "surprised", "angry")  # the demo model's emotion tokens (SynthTalk's)
DEMO_LATENT_SIZE = 16  # the demo model's latent grid: 16x16 (128x128 frames through the demo VAE)
SHIPPED_PRESET = "demo"  # the preset of the shipped weights (AvatarFiles' defaults)
NOWHERE = Path("/nonexistent/talkstream")  # AvatarFiles for a preset with no weights: random ones
TINY_FOR_VAE = {"demo": "demo", "wan": "taew2_1"}  # the tiny decoder preset of each VAE's latent space

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AvatarFiles:
    """Where the weights are; the defaults are the shipped demo model."""

    dit: Path = ASSETS / "demo-dit.safetensors"
    vae: Path = ASSETS / "demo-vae.safetensors"
    tiny: Path = ASSETS / "demo-tiny.safetensors"


@dataclass
class Avatar:
    model: DiT
    vae: CausalVAE
    tiny: TinyVAE | None
    trained: bool  # False: random weights (no shipped checkpoint found) -- speed is real, faces are not
    resolution: int  # square frame size in pixels the models were built for

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_hw(self) -> tuple[int, int]:
        """The latent grid of a frame at `resolution` (the sink and every chunk)."""
        side = self.resolution // self.vae.cfg.spatial_stride
        return side, side

    @torch.no_grad()
    def reference(self, portrait: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] portrait -> its latent [1, C, 1, h, w], the pinned sink of every chunk."""
        image = fit_square(portrait, self.resolution)
        video = torch.from_numpy(image).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1  # [1, 3, 1, H, W]
        p = next(self.vae.parameters())
        return self.vae.encode_chunk(video.to(p.device, p.dtype), FeatureCache()).to(self.device)

    def decoder(self, name: str = "vae") -> StreamDecoder:
        """A fresh streaming decoder (each session needs its own state): "vae" for quality, "tiny" for speed."""
        if name == "vae":
            return VAEDecoder(self.vae)
        if name == "tiny" and self.tiny is not None:
            return TinyDecoder(self.tiny)
        raise ConfigError(f"unknown decoder {name!r}; choose one of "
                         f"{list(DECODERS) if self.tiny is not None else ['vae']}")

    def generator(self, config: StreamConfig = StreamConfig(), decoder: str | None = "vae",
                  emotion: int = 0) -> StreamingGenerator:
        """A session's generator; `decoder=None` yields latents only; `emotion` indexes EMOTIONS."""
        if not 0 <= emotion < len(EMOTIONS):
            raise ConfigError(f"emotion must be 0..{len(EMOTIONS) - 1} ({', '.join(EMOTIONS)}), got {emotion}")
        text = emotion_tokens(torch.tensor([emotion]), self.model.cfg.text_dim) if self.model.cfg.text_dim else None
        return StreamingGenerator(self.model, config, decoder=self.decoder(decoder) if decoder else None, text=text)


def load_avatar(files: AvatarFiles | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, preset: str | None = None, resolution: int | None = None,
                seed: int = 0) -> Avatar:
    """Load the DiT, VAE and tiny decoder. `files` None: the shipped model, which is the `demo` preset; any
    other preset has no shipped weights and is built with random weights (seeded), as is a preset whose
    checkpoint is missing, so the engine still runs end to end; `Avatar.trained` says which it is. An
    untrained avatar also gets a random tiny decoder of its VAE's latent space (speed is real either way)."""
    if files is None:
        files = AvatarFiles() if preset in (None, SHIPPED_PRESET) else AvatarFiles(*(NOWHERE,) * 3)
    if files.dit.exists():
        model = load_dit(files.dit, dtype=dtype)
        if preset is not None and model.cfg.name != preset:
            raise ConfigError(f"{files.dit} holds the {model.cfg.name!r} preset, not {preset!r}: name its own "
                              f"checkpoint, or leave the files out for random weights of {preset!r}")
        trained = True
    else:
        torch.manual_seed(seed)
        model = DiT(dit_config(preset or SHIPPED_PRESET)).to(dtype)
        trained = False
    if files.vae.exists():
        vae = load_vae(files.vae, dtype=dtype)
    else:
        torch.manual_seed(seed)
        vae = CausalVAE(vae_config(model.cfg.name if model.cfg.name == "demo" else "wan")).to(dtype).eval()
        trained = False
    tiny = load_tiny_vae(files.tiny, dtype=dtype) if files.tiny.exists() else None
    if tiny is None and not trained and vae.cfg.name in TINY_FOR_VAE:
        torch.manual_seed(seed)
        tiny = TinyVAE(tiny_vae_config(TINY_FOR_VAE[vae.cfg.name])).to(dtype).eval()
    for m in (model, vae, tiny):
        if m is not None:
            m.to(device).eval().requires_grad_(False)
    resolution = resolution or vae.cfg.spatial_stride * DEMO_LATENT_SIZE
    return Avatar(model, vae, tiny, trained, resolution)


# ---------------------------------------------------------------------------------------------- portraits

@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded portrait may be: checked on the header before decoding."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    min_side: int = 64


def load_portrait(source: str | os.PathLike[str] | bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """A PNG/JPEG/WebP file or its bytes -> uint8 [H, W, 3]. Raises ImageError, naming the problem."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"portrait {path} does not exist")
        if path.stat().st_size > limits.max_bytes:
            raise ImageError(f"portrait {path} is {path.stat().st_size} bytes; the limit is {limits.max_bytes}")
        data = path.read_bytes()
    if len(data) > limits.max_bytes:
        raise ImageError(f"portrait is {len(data)} bytes; the limit is {limits.max_bytes}")
    if not data:
        raise ImageError("portrait is empty")
    try:
        import av
    except ImportError:
        image = _decode_with_pillow(data, limits)
    else:
        image = _decode_with_pyav(av, data, limits)
    if min(image.shape[:2]) < limits.min_side:
        raise ImageError(f"portrait is {image.shape[1]}x{image.shape[0]}; both sides must be at least "
                         f"{limits.min_side} pixels")
    return image


def _check_header(w: int, h: int, limits: ImageLimits) -> None:
    if w * h > limits.max_pixels:
        raise ImageError(f"portrait is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels}")
    if min(w, h) < limits.min_side and w and h:
        raise ImageError(f"portrait is {w}x{h}; both sides must be at least {limits.min_side} pixels")


def _decode_with_pyav(av: ModuleType, data: bytes, limits: ImageLimits) -> np.ndarray:
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ImageError("portrait holds no image")
            stream = container.streams.video[0]
            _check_header(stream.codec_context.width, stream.codec_context.height, limits)
            frame = next(container.decode(stream))
            return frame.to_ndarray(format="rgb24")
    except ImageError:
        raise
    except (av.FFmpegError, StopIteration, ValueError, OSError) as e:
        raise ImageError(f"portrait could not be decoded as an image (PNG, JPEG or WebP): {e}") from e


@functools.cache
def _say_pillow_decodes() -> None:
    log.warning("PyAV is not installed: portraits are decoded with Pillow")


def _decode_with_pillow(data: bytes, limits: ImageLimits) -> np.ndarray:
    """The fallback of a slim install without PyAV (such as a GPU box serving websocket sessions only)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImageError("decoding a portrait needs PyAV (pip install av) or Pillow") from e
    _say_pillow_decodes()
    try:
        with Image.open(io.BytesIO(data)) as picture:  # reads the header only
            _check_header(*picture.size, limits)
            return np.array(picture.convert("RGB"))
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:  # Pillow's own
        raise ImageError(f"portrait could not be decoded as an image (PNG, JPEG or WebP): {e}") from e


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to size x size (area-averaging down, bilinear up)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"portrait must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = torch.from_numpy(np.ascontiguousarray(image[top:top + s, left:left + s])).permute(2, 0, 1)[None].float()
    mode = "area" if s > size else "bilinear"
    out = torch.nn.functional.interpolate(square, size=(size, size), mode=mode,
                                          **({} if mode == "area" else {"align_corners": False}))
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def shipped_portraits() -> dict[str, Path]:
    """The portraits shipped in engine/assets/portraits, by name."""
    return {p.stem: p for p in sorted((ASSETS / "portraits").glob("*.png"))}


# ---------------------------------------------------------------------------------------------- faces

@dataclass(frozen=True)
class FaceBox:
    """A face's bounding box in fractions of the image width and height (0..1, left < right, top < bottom)."""

    left: float
    top: float
    right: float
    bottom: float

    def __post_init__(self) -> None:
        if not (0 <= self.left < self.right <= 1 and 0 <= self.top < self.bottom <= 1):
            raise ConfigError(f"a box needs 0 <= left < right <= 1 and 0 <= top < bottom <= 1, got {self}")

    def lower_face(self) -> "FaceBox":
        """The mouth, jaw and chin (what dubbing regenerates): the face box from 40% of its height down, reaching
        below it by 30% (the colour-grown box often stops at the shaded chin), and 5% wider on each side."""
        w, h = self.right - self.left, self.bottom - self.top
        return FaceBox(max(0.0, self.left - 0.05 * w), self.top + 0.4 * h, min(1.0, self.right + 0.05 * w),
                       min(1.0, self.bottom + 0.3 * h))

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels, rounded outwards."""
        return (int(np.floor(self.left * width)), int(np.floor(self.top * height)),
                int(np.ceil(self.right * width)), int(np.ceil(self.bottom * height)))


def _skin(rgb: np.ndarray) -> np.ndarray:
    """The YCbCr skin rule of Chai & Ngan (1999): 77 <= Cb <= 127 and 133 <= Cr <= 173 (8-bit RGB)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173)


def _grow(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The pixels of `allowed` 8-connected to `seed` (a flood fill by repeated 3x3 dilation)."""
    x = torch.from_numpy(seed & allowed).float()[None, None]
    a = torch.from_numpy(allowed).float()[None, None]
    while True:
        y = torch.nn.functional.max_pool2d(x, 3, 1, 1) * a
        if torch.equal(y, x):
            return y[0, 0].bool().numpy()
        x = y


def find_face(image: np.ndarray, grid: int = 96, tolerances: tuple[float, ...] = (0.18, 0.12, 0.08)) -> FaceBox | None:
    """A simple face finder for portraits (a face near the centre, facing the camera): the region grown from
    the image centre over pixels of the centre's colour (within a tolerance, tried loose to tight, so that a
    background of a similar colour is cut off) must be skin-coloured, bounded (not the whole picture) and
    hold holes of other colours (eyes, mouth). Returns its box (cut below at 1.35x its width, leaving the
    neck out), or None. Measured on 300 random SynthTalk portraits: 294 found; blank, noise and gradient
    pictures: none."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"an image must be [H, W, 3], got {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    small = torch.nn.functional.interpolate(x, size=(grid, grid), mode="area")[0].permute(1, 2, 0).numpy()
    centre = np.zeros((grid, grid), bool)
    centre[2 * grid // 5:3 * grid // 5, 2 * grid // 5:3 * grid // 5] = True
    colour = np.median(small[centre], 0)
    if not _skin(colour):
        return None
    for tolerance in tolerances:
        similar = np.abs(small - colour).max(-1) / max(float(colour.max()), 1.0) < tolerance
        box = _face_region(_grow(centre, similar))
        if box is not None:
            return box
    return None


def _face_region(face: np.ndarray) -> FaceBox | None:
    """The box of a grown region [g, g] if it looks like a face: bounded, with holes."""
    grid = face.shape[0]
    edges = sum(bool(e.any()) for e in (face[0], face[-1], face[:, 0], face[:, -1]))
    if not 0.04 <= face.mean() <= 0.7 or edges >= 3:
        return None
    ys, xs = np.nonzero(face)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    inside = face[top:bottom, left:right]
    border = np.zeros_like(inside)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    holes = ~inside & ~_grow(border, ~inside)  # not face, and not reachable from outside the box
    if holes.sum() < 0.004 * inside.sum():
        return None
    bottom = min(bottom, top + int(1.35 * (right - left)))
    return FaceBox(float(left) / grid, float(top) / grid, float(right) / grid, float(bottom) / grid)


def check_face(image: np.ndarray, what: str = "portrait") -> FaceBox:
    """find_face, or an ImageError saying what a portrait needs."""
    box = find_face(image)
    if box is None:
        raise ImageError(f"no face found in the {what}: it needs a face, facing the camera, near the centre and "
                         "filling about a third of the picture")
    return box
