"""SynthTalk portraits: a procedural renderer of stylised talking heads, with ground truth.

Shapes are signed-distance fields evaluated with torch on pixel grids (anti-aliased over one pixel) and
composited as premultiplied RGBA. For speed a clip is rendered in layers: the background, the body and the
parts of the head that do not move relative to it (ears, face with shading, nose, hair, glasses) are drawn
once; per frame only the eyes (blinks, expression), brows and mouth are drawn, in small boxes, then the head
is warped by the pose (roll, yaw, pitch as an affine warp with parallax for the inner features) and laid
over the body. Coordinates: x right, y down, both in [-1, 1] over the image.
"""
from __future__ import annotations

import colorsys
from dataclasses import astuple, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.motion import FaceState

HAIR_STYLES = ("bald", "short", "long", "bun", "fringe", "curly")
GLASSES = ("none", "round", "square")
COLLARS = ("round", "v", "shirt")
BACKGROUNDS = ("flat", "gradient", "room", "bokeh")
EYE_COLOURS = ((0.33, 0.2, 0.1), (0.18, 0.35, 0.6), (0.25, 0.45, 0.25), (0.45, 0.33, 0.2), (0.2, 0.2, 0.22),
               (0.5, 0.55, 0.6))
HAIR_COLOURS = ((0.1, 0.07, 0.05), (0.3, 0.18, 0.08), (0.55, 0.35, 0.15), (0.85, 0.7, 0.4), (0.6, 0.2, 0.08),
                (0.75, 0.75, 0.75), (0.22, 0.22, 0.25), (0.45, 0.3, 0.5))
SKIN_TONES = ((1.0, 0.87, 0.77), (0.98, 0.8, 0.68), (0.93, 0.74, 0.6), (0.87, 0.66, 0.5), (0.78, 0.57, 0.42),
              (0.68, 0.48, 0.34), (0.58, 0.4, 0.28), (0.47, 0.32, 0.22), (0.38, 0.25, 0.17), (0.3, 0.2, 0.14))
FRAME_COLOURS = ((0.1, 0.1, 0.1), (0.5, 0.3, 0.15), (0.75, 0.7, 0.6), (0.6, 0.1, 0.15))


# ----------------------------------------------------------------------------- identity

@dataclass(frozen=True)
class Identity:
    """Everything that makes one person. Discrete choices are indices into the tables above."""

    skin: int
    skin_jitter: float  # -1..1, lighter/darker within the tone
    face_width: float  # 0..1
    jaw: float  # 0 round .. 1 narrow chin
    eye_colour: int
    eye_size: float  # 0..1
    eye_spacing: float  # 0..1
    brow_thickness: float  # 0..1
    nose_size: float  # 0..1
    lip_thickness: float  # 0..1
    mouth_width: float  # 0..1
    lip_tint: float  # 0..1, pale .. red
    hair_style: int
    hair_colour: int
    hair_volume: float  # 0..1
    glasses: int
    frame_colour: int
    earrings: int  # 0/1
    collar: int
    cloth_hue: float  # 0..1
    cloth_value: float  # 0..1
    background: int
    bg_hue: float  # 0..1
    bg_value: float  # 0..1
    light: float  # -1..1, light from the left .. right

    @staticmethod
    def sample(rng: np.random.Generator) -> "Identity":
        u = lambda: float(rng.random())  # noqa: E731
        pick = lambda seq: int(rng.integers(len(seq)))  # noqa: E731
        drawn = Identity(pick(SKIN_TONES), u() * 2 - 1, u(), u(), pick(EYE_COLOURS), u(), u(), u(), u(), u(), u(), u(),
                        pick(HAIR_STYLES), pick(HAIR_COLOURS), u(), pick(GLASSES), pick(FRAME_COLOURS),
                        int(rng.random() < 0.3), pick(COLLARS), u(), u(), pick(BACKGROUNDS), u(), u(), u() * 2 - 1)
        return Identity.from_vector(drawn.vector())  # float32-exact, so vectors round-trip

    def vector(self) -> np.ndarray:
        return np.array(astuple(self), np.float32)

    @staticmethod
    def from_vector(v: np.ndarray) -> "Identity":
        kinds = [f.type for f in fields(Identity)]
        return Identity(*(int(round(float(x))) if k in (int, "int") else float(x) for x, k in zip(v, kinds)))

    @staticmethod
    def distinct_count() -> int:
        """Identities that differ in at least one discrete choice (continuous parameters not counted)."""
        return (len(SKIN_TONES) * len(EYE_COLOURS) * len(HAIR_STYLES) * len(HAIR_COLOURS) * len(GLASSES)
                * len(FRAME_COLOURS) * 2 * len(COLLARS) * len(BACKGROUNDS))


