"""Bundle a few natural photos (public-domain images shipped with scikit-image) for the demo.

Each photo is centre-cropped to a square, resized to 288x288 and saved as JPEG (quality 90) in
undiscard/data/photos/. Run once: python scripts/bundle_photos.py (needs scikit-image and Pillow).
"""
from pathlib import Path

import numpy as np
import skimage.data as data
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "undiscard" / "data" / "photos"
PHOTOS = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee, "rocket": data.rocket,
          "motorcycle": lambda: data.stereo_motorcycle()[0]}

OUT.mkdir(parents=True, exist_ok=True)
for name, load in PHOTOS.items():
    img = np.asarray(load())
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = Image.fromarray(img[top:top + s, left:left + s]).resize((288, 288), Image.BICUBIC)
    square.save(OUT / f"{name}.jpg", quality=90)
    print(name, (OUT / f"{name}.jpg").stat().st_size, "bytes")
