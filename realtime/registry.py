"""What the server holds across requests: the session slots and the portraits (shipped and uploaded)."""
from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine.errors import ImageError
from engine.generate.avatar import Avatar, ImageLimits, fit_square, load_portrait, shipped_portraits
from realtime.config import ServerConfig
from realtime.errors import BadPortrait, SessionLimit
from realtime.session import Session, new_generator

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """A session and what its transport opened for it; `end()` releases all of it, once."""

    session: Session
    kind: str  # "webrtc", "whip" or "websocket"
    pc: Any = None  # the RTCPeerConnection of a WebRTC session
    tasks: list[asyncio.Task] = field(default_factory=list)
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    attached: bool = True  # a websocket client is connected
    sample_rate: int = 16000  # the websocket client's declared input rate
    video: str = "jpeg"  # the websocket client's video format
    _ending: asyncio.Task | None = None

    async def end(self, reason: str) -> None:
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end(reason))
        await asyncio.shield(self._ending)

    async def _end(self, reason: str) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        await self.session.close(reason)
        if self.pc is not None:
            from realtime.webrtc import close_quietly

            await close_quietly(self.pc)
        await asyncio.gather(*(t for t in self.tasks if t is not current), return_exceptions=True)


class Registry:
    """Session slots: `reserve()` before any work for a new caller, then `add()` or `cancel()`."""

    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self.entries: dict[str, Entry] = {}
        self._reserved = 0
        self.started = 0
        self.rejected = 0

    @property
    def count(self) -> int:
        return len(self.entries) + self._reserved

    def reserve(self) -> None:
        if self.count >= self.max_sessions:
            self.rejected += 1
            raise SessionLimit(f"all {self.max_sessions} session slots are taken; try again later")
        self._reserved += 1

    def cancel(self) -> None:
        self._reserved -= 1

    def add(self, entry: Entry) -> None:
        self._reserved -= 1
        self.entries[entry.session.id] = entry
        self.started += 1
        entry.session.on_close.append(lambda s: self.entries.pop(s.id, None))
        # the session may end from inside (timeout, a generation error): release the transport too
        entry.session.on_close.append(lambda s: asyncio.ensure_future(entry.end(s.close_reason)))

    def by_token(self, token: str) -> Entry | None:
        return next((e for e in self.entries.values() if secrets.compare_digest(e.resume_token, token)), None)

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(*(e.end(reason) for e in list(self.entries.values())), return_exceptions=True)


class Portraits:
    """Portraits by name: the shipped ones, and uploads (kept in memory, oldest dropped first). Their
    reference latents are computed once, off the event loop, and shared by every session using them."""

    def __init__(self, avatar: Avatar, limits: ImageLimits, max_uploads: int):
        self.avatar, self.limits, self.max_uploads = avatar, limits, max_uploads
        self.shipped = shipped_portraits()
        self.uploads: OrderedDict[str, np.ndarray] = OrderedDict()
        self._references: dict[str, asyncio.Future] = {}

    @property
    def default(self) -> str:
        return next(iter(self.shipped))

    def names(self) -> list[str]:
        return [*self.shipped, *self.uploads]

    async def upload(self, data: bytes) -> str:
        """Decode (limits checked on the header first) and keep the portrait at the model's own size: a
        16-megapixel upload would otherwise hold 48 MB for as long as it stays on the list."""
        def decode() -> np.ndarray:
            return fit_square(load_portrait(data, self.limits), self.avatar.resolution)

        try:
            image = await asyncio.to_thread(decode)
        except ImageError as err:
            raise BadPortrait(str(err)) from err
        name = f"upload-{secrets.token_hex(6)}"
        self.uploads[name] = image
        while len(self.uploads) > self.max_uploads:
            old, _ = self.uploads.popitem(last=False)
            self._references.pop(old, None)
        return name

    async def reference(self, name: str | None) -> torch.Tensor:
        name = name or self.default
        if name not in self.shipped and name not in self.uploads:
            raise BadPortrait(f"unknown portrait {name!r}; choose one of {self.names()} or upload one")
        if name not in self._references:
            self._references[name] = asyncio.ensure_future(asyncio.to_thread(self._encode, name))
        try:
            return await asyncio.shield(self._references[name])
        except ImageError as err:
            self._references.pop(name, None)
            raise BadPortrait(str(err)) from err

    def _encode(self, name: str) -> torch.Tensor:
        image = self.uploads[name] if name in self.uploads else load_portrait(self.shipped[name], self.limits)
        return self.avatar.reference(image)


async def open_session(avatar: Avatar, portraits: Portraits, config: ServerConfig, portrait: str | None,
                       live: bool, steps: int | None = None) -> Session:
    """A started session for `portrait` (its slot must already be reserved)."""
    session_config = replace(config.session, steps=steps) if steps else config.session
    reference = await portraits.reference(portrait)
    generator = await asyncio.to_thread(new_generator, avatar, session_config)
    session = Session(secrets.token_hex(8), generator, reference, session_config, live=live,
                      portrait=portrait or portraits.default)
    session.start()
    return session