IDENTITY_DIM = len(fields(Identity))


# ----------------------------------------------------------------------------- drawing helpers

def _grid(size: int, box: tuple[float, float, float, float] = (-1, 1, -1, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of the part of the image inside box (x0, x1, y0, y1): X, Y [h, w]."""
    step = 2 / size
    xs = torch.arange(size) * step - 1 + step / 2
    x = xs[(xs >= box[0]) & (xs <= box[1])]
    y = xs[(xs >= box[2]) & (xs <= box[3])]
    return x[None, :].expand(len(y), -1), y[:, None].expand(-1, len(x))


def _box_slices(size: int, box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    step = 2 / size
    idx = lambda lo, hi: slice(int(np.ceil((lo + 1) / step - 0.5)), int(np.floor((hi + 1) / step - 0.5)) + 1)  # noqa: E731
    return idx(box[2], box[3]), idx(box[0], box[1])


def ellipse(x, y, cx, cy, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse (negative inside), in coordinate units."""
    k = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return (k - 1) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry))


def cover(d: torch.Tensor, size: int) -> torch.Tensor:
    """Coverage in [0, 1] of a shape with signed distance d, anti-aliased over one pixel."""
    return (0.5 - d * size / 2).clamp(0, 1)


def over(canvas: torch.Tensor, rgb, alpha: torch.Tensor) -> torch.Tensor:
    """Lay a colour (3-vector or [..., 3, h, w]) with coverage alpha [..., h, w] over a premultiplied RGBA
    canvas [..., 4, h, w], in place where shapes allow; returns the canvas."""
    rgb = torch.as_tensor(rgb, dtype=torch.float32)
    if rgb.ndim == 1:
        rgb = rgb[:, None, None]
    a = alpha.unsqueeze(-3)
    if canvas.shape[:-3] != torch.broadcast_shapes(canvas.shape[:-3], a.shape[:-3]):
        canvas = canvas.expand(*a.shape[:-3], *canvas.shape[-3:]).clone()
    canvas.mul_(1 - a)
    canvas[..., :3, :, :].add_(rgb * a)
    canvas[..., 3:, :, :].add_(a)
    return canvas


def _tone(rgb, factor: float) -> tuple[float, float, float]:
    return tuple(float(np.clip(c * factor, 0, 1)) for c in rgb)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- static layers

def _background(ident: Identity, size: int) -> torch.Tensor:
    x, y = _grid(size)
    base = torch.tensor(colorsys.hsv_to_rgb(ident.bg_hue, 0.35, 0.35 + 0.5 * ident.bg_value))
    kind = BACKGROUNDS[ident.background]
    img = base[:, None, None].expand(3, size, size).clone()
    if kind == "gradient":
        img = img * (1.15 - 0.35 * (y + 1) / 2)
    elif kind == "room":
        floor = (y > 0.55).float()
        img = img * (1 - 0.35 * floor)
        window = cover(torch.maximum((x + 0.55).abs() - 0.25, (y + 0.45).abs() - 0.3), size)
        img = img * (1 - window) + torch.tensor([0.85, 0.9, 0.95])[:, None, None] * window
    elif kind == "bokeh":
        rng = np.random.default_rng(int(ident.bg_hue * 1e6))
        for _ in range(7):
            cx, cy, r = rng.uniform(-1, 1), rng.uniform(-1, 0.5), rng.uniform(0.08, 0.22)
            blob = torch.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (r * r)))
            img = img + 0.25 * blob * torch.tensor(colorsys.hsv_to_rgb(rng.random(), 0.3, 1.0))[:, None, None]
    return torch.cat([img.clamp(0, 1), torch.ones(1, size, size)])


