"""PyTorch reference of CXR-IRNet (Fang et al. 2021), written from the method in docs/design.md.

The peer that cxr_tf's Keras models are timed against (benchmarks/run_all.py, gpu_train.py). It
needs only `torch` (the `bench` extra: `pip install -e '.[bench]'`, or `pip install torch==2.13.0`
for the local CPU wheel); torchvision is not used (DenseNet121 is written out below), so it runs
wherever torch does.

The model, as the authors run it:
  grey image (B, 1, S, S) in [0, 1]
    -> three channels, ImageNet mean/std
    -> multi-scale attention (MA): channel max and mean of x, conv5(x), conv9(x) (3 filters each,
       stride 1, 'same', no bias) -> concat (6 maps) -> conv3x3 to 1 (no bias) -> sigmoid -> * x
    -> DenseNet121 features (blocks 6-12-24-16, growth 32, final BN + ReLU):
       F_g (B, 1024, S/32, S/32)
    -> F_l = F_g * M_g, with M_g the segmenter's union mask average-pooled to F_g's grid and
       binarised at 0.5 (no gradient into the segmenter, which stays in eval mode)
    -> global average pool -> Linear(1024, 14) -> logits (sigmoid + BCE in the loss).
  The segmenter is the authors' U-Net: the common PyTorch U-Net with 64 base filters, four
  down-sampling steps, bilinear up-sampling (hence a 512-channel bottom) and one output channel
  (their U-Net is trained on the union mask), run inline and frozen at 224 px. It costs about
  61 GFLOPs per image forward against 5.8 for the classifier (`flops()` below counts them).

`mask_source` selects where M_g comes from: "segmenter" (inline U-Net), "input" (a (B, 1, H, W)
mask passed to forward, the "mask given as an input" benchmark configuration) or "none" (no
feature weighting).

Usage (prints parameter counts and forward GFLOPs per image of each part):
    .venv/bin/python benchmarks/torch_reference.py [--input_size=224] [--unet_filters=64]
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 14
MASK_SOURCES = ("segmenter", "input", "none")


# ------------------------------------------------------------------------------ attention

class MultiScaleAttention(nn.Module):
    """MA module: six one-channel maps -> 3x3 conv -> sigmoid, multiplied into x (stride 1)."""

    def __init__(self, channels=3, filters=3, kernel_sizes=(5, 9), fuse_kernel_size=3):
        super().__init__()
        self.scale_convs = nn.ModuleList(
            nn.Conv2d(channels, filters, k, padding=k // 2, bias=False) for k in kernel_sizes)
        self.fuse = nn.Conv2d(2 * (1 + len(kernel_sizes)), 1, fuse_kernel_size,
                              padding=fuse_kernel_size // 2, bias=False)

    def forward(self, x):
        maps = []
        for t in [x] + [conv(x) for conv in self.scale_convs]:
            maps.append(t.amax(dim=1, keepdim=True))
            maps.append(t.mean(dim=1, keepdim=True))
        return x * torch.sigmoid(self.fuse(torch.cat(maps, dim=1)))


# ------------------------------------------------------------------------------ DenseNet121

class _DenseLayer(nn.Module):
    def __init__(self, in_channels, growth_rate, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], dim=1)


class _Transition(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.AvgPool2d(2, stride=2))


class DenseNet(nn.Module):
    """DenseNet features (Huang et al. 2017) as in torchvision, ending with BN + ReLU.

    DenseNet121: blocks (6, 12, 24, 16), growth rate 32, 64 stem filters, bottleneck 4.
    """

    def __init__(self, blocks=(6, 12, 24, 16), growth_rate=32, stem_filters=64, bn_size=4):
        super().__init__()
        layers = [nn.Conv2d(3, stem_filters, 7, stride=2, padding=3, bias=False),
                  nn.BatchNorm2d(stem_filters), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
        channels = stem_filters
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(_DenseLayer(channels, growth_rate, bn_size))
                channels += growth_rate
            if i < len(blocks) - 1:
                layers.append(_Transition(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        return self.features(x)


# Small DenseNets of the same layout as cxr_tf's (models/backbones.py), for quick smoke runs.
DENSENETS = {
    "densenet121": ((6, 12, 24, 16), 32, 64),
    "densenet_small": ((3, 6, 12, 8), 16, 32),
    "densenet_tiny": ((2, 2, 2, 2), 12, 24),
}


# ------------------------------------------------------------------------------ U-Net

class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels, out_channels, mid_channels=None):
        mid = mid_channels or out_channels
        super().__init__(nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
                         nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class _Up(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = _DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        if dy or dx:  # odd sizes: pad to the skip connection's size
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The common PyTorch U-Net with bilinear up-sampling (as the authors use it).

    base_filters 64 gives 64-128-256-512 down and a 512-channel bottom (1024 / 2, bilinear);
    outputs `out_channels` logits.
    """

    def __init__(self, in_channels=1, out_channels=1, base_filters=64, depth=4):
        super().__init__()
        f = [base_filters * 2 ** i for i in range(depth + 1)]
        self.inc = _DoubleConv(in_channels, f[0])
        self.downs = nn.ModuleList()
        for i in range(1, depth + 1):
            out = f[i] // 2 if i == depth else f[i]
            self.downs.append(nn.Sequential(nn.MaxPool2d(2), _DoubleConv(f[i - 1], out)))
        self.ups = nn.ModuleList()
        for i in range(depth, 0, -1):
            out = f[i - 1] if i == 1 else f[i - 1] // 2
            self.ups.append(_Up(f[i], out))
        self.outc = nn.Conv2d(f[0], out_channels, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


# ------------------------------------------------------------------------------ CXR-IRNet

class CXRIRNet(nn.Module):
    """MA -> DenseNet -> feature weighting by the lung-and-heart mask -> GAP -> Linear(14).

    forward(image, mask=None) returns logits (B, 14). `image` is (B, 1, S, S) grey in [0, 1];
    `mask` a (B, 1, H, W) union mask (H, W multiples of S/32) when mask_source == "input".
    """

    def __init__(self, input_size=224, backbone="densenet121", attention=True,
                 mask_source="segmenter", unet_filters=64, unet_size=None, unet_depth=4,
                 threshold=0.5, num_classes=NUM_CLASSES):
        super().__init__()
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
        if backbone not in DENSENETS:
            raise ValueError(f"backbone must be one of {tuple(DENSENETS)}, got {backbone!r}")
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.input_size = int(input_size)
        self.mask_source = mask_source
        self.threshold = float(threshold)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.attention = MultiScaleAttention() if attention else nn.Identity()
        blocks, growth, stem = DENSENETS[backbone]
        self.backbone = DenseNet(blocks, growth, stem)
        self.head = nn.Linear(self.backbone.out_channels, num_classes)
        self.segmenter = None
        self.unet_size = int(unet_size or input_size)
        if mask_source == "segmenter":
            self.segmenter = UNet(1, 1, unet_filters, unet_depth)
            self.segmenter.requires_grad_(False)
            self.segmenter.eval()

    def train(self, mode=True):
        super().train(mode)
        if self.segmenter is not None:
            self.segmenter.eval()  # frozen: batch-norm statistics stay fixed
        return self

    def union_mask(self, image):
        """The frozen segmenter's union-mask probabilities (B, 1, s, s) at its own size."""
        with torch.no_grad():
            x = image
            if self.unet_size != image.shape[-1]:
                x = F.interpolate(image, size=(self.unet_size, self.unet_size),
                                  mode="bilinear", antialias=True, align_corners=False)
            return torch.sigmoid(self.segmenter(x)).amax(dim=1, keepdim=True)

    def grid_mask(self, union, grid):
        pooled = F.adaptive_avg_pool2d(union.float(), grid)
        return (pooled >= self.threshold).to(union.dtype).detach()

    def forward(self, image, mask=None):
        x = image.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        x = self.attention(x)
        features = self.backbone(x)
        if self.mask_source != "none":
            if self.mask_source == "segmenter":
                mask = self.union_mask(image)
            elif mask is None:
                raise ValueError("mask_source='input' needs a mask: forward(image, mask)")
            grid = self.grid_mask(mask, features.shape[-2:])
            features = features * grid.to(features.dtype)
        return self.head(features.mean(dim=(2, 3)))


def build(config="authors", input_size=224, backbone="densenet121", unet_filters=64,
          unet_size=None, unet_depth=4):
    """A reference model by benchmark configuration name:

    authors: inline frozen U-Net (unet_filters, unet_size, default 64 filters at input_size);
    mask_input: the mask is a forward() argument; no_weighting: no mask at all.
    """
    sources = {"authors": "segmenter", "inline": "segmenter", "mask_input": "input",
               "no_weighting": "none"}
    if config not in sources:
        raise ValueError(f"config must be one of {tuple(sources)}, got {config!r}")
    return CXRIRNet(input_size, backbone, True, sources[config], unet_filters, unet_size,
                    unet_depth)


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def flops(module, *inputs):
    """Forward FLOPs (2 per multiply-add) of module(*inputs), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_size", type=int, default=224, help="classifier input side")
    parser.add_argument("--backbone", default="densenet121", choices=sorted(DENSENETS))
    parser.add_argument("--unet_filters", type=int, default=64, help="U-Net base filters")
    parser.add_argument("--unet_size", type=int, default=None,
                        help="U-Net input side (default: input_size)")
    args = parser.parse_args()
    s = args.input_size
    model = build("authors", s, args.backbone, args.unet_filters, args.unet_size).eval()
    image = torch.rand(1, 1, s, s)
    u = model.unet_size
    total = flops(model, image)
    unet = flops(model.segmenter, torch.rand(1, 1, u, u))
    print(f"CXR-IRNet ({args.backbone}, {s} px): {count_parameters(model) / 1e6:.2f} M "
          f"parameters, {total / 1e9:.2f} GFLOPs per image forward")
    print(f"  U-Net ({args.unet_filters} filters, {u} px): "
          f"{count_parameters(model.segmenter) / 1e6:.2f} M parameters, {unet / 1e9:.2f} GFLOPs")
    print(f"  classifier without U-Net: {(total - unet) / 1e9:.2f} GFLOPs "
          f"(U-Net / classifier = {unet / max(total - unet, 1):.1f})")
    with torch.no_grad():
        assert math.isfinite(float(model(image).sum()))


if __name__ == "__main__":
    main()
