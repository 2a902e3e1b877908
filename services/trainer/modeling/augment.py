"""Training-time augmentation of chest films (never part of the exported model).

Geometry: a small rotation, shear, zoom and translation fused into ONE affine warp per image, so
an image is resampled once (four separate Keras layers would blur it four times and cost four
warps). Intensity: brightness, contrast and gamma, strong on purpose, because films from another
period or machine look different (the held-back test split does).

Sharpness: a Gaussian blur of random width and a little pixel noise. The copies in the data set
were resized from different sources (`manifest.csv`'s `source_resolution`), and the source mix
differs between NORMAL and PNEUMONIA, so fine-scale sharpness may carry label information here
that uploads (from neither source) will not. Randomising sharpness keeps the network from leaning
on it. (The HOG baseline does not: its 16 px cells at 128 px are too coarse; blurring every image
with sigma 1 moved its AUROC only from 0.997 to 0.996.)

No vertical flip (films are never upside down). No horizontal flip either: the heart, the aortic
knob, the gastric bubble and the side markers sit on a known side of a chest film, so a mirrored
film is an image the service never receives, and pneumonia is not equally common on both sides
(right lower lobe most often) - a flip would teach the model to ignore real anatomy.

Resize history: with `resample` below 1, each batch is first shrunk (area averaging) to a random
side between `resample` and 1 times its own and stretched back (bilinear). In this data set the
source of a copy (a 224 x 224 or a 227 x 227 copy, or the original film) follows the label: 96 %
of the films made from 224 x 224 copies are pneumonia. Resampling every film at a random scale
overwrites the fine traces each source left, so the label can only be read at scales above them.

Scale: a random crop of `crop_area` of the film (a share of its area, drawn per image, placed
anywhere inside it) is stretched back to the full size, fused into the same warp. Films of a new
period are framed differently (collimation, patient size, distance); crops teach the network that
the lungs, not the framing, carry the label.

Markers: with probability `erase_corners` each corner of the film is covered by a rectangle of the
image's mean grey (`erase_size` of the side, drawn per corner). Laterality letters ("R"/"L"),
rulers and shoulders sit there; erasing them on part of the films keeps the network from leaning
on them.

Random numbers come from stateless ops keyed by (seed, batch number): the same seed gives the same
augmented stream, whatever the number of tf.data threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (angles in degrees, fractions of the image side)."""

    rotation_deg: float = 10.0
    shear_deg: float = 6.0
    zoom: tuple[float, float] = (0.9, 1.15)
    translation: float = 0.07
    brightness: float = 0.15  # added, as a fraction of the 0..255 range
    contrast: tuple[float, float] = (0.7, 1.4)  # factor around the image mean
    gamma: tuple[float, float] = (0.7, 1.45)
    blur_sigma: tuple[float, float] = (0.0, 1.5)  # pixels; drawn uniformly per image
    noise: float = 4.0  # largest sd of added Gaussian noise, in grey levels
    crop_area: tuple[float, float] = (1.0, 1.0)  # share of the film's area kept by the crop
    erase_corners: float = 0.0  # probability that a corner is covered
    erase_size: tuple[float, float] = (0.1, 0.3)  # side of a covered corner, share of the side
    resample: float = 1.0  # smallest side of the down-and-up resampling, share of the side


