"""Image preprocessing shared by the input pipelines, evaluation and the exported SavedModel.

One implementation, used on every path, so that a served image is preprocessed exactly like an
evaluated one (the export parity test checks this).

The model input contract: (size, size, 1) float32 in [0, 1], a radiograph with lungs dark and
bone bright. `resize_size` >= `size` reproduces the paper's "resize to 256, centre-crop 224".
"""

import tensorflow as tf


def decode_image_bytes(image_bytes, name="image"):
    """Decodes encoded PNG, JPEG, BMP or GIF bytes to a (H, W, 1) float32 image in [0, 1].

    Grey, RGB and RGBA inputs become one grey channel (alpha dropped); 16-bit PNGs keep their
    full precision (scaled by 65535, 8-bit by 255).

    Raises:
      tf.errors.InvalidArgumentError: when the bytes are not a decodable image; the message
        names `name`.
    """
    tf.debugging.assert_greater(tf.strings.length(image_bytes), 0,
                                message=f"{name}: empty image bytes (expected PNG or JPEG data)")
    is_png = tf.strings.substr(image_bytes, 0, 4) == b"\x89PNG"

    def png():
        # decode_png at uint16 returns 8-bit data scaled to 16 bits, so both depths map to [0, 1].
        img = tf.io.decode_png(image_bytes, channels=1, dtype=tf.uint16)
        return tf.cast(img, tf.float32) / 65535.0

    def other():
        img = tf.io.decode_image(image_bytes, channels=1, expand_animations=False,
                                 dtype=tf.uint8)
        return tf.cast(img, tf.float32) / 255.0

    def cmyk_jpeg():
        # libjpeg cannot convert 4-component (CMYK/YCCK) JPEGs to one channel, but decodes them
        # to RGB in their native mode; grey then by ITU-R 601 luma, as for RGB files.
        rgb = tf.cast(tf.io.decode_jpeg(image_bytes, channels=0), tf.float32)
        return tf.image.rgb_to_grayscale(rgb[..., :3]) / 255.0

    is_jpeg = tf.strings.substr(image_bytes, 0, 3) == b"\xff\xd8\xff"
    four_components = tf.cond(is_jpeg,
                              lambda: tf.io.extract_jpeg_shape(image_bytes)[2] == 4,
                              lambda: tf.constant(False))
    image = tf.case([(is_png, png), (four_components, cmyk_jpeg)], default=other,
                    exclusive=True)
    return tf.ensure_shape(image, [None, None, 1])


def encoded_image_shape(image_bytes):
    """(height, width) of encoded PNG or JPEG bytes from the file header, without decoding.

    PNG: the IHDR chunk (bytes 16-24, big-endian); JPEG: the frame header
    (tf.io.extract_jpeg_shape). Other bytes: InvalidArgumentError when run.
    """
    is_png = tf.strings.substr(image_bytes, 0, 4) == b"\x89PNG"

    def png():
        # Padded, so a file cut before its IHDR reads 0 x 0 and is left to the decoder's error.
        padded = tf.strings.join([image_bytes, b"\0" * 24])
        b = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
        big_endian = tf.constant([2 ** 24, 2 ** 16, 2 ** 8, 1], tf.int64)
        width = tf.reduce_sum(b[:4] * big_endian)
        height = tf.reduce_sum(b[4:8] * big_endian)
        return tf.stack([height, width])

    def jpeg():
        return tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64)

    return tf.cond(is_png, png, jpeg)


def to_float(image):
    """uint8 [0, 255] or uint16 [0, 65535] or float [0, 1] -> float32 [0, 1]."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    if image.dtype == tf.uint16:
        return tf.cast(image, tf.float32) / 65535.0
    return tf.cast(image, tf.float32)


def resize_and_crop(image, size, resize_size=None, method="auto"):
    """Resizes an image (H, W, C) or batch (B, H, W, C) to `resize_size` square, then centre-crops
    to `size`.

    With method "auto", shrinking (the longer side above `resize_size`) averages pixel areas,
    which is what the data set builders do offline with OpenCV's INTER_AREA
    (cxr_tf.data.builders._imaging.resize_image): the two agree to within 8-bit rounding, so a
    full-resolution image sent to the SavedModel is resized like the records the model was
    trained on. Enlarging uses bilinear interpolation, again as the builders do. The result has
    a static spatial shape, which graph-mode code needs.

    Args:
      image: (H, W, C) or (B, H, W, C) float tensor.
      size: output side.
      resize_size: side to resize to before cropping; defaults to `size` (no crop).
      method: "auto", or a tf.image.resize method ("nearest" for label maps).
    """
    size = int(size)
    resize_size = int(resize_size or size)
    if resize_size < size:
        raise ValueError(f"resize_size ({resize_size}) must be >= the crop size ({size})")
    shape = tf.shape(image)
    h, w = shape[-3], shape[-2]
    target = [resize_size, resize_size]

    def resized():
        if method != "auto":
            return tf.image.resize(image, target, method=method)
        shrink = tf.maximum(h, w) > resize_size
        return tf.cond(shrink, lambda: tf.image.resize(image, target, method="area"),
                       lambda: tf.image.resize(image, target, method="bilinear"))

    already = tf.logical_and(tf.equal(h, resize_size), tf.equal(w, resize_size))
    image = tf.cond(already, lambda: tf.cast(image, tf.float32), resized)
    if resize_size != size:
        offset = (resize_size - size) // 2
        image = image[..., offset:offset + size, offset:offset + size, :]
    static = image.shape.as_list()
    return tf.ensure_shape(image, static[:-3] + [size, size, static[-1]])


def model_input_from_bytes(image_bytes, size, resize_size=None):
    """Encoded image bytes -> (size, size, 1) float32 [0, 1] model input."""
    return resize_and_crop(decode_image_bytes(image_bytes), size, resize_size)