def _body(ident: Identity, size: int, skin) -> torch.Tensor:
    x, y = _grid(size)
    layer = torch.zeros(4, size, size)
    neck = cover(torch.maximum(x.abs() - 0.19, (y - 0.8).abs() - 0.4), size)
    layer = over(layer, _tone(skin, 0.85), neck)
    cloth = torch.tensor(colorsys.hsv_to_rgb(ident.cloth_hue, 0.55, 0.25 + 0.6 * ident.cloth_value))
    shoulders = cover(ellipse(x, y, 0, 1.45, 1.0, 0.7), size)
    collar = COLLARS[ident.collar]
    if collar == "v":
        cut = cover(x.abs() - 0.8 * (1.02 - y), size)  # a triangle opening upwards, apex at y = 1.02
        shoulders = shoulders * (1 - cut)
    elif collar == "round":
        shoulders = shoulders * (1 - cover(ellipse(x, y, 0, 0.8, 0.22, 0.12), size))
    shade = 1.0 - 0.25 * ((x - 0.4 * ident.light).abs())
    layer = over(layer, cloth[:, None, None] * shade, shoulders)
    if collar == "shirt":  # a light collar band around the neck
        band = cover((ellipse(x, y, 0, 0.8, 0.26, 0.1)).abs() - 0.025, size) * (y > 0.74).float()
        layer = over(layer, (0.95, 0.95, 0.93), band * shoulders)
    return layer