def _uniform(seed: tf.Tensor, shape, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def _log_uniform(seed: tf.Tensor, shape, bounds: tuple[float, float]) -> tf.Tensor:
    return tf.exp(_uniform(seed, shape, math.log(bounds[0]), math.log(bounds[1])))


def affine_transforms(n: tf.Tensor, size: int, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """[n, 8] projective transforms (output pixel -> input pixel) about the image centre."""
    seeds = tf.random.experimental.stateless_split(seed, 7)
    angle = _uniform(seeds[0], [n], -1.0, 1.0) * math.radians(config.rotation_deg)
    shear = _uniform(seeds[1], [n], -1.0, 1.0) * math.radians(config.shear_deg)
    crop = tf.sqrt(_uniform(seeds[4], [n], *config.crop_area))  # side of the crop / side
    zoom = _log_uniform(seeds[2], [n], config.zoom) / crop
    # the crop's centre lies anywhere that keeps the crop inside the film
    slack = _uniform(seeds[5], [n, 2], -1.0, 1.0) * ((1.0 - crop) / 2.0 * size)[:, tf.newaxis]
    shift = _uniform(seeds[3], [n, 2], -1.0, 1.0) * config.translation * size + slack
    cos, sin, tan = tf.cos(angle), tf.sin(angle), tf.tan(shear)
    # A = rotation @ shear / zoom: zoom > 1 samples a smaller input area, i.e. magnifies.
    a00, a01 = cos / zoom, (cos * tan - sin) / zoom
    a10, a11 = sin / zoom, (sin * tan + cos) / zoom
    centre = (size - 1) / 2.0
    a02 = centre - a00 * centre - a01 * centre + shift[:, 0]
    a12 = centre - a10 * centre - a11 * centre + shift[:, 1]
    zeros = tf.zeros_like(angle)
    return tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


BLUR_RADIUS = 4


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Blur each image [N, S, S, 1] with its own Gaussian width `sigma` [N] (0 leaves it as is).

    The batch is moved to the channel axis so one depthwise convolution applies N kernels.
    """
    offsets = tf.range(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=tf.float32)
    safe_sigma = tf.maximum(sigma, 1e-3)[:, tf.newaxis]
    kernel = tf.exp(-0.5 * tf.square(offsets[tf.newaxis, :] / safe_sigma))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [N, K]
    channels = tf.transpose(images, [3, 1, 2, 0])  # [1, S, S, N]
    rows = tf.transpose(kernel)[:, tf.newaxis, :, tf.newaxis]  # [K, 1, N, 1]
    cols = tf.transpose(kernel)[tf.newaxis, :, :, tf.newaxis]  # [1, K, N, 1]
    blurred = tf.nn.depthwise_conv2d(channels, rows, [1, 1, 1, 1], "SAME")
    blurred = tf.nn.depthwise_conv2d(blurred, cols, [1, 1, 1, 1], "SAME")
    return tf.transpose(blurred, [3, 1, 2, 0])


def corner_mask(n: tf.Tensor, size: int, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """[n, S, S, 1]: 1 where a corner is covered, 0 elsewhere (each corner drawn on its own)."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    covered = tf.cast(_uniform(seeds[0], [n, 4], 0.0, 1.0) < config.erase_corners, tf.float32)
    sides = tf.round(_uniform(seeds[1], [n, 4, 2], *config.erase_size) * size)  # height, width
    coords = tf.range(size, dtype=tf.float32)
    mask = tf.zeros([n, size, size])
    for corner, (bottom, right) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        height, width = sides[:, corner, 0], sides[:, corner, 1]
        rows = coords[tf.newaxis, :] >= size - height[:, tf.newaxis] if bottom else \
            coords[tf.newaxis, :] < height[:, tf.newaxis]
        cols = coords[tf.newaxis, :] >= size - width[:, tf.newaxis] if right else \
            coords[tf.newaxis, :] < width[:, tf.newaxis]
        inside = tf.cast(rows[:, :, tf.newaxis] & cols[:, tf.newaxis, :], tf.float32)
        mask = tf.maximum(mask, inside * covered[:, corner, tf.newaxis, tf.newaxis])
    return mask[..., tf.newaxis]


def resample(images: tf.Tensor, size: int, smallest: float, seed: tf.Tensor) -> tf.Tensor:
    """The batch shrunk to one random side in [smallest * size, size] and stretched back."""
    side = tf.cast(tf.round(_uniform(seed, [], smallest, 1.0) * size), tf.int32)
    shrunk = tf.image.resize(images, [side, side], method="area")
    return tf.image.resize(shrunk, [size, size], method="bilinear")


def augment_batch(images: tf.Tensor, seed: tf.Tensor,
                  config: AugmentConfig = AugmentConfig()) -> tf.Tensor:
    """Augment float pixel values 0..255 shaped [N, S, S, 1]; returns the same shape and range."""
    images = tf.convert_to_tensor(images, tf.float32)
    n, size = tf.shape(images)[0], images.shape[1]
    geometry_seed, *intensity_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 8))
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=affine_transforms(n, size, config, geometry_seed),
        output_shape=tf.shape(images)[1:3], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="NEAREST")
    if config.resample < 1.0:
        warped = resample(warped, size, config.resample,
                          tf.random.experimental.stateless_fold_in(seed, 7))
    sigma = _uniform(intensity_seeds[3], [n], *config.blur_sigma)
    noise_sd = _uniform(intensity_seeds[4], [n, 1, 1, 1], 0.0, config.noise)
    noise = tf.random.stateless_normal(tf.shape(warped), seed=intensity_seeds[5]) * noise_sd
    x = (gaussian_blur(warped, sigma) + noise) / 255.0
    gamma = _log_uniform(intensity_seeds[0], [n, 1, 1, 1], config.gamma)
    x = tf.pow(tf.clip_by_value(x, 0.0, 1.0), gamma)
    mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    contrast = _log_uniform(intensity_seeds[1], [n, 1, 1, 1], config.contrast)
    x = (x - mean) * contrast + mean
    x = x + _uniform(intensity_seeds[2], [n, 1, 1, 1], -config.brightness, config.brightness)
    x = tf.clip_by_value(x, 0.0, 1.0) * 255.0
    if config.erase_corners <= 0:
        return x
    mask = corner_mask(n, size, config, intensity_seeds[6])
    return x * (1.0 - mask) + tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True) * mask
