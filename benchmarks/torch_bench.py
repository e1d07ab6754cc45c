"""Timing harness of the PyTorch reference (torch_reference.py): training steps and serving.

Training (`Trainer`): Adam (lr 1e-3, weight decay 1e-4, as the paper), BCE on logits, one fixed
batch held on the device, optional bf16 autocast, channels_last, fused Adam and torch.compile.
Serving (`Server`): encoded PNG bytes -> OpenCV decode to grey -> resize to 256 (area averaging
when shrinking) -> centre crop 224 -> model in eval mode under torch.inference_mode (eager) ->
sigmoid probabilities, the same steps cxr_tf's SavedModel runs in its graph.

Run on its own it times one training configuration (see gpu_train.py for the named ones):
    .venv/bin/python benchmarks/torch_bench.py --config=authors --batch_size=4 --steps=2
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch_reference  # noqa: E402


def set_threads(n=None):
    """Same core count as TensorFlow's default (all cores): torch intra-op threads."""
    n = int(n or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def make_batch(batch_size, input_size, device, seed=0):
    """(image (B, 1, S, S), labels (B, 14), mask (B, 1, S, S)) on `device`."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch_size, 1, input_size, input_size, generator=g)
    y = (torch.rand(batch_size, torch_reference.NUM_CLASSES, generator=g) < 0.2).float()
    mask = torch.zeros(batch_size, 1, input_size, input_size)
    lo, hi = input_size // 6, input_size - input_size // 6
    mask[:, :, lo:hi, lo:hi] = 1.0
    return image.to(device), y.to(device), mask.to(device)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One model, optimiser and batch; `images_per_second(steps)` times N training steps."""

    def __init__(self, model, batch_size, device="cpu", bf16=False, channels_last=False,
                 fused_adam=False, compile_model=False):
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.bf16 = bool(bf16)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=memory_format).train()
        image, self.y, mask = make_batch(batch_size, model.input_size, self.device)
        self.image = image.contiguous(memory_format=memory_format)
        self.mask = mask.contiguous(memory_format=memory_format)
        self.uses_mask = model.mask_source == "input"
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4,
                                          fused=True if fused_adam else None)
        self.model = torch.compile(model) if compile_model else model
        self.compiled = False

    def step(self):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(self.image, self.mask if self.uses_mask else None)
        loss = F.binary_cross_entropy_with_logits(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def warm_up(self, steps=2):
        """Runs (and for torch.compile, compiles) the step; returns the seconds it took."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        self.compiled = True
        return time.perf_counter() - start

    def images_per_second(self, steps):
        if not self.compiled:
            self.warm_up()
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(int(steps)):
            loss = self.step()
        _sync(self.device)
        seconds = time.perf_counter() - start
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)}")
        return steps * self.batch_size / seconds


def decode_for_model(png_bytes, size=224, resize_size=256):
    """Encoded image -> (1, size, size) float32 in [0, 1]: grey, resize, centre crop."""
    import cv2
    image = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a decodable image")
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4
                             else cv2.COLOR_BGR2GRAY)
    image = image.astype(np.float32) / scale
    h, w = image.shape
    if (h, w) != (resize_size, resize_size):
        method = cv2.INTER_AREA if max(h, w) > resize_size else cv2.INTER_LINEAR
        image = cv2.resize(image, (resize_size, resize_size), interpolation=method)
    o = (resize_size - size) // 2
    return image[None, o:o + size, o:o + size]


class Server:
    """The eager PyTorch reference as a predictor: list of PNG bytes -> (B, 14) probabilities."""

    def __init__(self, model, resize_size=256):
        self.model = model.eval()
        self.size = model.input_size
        self.resize_size = resize_size

    def __call__(self, png_list):
        batch = np.stack([decode_for_model(b, self.size, self.resize_size) for b in png_list])
        with torch.inference_mode():
            return torch.sigmoid(self.model(torch.from_numpy(batch))).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="authors",
                        choices=("authors", "inline", "mask_input", "no_weighting"))
    parser.add_argument("--backbone", default="densenet121",
                        choices=sorted(torch_reference.DENSENETS))
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--unet_filters", type=int, default=64)
    parser.add_argument("--unet_size", type=int, default=None)
    parser.add_argument("--unet_depth", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--fused_adam", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    args = parser.parse_args()
    set_threads(args.threads)
    model = torch_reference.build(args.config, args.input_size, args.backbone, args.unet_filters,
                                  args.unet_size, args.unet_depth)
    trainer = Trainer(model, args.batch_size, args.device, args.bf16, args.channels_last,
                      args.fused_adam, args.compile)
    warm = trainer.warm_up()
    rates = [trainer.images_per_second(args.steps) for _ in range(args.repeats)]
    print(json.dumps({"torch": torch.__version__, "config": args.config, "device": args.device,
                      "bf16": args.bf16, "compile": args.compile,
                      "batch_size": args.batch_size, "warm_up_s": round(warm, 1),
                      "images_per_s": round(statistics.median(rates), 2),
                      "all_images_per_s": [round(r, 2) for r in rates]}))


if __name__ == "__main__":
    main()
