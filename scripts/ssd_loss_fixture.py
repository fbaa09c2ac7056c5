"""Writes the fixture that checks our SSD loss against torchvision's (seeded).

Anchors, two images' objects, box offsets and class logits are drawn at random; torchvision's
SSDMatcher matches, SSD.compute_loss gives the loss (smooth L1 + cross-entropy with 3:1 hard
negative mining) and autograd its gradient. Coordinates are stored in our order
(y, x first; offsets ty, tx, th, tw) and permuted for torchvision (x first).

    python scripts/ssd_loss_fixture.py crates/mobilenet/tests/fixtures/ssd_loss.json

Needs torch and torchvision.
"""

import json
import sys
import types

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

SEED = 1712


def main(out):
    g = torch.Generator().manual_seed(SEED)
    n, classes = 60, 4
    yx = torch.rand(n, 2, generator=g) * 0.7
    hw = 0.1 + torch.rand(n, 2, generator=g) * 0.3
    anchors = torch.cat([yx, yx + hw], 1)  # ymin, xmin, ymax, xmax
    images = []
    for count in (3, 1):
        b_yx = torch.rand(count, 2, generator=g) * 0.6
        b_hw = 0.15 + torch.rand(count, 2, generator=g) * 0.3
        boxes = torch.cat([b_yx, b_yx + b_hw], 1)
        labels = torch.randint(1, classes, (count,), generator=g)
        images.append((boxes, labels))
    codes = (torch.randn(2, n, 4, generator=g) * 1.5).requires_grad_(True)
    logits = torch.randn(2, n, classes, generator=g).requires_grad_(True)

    xyxy = lambda b: b[:, [1, 0, 3, 2]]
    fake = types.SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=3)
    matcher = det_utils.SSDMatcher(0.5)
    targets, matched = [], []
    for boxes, labels in images:
        t = {"boxes": xyxy(boxes), "labels": labels}
        targets.append(t)
        matched.append(matcher(box_iou(t["boxes"], xyxy(anchors))))
    head = {"bbox_regression": codes[:, :, [1, 0, 3, 2]], "cls_logits": logits}
    losses = SSD.compute_loss(fake, targets, head, [xyxy(anchors)] * 2, matched)
    total = losses["bbox_regression"] + losses["classification"]
    total.backward()
    fixture = {
        "about": "torchvision %s SSD.compute_loss on random data (scripts/ssd_loss_fixture.py, seed %d)" % (__import__("torchvision").__version__, SEED),
        "classes": classes,
        "anchors": anchors.tolist(),
        "targets": [{"boxes": b.tolist(), "classes": l.tolist()} for b, l in images],
        "matches": [m.tolist() for m in matched],
        "codes": codes.detach().tolist(),
        "logits": logits.detach().tolist(),
        "loss_boxes": losses["bbox_regression"].item(),
        "loss_classes": losses["classification"].item(),
        "grad_codes": codes.grad.tolist(),
        "grad_logits": logits.grad.tolist(),
    }
    with open(out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
    print("loss", losses["bbox_regression"].item(), losses["classification"].item(), "positives", [int((m >= 0).sum()) for m in matched])


if __name__ == "__main__":
    main(sys.argv[1])
