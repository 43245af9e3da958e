"""Degradation settings the tests share, in traiNNer-redux's keys."""

from __future__ import annotations

# Real-ESRGAN x4plus's settings in traiNNer-redux's keys, with every optional step switched on some of the time
EVERYTHING = {
    "high_order_degradation": True,
    "lq_usm": True,
    "thicklines_prob": 0.3,
    "blur_prob": 1.0,
    "kernel_range": [7, 21],
    "sinc_prob": 0.1,
    "blur_sigma": [0.2, 3],
    "resize_prob": [0.2, 0.7, 0.1],
    "resize_range": [0.15, 1.5],
    "resize_mode_list": ["area", "bilinear", "bicubic", "lanczos", "nearest-exact"],
    "resize_mode_prob": [1] * 5,
    "gaussian_noise_prob": 0.5,
    "noise_range": [1, 30],
    "poisson_scale_range": [0.05, 3],
    "gray_noise_prob": 0.4,
    "jpeg_range": [30, 95],
    "second_blur_prob": 0.8,
    "kernel_range2": [7, 21],
    "sinc_prob2": 0.1,
    "blur_sigma2": [0.2, 1.5],
    "resize_prob2": [0.3, 0.4, 0.3],
    "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5,
    "noise_range2": [1, 25],
    "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4,
    "jpeg_range2": [30, 95],
    "final_sinc_prob": 0.8,
    "final_kernel_range": [7, 21],
    # hevc is left out where outputs are compared bit for bit: libx265 itself is not reproducible (see video.py)
    "video_codec_prob": 0.5,
    "video_codec_list": ["h264", "mpeg2", "mpeg4"],
    "video_codec_prob_list": [1, 1, 1],
}
ALL_CODECS = {"video_codec_list": ["h264", "hevc", "mpeg2", "mpeg4"], "video_codec_prob_list": [1, 1, 1, 1]}
# every step off but the one a test switches on: no blur, resize "keep", no noise, no JPEG, plain final resize (the
# final resize at the same size is the identity)
QUIET = {
    "high_order_degradation": True,
    "resize_prob": [0, 0, 1],
    "resize_prob2": [0, 0, 1],
    "jpeg_prob": 0,
    "jpeg_prob2": 0,
    "resize_mode_list3": ["bicubic"],
    "resize_mode_prob3": [1],
}
