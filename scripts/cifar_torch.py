#!/usr/bin/env python3
"""The CIFAR-10 recipe of `mobilenet train` in PyTorch, for BENCHMARKS.md's training comparison.

Same network, data, augmentation, optimiser and schedule as

    mobilenet train --data ../shared/data/cifar10_jpeg --preset 0.5_32 --stem small-input \
        --padding symmetric --epochs E --batch-size 64 --threads 2 --workers 2

MobileNet v1 alpha 0.5 (min_depth 8), stride-1 stem, symmetric padding 1, BN eps 1e-3 and moving
decay 0.99 (momentum 0.01), ReLU6, dropout 0.001, 10 classes; inputs x/127.5 - 1; training
augmentation: zero-pad 4, random 32x32 crop, horizontal flip; RMSprop in TensorFlow's form
(mean square starts at 1, eps 1.0 inside the root, lr folded into momentum 0.9, decay 0.9) at lr
0.1 with one epoch of linear warm-up then cosine decay per step; L2 weight decay 4e-5 (gradient
4e-5 * w) on conv, pointwise and FC weights only. Prints one JSON line per epoch (images/s over
the training steps, held-out top-1 on test/).

    python scripts/cifar_torch.py --data ../shared/data/cifar10_jpeg --epochs E --threads 2

The paper network's throughput and memory (issue 13), next to `mobilenet train --preset 1.0_224
--stem standard --batch-size 32`: `--alpha 1.0 --resolution 224 --stem standard --batch-size
32`. Above 64 pixels the augmentation is `mobilenet train`'s there: a random crop of 35-100% of
the area (aspect 3/4-4/3) resized to the resolution, and a flip. The JSON line then also gives
the peak resident memory of the training process (`peak_rss_mb`; the loader processes apart).

Mixed precision, next to `mobilenet train --precision bf16`: `--precision bf16` runs the forward
pass and the loss under `torch.autocast("cpu", dtype=torch.bfloat16)` (PyTorch's CPU recipe:
convolutions in bf16 through oneDNN, batch norm and the loss in f32, f32 master weights).
"""
import argparse
import contextlib
import json
import math
import os
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

BODY = [(1, 32), (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512)] + [(1, 512)] * 5 + [
    (2, 1024), (1, 1024)]


def depth(c, alpha):
    return max(int(c * alpha), 8)


def conv_bn(cin, cout, stride, groups=1, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU6(inplace=True))


class MobileNet(nn.Module):
    def __init__(self, alpha=0.5, classes=10, stem_stride=1):
        super().__init__()
        layers = [conv_bn(3, depth(32, alpha), stem_stride)]  # small-input stem: stride 1
        cin = depth(32, alpha)
        for stride, c in BODY[1:]:
            layers.append(conv_bn(cin, cin, stride, groups=cin))
            layers.append(conv_bn(cin, depth(c, alpha), 1, k=1))
            cin = depth(c, alpha)
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.001)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.body(x).mean((2, 3))
        return self.fc(self.dropout(x))