def _head(ident: Identity, size: int, skin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Static head layers in head-local coordinates: behind (hair at the back), face (ears, skin, nose),
    front (hair in front, glasses); and the feature geometry the per-frame parts need."""
    x, y = _grid(size)
    fw = 0.42 + 0.1 * ident.face_width
    fh = 0.58
    g = {"face_w": fw, "face_h": fh, "cy": -0.12, "eye_y": -0.17, "eye_dx": 0.15 + 0.05 * ident.eye_spacing,
         "eye_r": 0.055 + 0.02 * ident.eye_size, "mouth_y": 0.2, "mouth_w": 0.12 + 0.04 * ident.mouth_width,
         "lip": 0.018 + 0.018 * ident.lip_thickness}
    cy = g["cy"]
    hair = HAIR_COLOURS[ident.hair_colour]
    style = HAIR_STYLES[ident.hair_style]
    vol = 1 + 0.12 * ident.hair_volume
    behind = torch.zeros(4, size, size)
    if style == "long":
        behind = over(behind, _tone(hair, 0.8), cover(torch.maximum(ellipse(x, y, 0, cy + 0.25, fw * 1.35 * vol, 0.85),
                                                                     y - 0.75), size))
    # face outline: an ellipse whose half-width narrows towards the chin
    yy = ((y - cy) / fh).clamp(-1, 1)
    half_w = fw * (1 - (0.18 + 0.22 * ident.jaw) * yy.clamp(min=0) ** 2)
    d_face = (torch.sqrt((x / half_w) ** 2 + ((y - cy) / fh) ** 2) - 1) * fw
    face = torch.zeros(4, size, size)
    for side in (-1, 1):
        face = over(face, _tone(skin, 0.9), cover(ellipse(x, y, side * fw * 0.98, cy - 0.02, 0.07, 0.12), size))
    # Lambert shading from an ellipsoid normal, light from the upper left or right
    nz = (1 - (x / half_w) ** 2 - ((y - cy) / fh) ** 2).clamp(min=0).sqrt()
    light = np.array([0.5 * ident.light, -0.4, 0.8])
    light /= np.linalg.norm(light)
    lam = (light[0] * x / half_w + light[1] * (y - cy) / fh + light[2] * nz).clamp(min=0)
    skin_t = torch.tensor(skin)[:, None, None]
    shaded = skin_t * (0.62 + 0.45 * lam)
    blush = torch.exp(-(((x.abs() - fw * 0.55) / 0.1) ** 2 + ((y - 0.05) / 0.07) ** 2))
    shaded = shaded * (1 - 0.12 * blush) + torch.tensor([0.9, 0.4, 0.4])[:, None, None] * 0.12 * blush
    face = over(face, shaded.clamp(0, 1), cover(d_face, size))
    # nose: a soft shadow on the lit side's opposite, nostrils, a highlight on the tip
    ns = 0.8 + 0.4 * ident.nose_size
    side = -np.sign(ident.light) or 1.0
    ridge = torch.exp(-(((x - side * 0.025 * ns) / (0.025 * ns)) ** 2) - ((y - 0.0) / (0.12 * ns)) ** 2)
    face = over(face, _tone(skin, 0.7), 0.35 * ridge * (face[3] > 0.5).float())
    for s in (-1, 1):
        face = over(face, _tone(skin, 0.45), cover(ellipse(x, y, s * 0.035 * ns, 0.09, 0.018 * ns, 0.011 * ns), size))
    face = over(face, (1.0, 1.0, 1.0), 0.25 * torch.exp(-((x / 0.02) ** 2) - (((y - 0.06) / 0.02) ** 2)))
    front = torch.zeros(4, size, size)
    top = y - (cy - fh * 0.55)  # below the hairline
    cap = cover(torch.maximum(ellipse(x, y, 0, cy - 0.08, fw * 1.08 * vol, fh * 1.0 * vol), top), size)
    hair_shade = torch.tensor(hair)[:, None, None] * (0.8 + 0.35 * (1 - ((x / fw) ** 2)).clamp(0, 1))
    if style in ("short", "long", "bun", "fringe", "curly"):
        if style == "curly":
            bumps = 0.03 * torch.sin(12 * torch.atan2(y - cy, x)) * vol
            cap = cover(torch.maximum(ellipse(x, y, 0, cy - 0.08, fw * 1.12 * vol, fh * 1.02 * vol) + bumps, top), size)
        front = over(front, hair_shade.clamp(0, 1), cap)
    if style == "bun":
        front = over(front, hair_shade.clamp(0, 1), cover(ellipse(x, y, 0, cy - fh * 1.12, 0.15, 0.12), size))
    if style == "fringe":
        wave = 0.025 * torch.sin(x * 40)
        bangs = cover(torch.maximum(ellipse(x, y, 0, cy - 0.1, fw * 1.02, fh * 0.95), y - (g["eye_y"] - 0.1) - wave), size)
        front = over(front, hair_shade.clamp(0, 1), bangs)
    glasses = GLASSES[ident.glasses]
    if glasses != "none":
        colour = FRAME_COLOURS[ident.frame_colour]
        r = g["eye_r"] * 1.9
        for s in (-1, 1):
            cx = s * g["eye_dx"]
            if glasses == "round":
                d = ellipse(x, y, cx, g["eye_y"], r, r * 0.85)
            else:
                d = torch.maximum((x - cx).abs() - r, (y - g["eye_y"]).abs() - r * 0.7) - 0.0
            front = over(front, (0.85, 0.9, 1.0), 0.12 * cover(d, size))
            front = over(front, colour, cover(d.abs() - 0.008, size))
        bridge = torch.maximum(x.abs() - (g["eye_dx"] - r), (y - g["eye_y"] + 0.02).abs() - 0.007)
        front = over(front, colour, cover(bridge, size))
    if ident.earrings:
        for s in (-1, 1):
            front = over(front, (0.95, 0.8, 0.3), cover(ellipse(x, y, s * fw * 0.98, cy + 0.12, 0.022, 0.022), size))
    return behind, face, front, g


# ----------------------------------------------------------------------------- per-frame parts

EXPR_BROW = {0: (0.0, 0.0), 1: (0.02, 0.0), 2: (0.01, 0.06), 3: (0.07, 0.0), 4: (-0.03, -0.08)}  # raise, tilt
EXPR_EYE = {0: 1.0, 1: 0.8, 2: 0.9, 3: 1.3, 4: 0.85}  # eye opening
EXPR_SMILE = {0: 0.0, 1: 1.0, 2: -0.8, 3: 0.0, 4: -0.4}  # mouth corner curvature
EXPR_OPEN = {0: 0.0, 1: 0.05, 2: 0.0, 3: 0.25, 4: 0.0}  # extra jaw drop


PARALLAX = (0.3, 0.25)  # inner features move this far (head-local units per radian of yaw, pitch) past the outline


def _shifted_grid(size: int, box, state: FaceState) -> tuple[torch.Tensor, torch.Tensor]:
    """Box grid per frame [T, h, w], moved against the parallax shift so the features slide with yaw/pitch."""
    x, y = _grid(size, box)
    dx = torch.as_tensor(state.yaw, dtype=torch.float32)[:, None, None] * PARALLAX[0]
    dy = torch.as_tensor(state.pitch, dtype=torch.float32)[:, None, None] * PARALLAX[1]
    return x - dx, y - dy


def _eyes(ident: Identity, g: dict, size: int, state: FaceState, skin) -> tuple[torch.Tensor, tuple]:
    box = (-g["eye_dx"] - 0.22, g["eye_dx"] + 0.22, g["eye_y"] - 0.28, g["eye_y"] + 0.16)
    x, y = _shifted_grid(size, box, state)
    T = len(state.blink)
    expr = torch.tensor([EXPR_EYE[int(e)] for e in state.expression])[:, None, None]
    strength = torch.as_tensor(state.expression_strength, dtype=torch.float32)[:, None, None]
    opening = 1 + (expr - 1) * strength
    blink = torch.as_tensor(state.blink, dtype=torch.float32)[:, None, None]
    layer = torch.zeros(T, 4, *x.shape[1:])
    r = g["eye_r"]
    brow_raise = torch.tensor([EXPR_BROW[int(e)][0] for e in state.expression])[:, None, None] * strength
    brow_tilt = torch.tensor([EXPR_BROW[int(e)][1] for e in state.expression])[:, None, None] * strength
    hair = HAIR_COLOURS[ident.hair_colour]
    for s in (-1, 1):
        cx, cy = s * g["eye_dx"], g["eye_y"]
        ry = r * 0.62 * opening
        almond = ellipse(x, y, cx, cy, r * 1.25, ry)
        lid = cy - ry + 2 * ry * blink  # the upper lid comes down as the eye closes
        visible = torch.maximum(almond, lid - y)
        layer = over(layer, _tone(skin, 0.8), cover(almond - 0.006, size))  # eye socket shadow
        layer = over(layer, (0.96, 0.96, 0.94), cover(visible, size))
        iris = torch.maximum(ellipse(x, y, cx, cy, r * 0.62, r * 0.62), visible)
        layer = over(layer, EYE_COLOURS[ident.eye_colour], cover(iris, size))
        pupil = torch.maximum(ellipse(x, y, cx, cy, r * 0.28, r * 0.28), visible)
        layer = over(layer, (0.02, 0.02, 0.02), cover(pupil, size))
        glint = torch.maximum(ellipse(x, y, cx - r * 0.2, cy - r * 0.2, r * 0.1, r * 0.1), visible)
        layer = over(layer, (1.0, 1.0, 1.0), cover(glint, size))
        lid_skin = torch.maximum(almond, y - lid)  # the lid itself, skin coloured, above the line
        layer = over(layer, _tone(skin, 0.92), cover(lid_skin, size))
        lash = torch.maximum(almond - 0.004, (y - lid).abs() - 0.006)
        layer = over(layer, (0.08, 0.06, 0.05), cover(lash, size))
        # brow: a thick arc above the eye, raised and tilted by the expression
        by = cy - r * 1.9 - brow_raise + brow_tilt * (x - cx) * s * -1
        arc = torch.maximum(ellipse(x, y, cx, by + 0.04, r * 1.6, 0.06).abs() - (0.008 + 0.012 * ident.brow_thickness),
                            y - by - 0.0)
        arc = torch.maximum(arc, (x - cx).abs() - r * 1.5)
        layer = over(layer, _tone(hair, 0.7), cover(arc, size))
    return layer, _box_slices(size, box)


def _mouth(ident: Identity, g: dict, size: int, state: FaceState, skin) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    w0, my, lip = g["mouth_w"], g["mouth_y"], g["lip"]
    box = (-w0 * 1.9 - 0.08, w0 * 1.9 + 0.08, my - 0.18, my + 0.26)
    x, y = _shifted_grid(size, box, state)
    expr = state.expression
    strength = torch.as_tensor(state.expression_strength, dtype=torch.float32)[:, None, None]
    smile = torch.tensor([EXPR_SMILE[int(e)] for e in expr])[:, None, None] * strength
    jaw = torch.tensor([EXPR_OPEN[int(e)] for e in expr])[:, None, None] * strength
    op = (torch.as_tensor(state.mouth_open, dtype=torch.float32)[:, None, None] + jaw).clamp(0, 1)
    wd = torch.as_tensor(state.mouth_width, dtype=torch.float32)[:, None, None]
    rd = torch.as_tensor(state.mouth_round, dtype=torch.float32)[:, None, None]
    half_w = w0 * (0.75 + 0.6 * wd + 0.15 * smile.clamp(min=0)) * (1 - 0.35 * rd)
    gap = 0.13 * op  # the opening, top to bottom
    yc = y - my + smile * 0.06 * (x / half_w) ** 2  # corners up for a smile, down for a frown
    T = len(state.mouth_open)
    layer = torch.zeros(T, 4, *x.shape[1:])
    tint = ident.lip_tint
    lip_colour = tuple(float(c) for c in np.clip(np.array(_tone(skin, 0.78)) * (1 - 0.4 * tint)
                                                  + np.array([0.75, 0.25, 0.3]) * 0.4 * tint, 0, 1))
    outer = ellipse(x, yc, 0, 0, half_w, gap / 2 + lip * (1 + 0.3 * rd))
    layer = over(layer, lip_colour, cover(outer, size))
    cavity = ellipse(x, yc, 0, 0, half_w * 0.86, gap / 2 + 1e-4)
    cav = cover(cavity, size) * (gap > 0.004).float()
    layer = over(layer, (0.25, 0.05, 0.07), cav)
    teeth_top = torch.maximum(cavity, yc - (-gap / 2 + 0.02 * op.clamp(max=0.6) / 0.6 + 0.004))
    layer = over(layer, (0.97, 0.96, 0.92), cover(teeth_top, size) * (op > 0.12).float())
    teeth_low = torch.maximum(cavity, (gap / 2 - 0.012) - yc)
    layer = over(layer, (0.93, 0.92, 0.88), cover(teeth_low, size) * (op > 0.35).float())
    tongue = torch.maximum(ellipse(x, yc, 0, gap / 2, half_w * 0.5, gap * 0.35 + 1e-4), cavity)
    layer = over(layer, (0.75, 0.3, 0.35), cover(tongue, size) * (op > 0.2).float())
    line = torch.maximum(outer, yc.abs() - 0.004)  # the dark line between closed lips
    layer = over(layer, _tone(lip_colour, 0.55), cover(line, size) * (gap <= 0.02).float())
    mouth_alpha = layer[:, 3]
    return layer, torch.stack([cav, mouth_alpha], 1), _box_slices(size, box)


# ----------------------------------------------------------------------------- render a clip

@dataclass
class RenderOutput:
    frames: np.ndarray  # uint8 [T, S, S, 3]
    face_mask: np.ndarray  # uint8 [T, S, S], 255 on the face
    mouth_mask: np.ndarray  # uint8 [T, S, S], 255 on lips and mouth
    mouth_open_px: np.ndarray  # float [T] opening drawn, in pixels
    mouth_open: np.ndarray  # float [T] opening drawn / face height


HEAD_SCALE, HEAD_DY = 1.12, 0.1  # the head is drawn at unit scale, then enlarged and lowered onto the body


def _pose_grid(state: FaceState, size: int) -> torch.Tensor:
    """Sampling grid [T, S, S, 2] mapping image pixels to head-local coordinates (the inverse of the pose:
    roll about the neck, yaw and pitch as foreshortening and a shift, then the head's scale and place)."""
    T = len(state.yaw)
    roll = torch.as_tensor(state.roll, dtype=torch.float32)
    yaw = torch.as_tensor(state.yaw, dtype=torch.float32)
    pitch = torch.as_tensor(state.pitch, dtype=torch.float32)
    tx = torch.as_tensor(state.tx, dtype=torch.float32) * 2
    ty = torch.as_tensor(state.ty, dtype=torch.float32) * 2 + HEAD_DY
    sx = (1 - 0.25 * yaw.abs()) * HEAD_SCALE
    sy = (1 - 0.15 * pitch.abs()) * HEAD_SCALE
    c, s = torch.cos(roll), torch.sin(roll)
    pivot = 0.45  # the head turns about the neck
    theta = torch.zeros(T, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = c / sx, s / sx
    theta[:, 1, 0], theta[:, 1, 1] = -s / sy, c / sy
    # x_local = S^-1 R^-1 (x_img - t - p) + p, with p = (0, pivot)
    theta[:, 0, 2] = (-(c * tx) - s * (ty + pivot)) / sx
    theta[:, 1, 2] = (s * tx - c * (ty + pivot)) / sy + pivot
    return F.affine_grid(theta, [T, 1, size, size], align_corners=False)


def _over_premultiplied(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Both [..., 4, h, w] premultiplied; src over dst."""
    return src + dst * (1 - src[..., 3:4, :, :])


def render(identity: Identity, state: FaceState, size: int, batch: int = 16) -> RenderOutput:
    """Render a clip of len(state) frames at size×size, `batch` frames at a time."""
    skin = _tone(SKIN_TONES[identity.skin], 1 + 0.06 * identity.skin_jitter)
    background = _background(identity, size)
    body = _body(identity, size, skin)
    behind, face, front, g = _head(identity, size, skin)
    static_head = _over_premultiplied(face, front)
    long_hair = bool(behind[3].any())
    backdrop = background[:3] if long_hair else _over_premultiplied(background, body)[:3]
    outs = []
    for start in range(0, len(state), batch):
        part = state.slice(start, start + batch)
        T = len(part)
        eyes, eye_box = _eyes(identity, g, size, part, skin)
        mouth, mouth_gt, mouth_box = _mouth(identity, g, size, part, skin)
        # head-local canvas per frame: RGBA of the whole head, then face alpha, cavity, mouth (7 channels)
        local = torch.cat([static_head, face[3:4], torch.zeros(2, size, size)])[None].repeat(T, 1, 1, 1)
        for layer, box in ((eyes, eye_box), (mouth, mouth_box)):
            on_face = layer * face[3:4, box[0], box[1]]  # features never leave the skin
            under = _over_premultiplied(face[:, box[0], box[1]], on_face)
            local[:, :4, box[0], box[1]] = _over_premultiplied(under, front[:, box[0], box[1]].expand(T, -1, -1, -1))
        local[:, 5:7, mouth_box[0], mouth_box[1]] = mouth_gt * face[3:4, mouth_box[0], mouth_box[1]]
        if long_hair:
            local = torch.cat([local, behind[None].expand(T, -1, -1, -1)], 1)
        warped = F.grid_sample(local, _pose_grid(part, size), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        img = backdrop[None]
        if long_hair:
            img = _over_premultiplied(torch.cat([img.expand(T, -1, -1, -1), torch.ones(T, 1, size, size)], 1),
                                      warped[:, 7:11])
            img = _over_premultiplied(img, body[None])[:, :3]
        img = warped[:, :3] + img * (1 - warped[:, 3:4])
        outs.append((img, warped[:, 4:7]))
    img = torch.cat([o[0] for o in outs])
    gt = torch.cat([o[1] for o in outs])
    frames = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    open_px = (gt[:, 1] > 0.5).float().sum(1).amax(1)  # tallest column of the drawn cavity
    face_h = g["face_h"] * HEAD_SCALE * size
    to_u8 = lambda a: (a.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # noqa: E731
    return RenderOutput(frames, to_u8(gt[:, 0]), to_u8(gt[:, 2]), open_px.numpy(), (open_px / face_h).numpy())
