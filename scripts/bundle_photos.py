"""Bundle freely licensed natural photos: the demo's five, and a calibration and an evaluation set.

1. The demo photos (``undiscard/data/photos/*.jpg``, 288x288): scikit-image's public-domain samples
   astronaut, chelsea, coffee, rocket, motorcycle, as before.
2. ``undiscard/data/photos/calibration/`` and ``.../evaluation/`` (320x320 JPEGs, quality 90): natural photos
   found offline — scikit-image's samples, matplotlib's ``grace_hopper.jpg``, and photos in Debian packages
   whose copyright files give a free license (``mate-backgrounds``: GPL-2+; ``lomiri-wallpapers-16.04``:
   CC-BY-4.0, CC-BY-SA-4.0, CC0-1.0; ``jigzo-data``: GPL-2+/GPL-2, its photos stored in ``.pzl`` puzzle
   files, the full picture being the last JPEG inside, cropped to the file's ``image`` rectangle). Each
   photo is centre-cropped to a square and resized to 320x320 (bicubic). Abstract artwork, jigzo's
   penguin (CC-BY-NC-SA: not free) and the Middlebury stereo motorcycle (no license stated) are left out.
3. ``undiscard/data/photos/photos.tsv``: one row per photo of the two sets: name, set, source (package or
   library and file), author, license, and the ImageNet classes it clearly shows (WordNet ids, ``|``-separated;
   empty when it shows none clearly — only those are used for top-1). Photos with a label are evaluation
   photos; the others alternate by name, so the two sets are never mixed.

Run once: ``python scripts/bundle_photos.py [--debs DIR]``. Debian packages are fetched with
``apt-get download`` into ``--debs`` (default ``/tmp/undiscard_photo_debs``) unless already there; needs
scikit-image, matplotlib, Pillow and ``dpkg-deb``.
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import re
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1] / "undiscard" / "data" / "photos"
SIZE = 320
DEMO = {"astronaut": "astronaut", "chelsea": "chelsea", "coffee": "coffee", "rocket": "rocket",
        "motorcycle": "stereo_motorcycle"}

# (name, source kind, package or library, file inside it, author, license, ImageNet WordNet ids)
PHOTOS = [
    ("astronaut", "skimage", "scikit-image", "astronaut.png", "NASA", "public domain", ""),
    ("chelsea", "skimage", "scikit-image", "chelsea.png", "Stefan van der Walt", "public domain (CC0)",
     "n02123045|n02123159|n02124075"),
    ("coffee", "skimage", "scikit-image", "coffee.png", "Rachel Michetti", "public domain (CC0)",
     "n07920052|n07930864"),
    ("rocket", "skimage", "scikit-image", "rocket.jpg", "SpaceX", "public domain (CC0)", ""),
    ("grace_hopper", "matplotlib", "matplotlib", "sample_data/grace_hopper.jpg", "US Navy (James S. Davis)",
     "public domain", "n03763968"),
    *[(f"mate_{n.lower()}", "deb", "mate-backgrounds", f"usr/share/backgrounds/mate/nature/{n}.jpg", a, "GPL-2+", lab)
      for n, a, lab in [("Aqua", "Charles Barbin", ""), ("Blinds", "Lennart Poettering, Andrea Cimitan", ""),
                        ("Dune", "Marco Cogoni, Hylke Bons", ""), ("FreshFlower", "Jens Ansorg", ""),
                        ("Garden", "Charles Barbin", ""), ("GreenMeadow", "Timothy Schellhase, Lapo Calamandrei", ""),
                        ("LadyBird", "Charles Barbin", "n02165456"), ("RainDrops", "blackcombwhistler07", ""),
                        ("Storm", "Sergey Nazarov", ""), ("TwoWings", "Charles Barbin, Hylke Bons", ""),
                        ("Wood", "Jean-Francois Fortin Tam", ""), ("YellowFlower", "Charles Barbin", "")]],
    *[(f"lomiri_{n.split('_by_')[0].lower()}", "deb", "lomiri-wallpapers-16.04", f"usr/share/backgrounds/{n}.jpg", a,
       lic, lab)
      for n, a, lic, lab in [
          ("Bridge_by_Sander_Klootwijk", "Sander Klootwijk", "CC-BY-SA-4.0", ""),
          ("Dragonfly_by_Bolly", "Bolly", "CC-BY-SA-4.0", ""),
          ("Picture_0B_by_freespace", "Trevor Freespace", "CC-BY-4.0", "n07753113"),
          ("Picture_1A_by_freespace", "Trevor Freespace", "CC-BY-4.0", "n03876231"),
          ("Wine_by_Jakkub_Mede", "Jakub Mede", "CC-BY-4.0", ""),
          ("aitzgorri_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC-BY-4.0", ""),
          ("free_by_Peter_Nerlich", "Peter Nerlich", "CC-BY-SA-4.0", ""),
          ("friends_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC-BY-4.0", "n02102318"),
          ("greentock_by_Peter_Nerlich", "Peter Nerlich", "CC-BY-SA-4.0", "n04548280|n02708093"),
          ("life_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC-BY-4.0", ""),
          ("picosdeeuropa_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC-BY-4.0", ""),
          ("seeding_by_Clements_Engelhardt", "Clemens Engelhardt", "CC0-1.0", ""),
          ("sunset_by_Aitzol_Berasategi", "Aitzol Berasategi", "CC-BY-4.0", "")]],
    *[(f"jigzo_{n.split('-')[0]}", "pzl", "jigzo-data", f"usr/share/games/jigzo/puzzles/00_default/{n}.pzl", a, lic, lab)
      for n, a, lic, lab in [
          ("bike-3x4", "Maarten de Boer", "GPL-2+", ""), ("bird-2x3", "Maarten de Boer", "GPL-2+", ""),
          ("blackberry-3x3", "Maarten de Boer", "GPL-2+", ""), ("castle-6x3", "Maarten de Boer", "GPL-2+", "n02980441"),
          ("clouds-4x4", "Maarten de Boer", "GPL-2+", ""), ("gorilla2-3x3", "Maarten de Boer", "GPL-2+", "n02480855"),
          ("heli-4x3", "Joana Clotet", "GPL-2", ""), ("horse-4x3", "Maarten de Boer", "GPL-2+", ""),
          ("tobogan-4x3", "Maarten de Boer", "GPL-2+", ""), ("train-2x2", "Maarten de Boer", "GPL-2+", "n04310018"),
          ("windmill-4x4", "Maarten de Boer", "GPL-2+", "")]],
]


def square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.convert("RGB").crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def package_dir(debs: Path, package: str) -> Path:
    """The unpacked Debian ``package`` under ``debs`` (fetched with apt-get download when missing)."""
    out = debs / package
    if out.is_dir():
        return out
    debs.mkdir(parents=True, exist_ok=True)
    found = glob.glob(str(debs / f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = glob.glob(str(debs / f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", found[0], str(out)], check=True)
    return out


def jigzo_picture(path: Path) -> Image.Image:
    """The full picture of a jigzo ``.pzl`` file: its last JPEG, cropped to its ``image x y w h`` rectangle."""
    data = path.read_bytes()
    start = [m.start() for m in re.finditer(rb"\xff\xd8\xff", data)][-1]
    x, y, w, h = map(int, re.search(rb"image (\d+) (\d+) (\d+) (\d+)", data).groups())
    return Image.open(io.BytesIO(data[start:])).convert("RGB").crop((x, y, x + w, y + h))


def load(kind: str, package: str, file: str, debs: Path) -> Image.Image:
    if kind == "skimage":
        import skimage

        return Image.open(Path(skimage.__file__).parent / "data" / file)
    if kind == "matplotlib":
        import matplotlib

        return Image.open(Path(matplotlib.get_data_path()) / file)
    path = package_dir(debs, package) / file
    return jigzo_picture(path) if kind == "pzl" else Image.open(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debs", type=Path, default=Path("/tmp/undiscard_photo_debs"))
    args = ap.parse_args()
    import skimage.data as data

    for name, fn in DEMO.items():  # the demo's photos, unchanged
        img = np.asarray(getattr(data, fn)() if name != "motorcycle" else data.stereo_motorcycle()[0])
        square(Image.fromarray(img), 288).save(ROOT / f"{name}.jpg", quality=90)
    unlabelled = sorted(p[0] for p in PHOTOS if not p[6])
    calibration = set(unlabelled[::2])
    rows = []
    for name, kind, package, file, author, lic, labels in PHOTOS:
        which = "calibration" if name in calibration else "evaluation"
        out = ROOT / which / f"{name}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        square(load(kind, package, file, args.debs), SIZE).save(out, quality=90)
        rows.append({"name": name, "set": which, "source": f"{package}:{file}", "author": author, "license": lic,
                     "imagenet": labels})
        print(which, name, out.stat().st_size, "bytes")
    with open(ROOT / "photos.tsv", "w", newline="") as f:
        f.write("# Photos of undiscard/data/photos/{calibration,evaluation}: made by scripts/bundle_photos.py "
                "(320x320 centre squares). imagenet: the ImageNet-1k classes (WordNet ids) the photo clearly "
                "shows, any of them counts as correct; empty: no label.\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
