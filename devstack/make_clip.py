"""Generate the demo lecture clip (``static/media/lecture.webm``) with headless Chromium.

There is no ffmpeg on the machines we target, so the browser draws a counter on a canvas and
records it with MediaRecorder (VP8). MediaRecorder leaves the WebM's duration unset, which makes
the clip unseekable; :func:`set_duration` writes it into the Segment Info. Run once:
``.venv/bin/python -m devstack.make_clip``.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import struct
import sys
from pathlib import Path

from playwright.async_api import async_playwright

SECONDS = 30
OUT = Path(__file__).resolve().parent.parent / "static" / "media" / "lecture.webm"

RECORD = """
async (seconds) => {
  const canvas = document.createElement("canvas");
  canvas.width = 320; canvas.height = 180;
  const ctx = canvas.getContext("2d");
  const stream = canvas.captureStream(10);
  const recorder = new MediaRecorder(stream, {
    mimeType: "video/webm;codecs=vp8", videoBitsPerSecond: 60000,
  });
  const chunks = [];
  recorder.ondataavailable = (e) => chunks.push(e.data);
  const start = performance.now();
  const draw = () => {
    const t = (performance.now() - start) / 1000;
    ctx.fillStyle = `hsl(${(t * 12) % 360}, 55%, 35%)`;
    ctx.fillRect(0, 0, 320, 180);
    ctx.fillStyle = "#fff";
    ctx.font = "bold 64px sans-serif";
    ctx.fillText(t.toFixed(1) + " s", 60, 110);
    ctx.font = "18px sans-serif";
    ctx.fillText("Scorecast demo lecture", 60, 150);
  };
  const timer = setInterval(draw, 50);
  draw();
  recorder.start(1000);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  recorder.stop();
  await new Promise((r) => (recorder.onstop = r));
  clearInterval(timer);
  const blob = new Blob(chunks, { type: "video/webm" });
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
"""


def _vint(data: bytes, at: int) -> tuple[int, int]:
    """An EBML variable-size integer at ``at``: (value, length)."""
    first = data[at]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    value = first & (0xFF >> length)
    for b in data[at + 1 : at + length]:
        value = (value << 8) | b
    return value, length


def set_duration(webm: bytes, seconds: float) -> bytes:
    """Insert a Duration element (milliseconds at the default TimecodeScale) into Segment Info."""
    info_id = b"\x15\x49\xa9\x66"
    at = webm.index(info_id)
    size, size_len = _vint(webm, at + 4)
    body_start = at + 4 + size_len
    duration = b"\x44\x89\x88" + struct.pack(">d", seconds * 1000.0)
    new_size = size + len(duration)
    encoded = bytes([0x01]) + new_size.to_bytes(7, "big")  # an 8-byte vint: room to grow
    return webm[:at] + info_id + encoded + duration + webm[body_start:]


async def record(seconds: int) -> bytes:
    chromium = shutil.which("chromium")
    if not chromium:
        raise SystemExit("needs Debian chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
        page = await browser.new_page()
        data = await page.evaluate(RECORD, seconds)
        await browser.close()
    return base64.b64decode(data)


def main() -> int:
    raw = asyncio.run(record(SECONDS))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(set_duration(raw, SECONDS))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