class TfRmsProp(torch.optim.Optimizer):
    """TF1's RMSPropOptimizer: ms starts at 1; mom = m*mom + lr*g/sqrt(ms+eps); w -= mom."""

    def __init__(self, params, lr, decay=0.9, momentum=0.9, eps=1.0, foreach=True):
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, wd=0.0,
                                      foreach=foreach))

    def step_foreach(self):
        """The same update on all tensors of a group at once (torch._foreach_*), as PyTorch's
        own optimisers run by default: one kernel per operation, not one per parameter."""
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p]["ms"] = torch.ones_like(p)
                    self.state[p]["mom"] = torch.zeros_like(p)
            ms = [self.state[p]["ms"] for p in params]
            mom = [self.state[p]["mom"] for p in params]
            grads = [p.grad for p in params]
            if g["wd"]:
                grads = torch._foreach_add(grads, params, alpha=g["wd"])
            torch._foreach_mul_(ms, g["decay"])
            torch._foreach_addcmul_(ms, grads, grads, value=1 - g["decay"])
            denom = torch._foreach_add(ms, g["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_mul_(mom, g["momentum"])
            torch._foreach_add_(mom, torch._foreach_div(grads, denom), alpha=g["lr"])
            torch._foreach_sub_(params, mom)

    @torch.no_grad()
    def step(self):
        if self.defaults.get("foreach"):
            return self.step_foreach()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["ms"] = torch.ones_like(p)
                    st["mom"] = torch.zeros_like(p)
                grad = p.grad + g["wd"] * p
                st["ms"].mul_(g["decay"]).addcmul_(grad, grad, value=1 - g["decay"])
                st["mom"].mul_(g["momentum"]).add_(g["lr"] * grad / (st["ms"] + g["eps"]).sqrt())
                p.sub_(st["mom"])


class Folder(torch.utils.data.Dataset):
    def __init__(self, root, train, res=32):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.items = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
                      for f in sorted(os.listdir(os.path.join(root, c)))]
        self.train = train
        self.res = res

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        img = Image.open(path).convert("RGB")
        r = self.res
        if r > 64:
            if self.train:
                img = random_crop(img)
            x = np.asarray(img.resize((r, r), Image.BILINEAR), np.float32)
            if self.train and np.random.rand() < 0.5:
                x = x[:, ::-1]
        else:
            x = np.asarray(img.resize((r, r), Image.BILINEAR), np.float32)
        if self.train and r <= 64:
            x = np.pad(x, ((4, 4), (4, 4), (0, 0)))
            dy, dx = np.random.randint(0, 9, 2)
            x = x[dy:dy + 32, dx:dx + 32]
            if np.random.rand() < 0.5:
                x = x[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(x / 127.5 - 1.0).transpose(2, 0, 1))
        return x, label


def random_crop(img, min_scale=0.35):
    """A crop of min_scale..1 of the area with aspect 3/4..4/3 (the whole image after 10 misses)."""
    w, h = img.size
    for _ in range(10):
        target = w * h * np.random.uniform(min_scale, 1.0)
        ratio = math.exp(np.random.uniform(math.log(0.75), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 1 <= cw <= w and 1 <= ch <= h:
            x0, y0 = np.random.randint(0, w - cw + 1), np.random.randint(0, h - ch + 1)
            return img.crop((x0, y0, x0 + cw, y0 + ch))
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--stem", choices=["small-input", "standard"], default="small-input")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: the forward pass and loss under torch.autocast (CPU, bfloat16), "
                         "next to `mobilenet train --precision bf16`")
    ap.add_argument("--optimizer-loop", action="store_true",
                    help="update parameter by parameter (the first version of this script)")
    a = ap.parse_args()
    torch.manual_seed(1)
    np.random.seed(1)
    torch.set_num_threads(a.threads)
    stem_stride = 1 if a.stem == "small-input" else 2
    model = MobileNet(a.alpha, 10, stem_stride).to(memory_format=torch.channels_last)
    # Weight decay on full and 1x1 convs and the FC weight; not on depthwise filters (in_channels
    # per group = 1), batch norm or biases.
    decayed = [p for p in model.parameters() if p.dim() > 1 and p.shape[1] != 1]
    rest = [p for p in model.parameters() if not (p.dim() > 1 and p.shape[1] != 1)]
    opt = TfRmsProp([{"params": decayed, "wd": 4e-5}, {"params": rest, "wd": 0.0}], lr=a.lr,
                    foreach=not a.optimizer_loop)
    train = torch.utils.data.DataLoader(Folder(os.path.join(a.data, "train"), True, a.resolution),
                                        batch_size=a.batch_size,
                                        shuffle=True, num_workers=a.workers, drop_last=False)
    test = torch.utils.data.DataLoader(Folder(os.path.join(a.data, "test"), False, a.resolution),
                                       batch_size=256 if a.resolution <= 64 else 32,
                                       num_workers=a.workers)
    steps = len(train)

    def autocast():
        if a.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    for epoch in range(a.epochs):
        model.train()
        seen, correct, loss_sum, busy, opt_time = 0, 0, 0.0, 0.0, 0.0
        for b, (x, y) in enumerate(train):
            t = time.perf_counter()
            e = epoch + b / steps
            lr = a.lr * e if e < 1 else a.lr * 0.5 * (1 + math.cos(math.pi * (e - 1) / max(a.epochs - 1, 1)))
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast():
                out = model(x.contiguous(memory_format=torch.channels_last))
                loss = F.cross_entropy(out.float(), y)
            opt.zero_grad()
            loss.backward()
            t_opt = time.perf_counter()
            opt.step()
            opt_time += time.perf_counter() - t_opt
            busy += time.perf_counter() - t
            seen += len(y)
            correct += (out.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
        model.eval()
        right = total = 0
        with torch.no_grad():
            for x, y in test:
                with autocast():
                    right += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        print(json.dumps({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                          "test_accuracy": right / total, "images_per_second": seen / busy,
                          "optimizer_share": opt_time / busy,
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "precision": a.precision, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
