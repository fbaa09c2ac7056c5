"""Writes the fixture that checks our COCO box evaluation against pycocotools.

Synthetic detections for COCO128's annotations (seeded): jittered true boxes with scores
rounded to two decimals (so ties occur), duplicates, wrong classes, false positives, tiny and
huge boxes, and two images with more than 100 detections. pycocotools evaluates them; the
fixture holds the detections and its twelve numbers.

    python scripts/coco_eval_fixture.py ../shared/data/detection/coco128/instances_coco128.json \
        crates/mobilenet/tests/fixtures/coco128_eval.json

Needs numpy and pycocotools (pip install pycocotools).
"""

import contextlib
import io
import json
import random
import sys

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SEED = 20261201


def jitter(rng, box, amount):
    x, y, w, h = box
    x += rng.gauss(0, amount * w)
    y += rng.gauss(0, amount * h)
    w *= max(0.2, 1 + rng.gauss(0, amount))
    h *= max(0.2, 1 + rng.gauss(0, amount))
    return [round(x, 2), round(y, 2), round(max(w, 0.5), 2), round(max(h, 0.5), 2)]


def main(annotations, out):
    rng = random.Random(SEED)
    gt = json.load(open(annotations))
    cats = [c["id"] for c in gt["categories"]]
    images = {i["id"]: i for i in gt["images"]}
    results = []

    def add(image_id, cat, box, score):
        results.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})

    for a in gt["annotations"]:
        if rng.random() < 0.8:
            add(a["image_id"], a["category_id"], jitter(rng, a["bbox"], 0.08), round(rng.uniform(0.3, 1), 2))
        if rng.random() < 0.15:
            add(a["image_id"], a["category_id"], jitter(rng, a["bbox"], 0.2), round(rng.uniform(0.05, 0.8), 2))
        if rng.random() < 0.1:
            add(a["image_id"], rng.choice(cats), jitter(rng, a["bbox"], 0.1), round(rng.uniform(0.05, 0.9), 2))
    for image_id, img in sorted(images.items()):
        many = 120 if image_id in sorted(images)[3:5] else rng.randint(0, 3)
        for _ in range(many):
            w = rng.uniform(2, img["width"] / 2)
            h = rng.uniform(2, img["height"] / 2)
            box = [round(rng.uniform(0, img["width"] - w), 2), round(rng.uniform(0, img["height"] - h), 2), round(w, 2), round(h, 2)]
            add(image_id, rng.choice(cats), box, round(rng.uniform(0.01, 0.7), 2))
    coco = COCO(annotations)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(json.loads(json.dumps(results)))
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    fixture = {
        "about": "synthetic detections for COCO128 (scripts/coco_eval_fixture.py, seed %d) and pycocotools' COCOeval bbox stats" % SEED,
        "stats": [float(v) for v in ev.stats],
        "results": results,
    }
    with open(out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
    print(len(results), "detections;", "stats", [round(v, 4) for v in ev.stats])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
