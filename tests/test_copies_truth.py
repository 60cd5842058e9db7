"""The copies benchmark's truth (benchmarks/copies.true_groups): what a person calls one picture in the mixed folder.
Real Tango icons (tango-icon-theme, which `make test` installs), a real ingest's manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

import copies
from vaepipe.ingest import ingest
from vaepipe.store import Workdir

TANGO = Path("/usr/share/icons/Tango")


def _workdir(tmp_path: Path, files: dict[str, Image.Image | Path]) -> Workdir:
    root = tmp_path / "collection"
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copyfile(source, root / name)
        else:
            source.save(root / name)
    workdir = Workdir(tmp_path / "work")
    workdir.root.mkdir()
    ingest(root, workdir.manifest)
    workdir.write_collection(root, "none")
    return workdir


def test_files_that_show_the_same_pixels_are_one_picture(tmp_path):
    home = TANGO / "22x22/places/user-home.png"
    pixels = Image.open(home).convert("RGBA")
    # The same picture under another name, saved again (other bytes): colour under full transparency, which nothing
    # shows, changed too.
    resaved = pixels.copy()
    hidden = [(x, y) for x in range(22) for y in range(22) if resaved.getpixel((x, y))[3] == 0]
    assert hidden
    for xy in hidden:
        resaved.putpixel(xy, (200, 10, 10, 0))
    workdir = _workdir(tmp_path, {
        "icons/Tango-places-user-home/22x22.png": home,
        "icons/Tango-places-user-home/32x32.png": TANGO / "32x32/places/user-home.png",
        "icons/Tango-places-gnome-fs-home/22x22.png": resaved,
        "icons/Tango-places-folder/22x22.png": TANGO / "22x22/places/folder.png",
        "copies/000-mirror.png": Image.open(TANGO / "22x22/places/folder.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "icons/Tango-places-user-desktop/22x22.png": TANGO / "22x22/places/user-desktop.png",
    })
    t = {"copies": {"copies/000-mirror.png": "icons/Tango-places-folder/22x22.png"}}
    groups = sorted(sorted(g) for g in copies.true_groups(workdir, t).values())
    assert groups == [
        ["copies/000-mirror.png", "icons/Tango-places-folder/22x22.png"],  # a copy with its original
        ["icons/Tango-places-gnome-fs-home/22x22.png", "icons/Tango-places-user-home/22x22.png",  # the same pixels
         "icons/Tango-places-user-home/32x32.png"],  # and the icon's other size
    ]


def test_a_file_that_does_not_open_is_only_left_alone(tmp_path):
    workdir = _workdir(tmp_path, {"icons/Tango-places-folder/22x22.png": TANGO / "22x22/places/folder.png",
                                  "icons/Tango-places-folder/32x32.png": TANGO / "32x32/places/folder.png"})
    root = Path(workdir.read_collection()["image_root"])
    (root / "icons/Tango-places-folder/32x32.png").write_bytes(b"not a picture any more")
    groups = copies.true_groups(workdir, {"copies": {}})
    assert [sorted(g) for g in groups.values()] == [["icons/Tango-places-folder/22x22.png",
                                                       "icons/Tango-places-folder/32x32.png"]]
