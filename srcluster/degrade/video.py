"""Video-codec degradations through PyAV (FFmpeg's libraries, with libx264/libx265 bundled in its wheels).

The LR image is encoded as the last frame of a short clip whose earlier frames are the same image shifted by a few
pixels, so it is coded as a P-frame predicted from moved content: the output is real codec output (motion
compensation, quantised residuals, deblocking, 4:2:0 colour in limited-range BT.601), not an imitation. Frames are
padded to whole 16 x 16 macroblocks (edge pixels repeated, as encoders pad internally; even sizes for chroma
subsampling, x265's 16-pixel minimum) and cropped back. One thread per encoder: the data workers are the parallelism.
A 64 x 64 clip takes a few milliseconds.

h264, mpeg2 and mpeg4 output is a pure function of the input and settings. hevc's is not quite: the libx265 in PyAV
18.1's wheels produced different bitstreams for the same clip on some inputs (a few percent of runs, from its motion
search: seen with PyAV alone, with and without its assembly), so a job using hevc gives the same LR on any number of
workers only up to that codec's own run-to-run variation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from srcluster.registry import Registry

FPS = 25
MB = 16  # macroblock: frames are padded to multiples of it


@dataclass(frozen=True)
class VideoCodec:
    encoder: str
    decoder: str
    quality: str  # "crf" (0-51, lower is better) or "qscale" (1-31, lower is better)
    chroma: tuple[str, ...]
    presets: bool  # x264/x265 speed presets apply
    options: dict[str, str] = field(default_factory=dict)


CODECS: Registry[VideoCodec] = Registry("video codec")


def _codec(name: str, spec: VideoCodec) -> None:
    CODECS.register(name)(lambda: spec)


_codec("h264", VideoCodec("libx264", "h264", "crf", ("420", "422", "444"), True))
# x265 runs without its lookahead and B-frames (irrelevant for a 2-3 frame clip): with them, the libx265 in PyAV
# 18.1's wheels corrupted the heap on frames of varying small sizes (reproduced with PyAV alone).
_codec(
    "hevc",
    VideoCodec(
        "libx265",
        "hevc",
        "crf",
        ("420", "422", "444"),
        True,
        {"x265-params": "log-level=none:pools=none:frame-threads=1:rc-lookahead=0:bframes=0"},
    ),
)
_codec("mpeg2", VideoCodec("mpeg2video", "mpeg2video", "qscale", ("420", "422"), False))
_codec("mpeg4", VideoCodec("mpeg4", "mpeg4", "qscale", ("420",), False))

PIX_FMT = {"420": "yuv420p", "422": "yuv422p", "444": "yuv444p"}


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved by (dy, dx) pixels, edges repeated (no wrap-around seam for the encoder to code)."""
    h, w = image.shape[:2]
    p = max(abs(dy), abs(dx))
    padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge")
    return padded[p - dy : p - dy + h, p - dx : p - dx + w]


def encode_clip(
    image: np.ndarray,
    codec: str,
    quality: float,
    *,
    preset: str = "medium",
    chroma: str = "420",
    motion: tuple[int, int] = (0, 0),
    frames: int = 2,
    bpp: float | None = None,
) -> np.ndarray:
    """`image` (H, W, 3) uint8 through `codec` as the last of `frames` frames; returns the decoded (H, W, 3) uint8.

    `quality` is the CRF (h264, hevc) or the fixed quantiser (mpeg2, mpeg4); with `bpp` the encoder targets
    bpp * W * H * 25 bit/s instead. Earlier frames are shifted by up to `motion` = (dy, dx) pixels.
    """
    import av  # FFmpeg's libraries load here, not when the job schema imports this module for CODECS' names

    spec = CODECS.build(codec)
    h, w = image.shape[:2]
    even = np.pad(image, ((0, -h % MB), (0, -w % MB), (0, 0)), mode="edge")
    encoder = av.CodecContext.create(spec.encoder, "w")
    assert isinstance(encoder, av.VideoCodecContext)  # every CODECS entry names a video codec
    encoder.width, encoder.height = even.shape[1], even.shape[0]
    encoder.pix_fmt = PIX_FMT[chroma]
    encoder.time_base = Fraction(1, FPS)
    encoder.framerate = Fraction(FPS, 1)
    encoder.thread_count = 1
    options = dict(spec.options)
    if bpp is not None:
        encoder.bit_rate = max(1000, int(bpp * encoder.width * encoder.height * FPS))
    elif spec.quality == "crf":
        options["crf"] = str(round(quality))
    else:
        options["qmin"] = options["qmax"] = str(round(quality))
    if spec.presets:
        options["preset"] = preset
    encoder.options = options

    packets = []
    for k in range(frames):
        # frame k is shifted by (frames - 1 - k) / (frames - 1) of the motion: the last frame is the image itself
        t = (frames - 1 - k) / max(1, frames - 1)
        content = _shift(even, round(motion[0] * t), round(motion[1] * t)) if k < frames - 1 else even
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(content), format="rgb24").reformat(
            format=encoder.pix_fmt
        )
        frame.pts = k
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.encode(None))

    decoder = av.CodecContext.create(spec.decoder, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    decoder.thread_count = 1
    decoded = []
    for packet in packets:
        decoded.extend(decoder.decode(packet))
    decoded.extend(decoder.decode(None))
    if len(decoded) != frames:
        raise RuntimeError(f"{codec}: encoded {frames} frames but decoded {len(decoded)}")
    return decoded[-1].to_ndarray(format="rgb24")[:h, :w]
