"""``undiscard predict DIR``: a directory is one clear line (predict reads image files; ``eval --data``
reads folders), on the classification and the segmentation branch, before any model is loaded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from undiscard.cli import main


def cli(argv: list[str]) -> int:
    """``undiscard ARGV`` in-process: its exit status, also when argparse exits by itself."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


# a model that is never loaded: the paths are checked first
@pytest.mark.parametrize("extra", [["--model", "timm:no_such_model"], ["--model", "zoo:seg_no_such_model"],
                                   ["--model", "timm:no_such_model", "--mask-out", "masks"]],
                         ids=["classification", "segmentation-zoo", "mask-out"])
def test_a_directory_says_so_and_points_to_eval(capsys, tmp_path, photo, extra):
    folder = tmp_path / "images"
    folder.mkdir()
    err = one_line_error(capsys, cli(["predict", *extra, str(photo), str(folder)]))
    assert f"{folder} is a directory, not an image file" in err
    assert f"undiscard eval --model {extra[1]} --data {folder}" in err
    assert "not found" not in err


def test_a_missing_file_is_not_found(capsys, tmp_path, photo):
    err = one_line_error(capsys, cli(["predict", "--model", "zoo:seg_no_such_model", str(photo),
                                      str(tmp_path / "gone.png")]))
    assert f"image not found: {tmp_path / 'gone.png'}" in err
