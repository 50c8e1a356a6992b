"""Episode videos a person can read: every executed step, the instruction the policy was given and the step
count above the image, and the outcome on the last frames (green: success, red: failure, with what the
puck reached when the env says so), held for a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BAND = 30  # pixels of text band above and below the image
SUCCESS_RGB = (30, 140, 60)
FAILURE_RGB = (180, 40, 40)
CAPTION_RGB = (30, 30, 30)


def outcome_text(success: bool, info: dict) -> str:
    """ "success" / "failure", with the block reached (env info "reached": a name or None) when known."""
    text = "SUCCESS" if success else "FAILURE"
    if "reached" in info:
        reached = info["reached"]
        text += f": reached the {reached} block" if reached else ": reached no block"
    return text


def annotate(frame: np.ndarray, caption: str, outcome: str | None, success: bool, long_side: int) -> np.ndarray:
    """frame [H, W, 3] uint8 -> [BAND + h + BAND, w, 3]: scaled image, caption above, outcome (if any) below."""
    from PIL import Image, ImageDraw

    height, width = frame.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(frame).resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)
    canvas = Image.new("RGB", (size[0], size[1] + 2 * BAND), (255, 255, 255))
    canvas.paste(image, (0, BAND))
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(_wrap(caption, size[0])):
        draw.text((4, 2 + 13 * row), line, fill=CAPTION_RGB)
    if outcome is not None:
        draw.rectangle((0, BAND + size[1], size[0], size[1] + 2 * BAND), fill=SUCCESS_RGB if success else FAILURE_RGB)
        for row, line in enumerate(_wrap(outcome, size[0])):
            draw.text((4, BAND + size[1] + 2 + 13 * row), line, fill=(255, 255, 255))
    return np.asarray(canvas)


def _wrap(text: str, width_px: int, char_px: int = 6) -> list[str]:
    """At most two lines of about width_px / char_px characters (PIL's default bitmap font)."""
    limit = max(8, width_px // char_px)
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > limit:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return [lines[0], " ".join(lines[1:])[:limit]] if len(lines) > 1 else lines


def save_episode_gif(
    frames: list[np.ndarray],
    path: Path,
    instruction: str,
    success: bool,
    info: dict,
    fps: int = 8,
    long_side: int = 224,
) -> None:
    """frames: the first view before the first step and after every executed step -> an annotated GIF."""
    from PIL import Image

    outcome = outcome_text(success, info)
    last = len(frames) - 1
    annotated = [
        annotate(frame, f"{instruction} | step {i}/{last}", outcome if i == last else None, success, long_side)
        for i, frame in enumerate(frames)
    ]
    images = [Image.fromarray(a) for a in annotated]
    durations = [int(1000 / fps)] * last + [int(1000 / fps) + 1000]  # the outcome is held a second longer
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
