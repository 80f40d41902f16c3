"""Episode videos: frames from MuJoCo's offscreen renderer to H.264 mp4 with imageio-ffmpeg's ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """``frames`` ``[H, W, 3]`` uint8 to ``path`` (yuv420p, which every player opens); written under a
    temporary name and renamed when ffmpeg has finished."""
    import os

    import imageio_ffmpeg

    if not frames:
        raise ValueError("no frames to write")
    height, width = frames[0].shape[:2]
    tmp = path.with_name(f".{path.name}.partial")
    writer = imageio_ffmpeg.write_frames(str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, quality=7, ffmpeg_log_level="error",
                                         output_params=["-f", "mp4"])
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
    finally:
        writer.close()
    os.replace(tmp, path)


def frame_count(path: Path) -> int:
    """Frames in a video file, as ffmpeg counts them (decoding it)."""
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return int(frames)


def camera_and_view(env, camera: np.ndarray, size: int) -> np.ndarray:
    """A video frame of a visual env: the usual front view at ``size`` pixels beside what the agent
    sees (its camera frame, scaled up by whole pixels), ``[size, 2 * size, 3]`` uint8."""
    import mujoco

    unwrapped = env.unwrapped
    renderer = getattr(unwrapped, "_vgf_view_renderer", None)
    if renderer is None:
        model = unwrapped._model
        # the offscreen buffer was sized for the agent's small camera; the view needs a larger one
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        renderer = unwrapped._vgf_view_renderer = mujoco.Renderer(model, height=size, width=size)
    renderer.update_scene(unwrapped._data, camera="front")
    view = renderer.render()
    scale = max(1, size // camera.shape[0])
    seen = np.zeros((size, size, 3), np.uint8)
    big = camera[..., :3].repeat(scale, axis=0).repeat(scale, axis=1)[:size, :size]
    seen[:big.shape[0], :big.shape[1]] = big
    return np.concatenate([view, seen], axis=1)
