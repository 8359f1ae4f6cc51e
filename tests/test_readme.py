"""README's "Your own images" block, run as written (issue 35).

Each line of the section's fenced block runs unmodified, in bash (its globs expanded as a
user's shell expands them), as the `kdsearch` command of this checkout, in a folder holding
``data/dogs``: three Imagenette classes of real photos laid out as the README describes them,
downscaled to 40 px so that ``init`` proposes 32 px images and a trial takes seconds, and
``my_dog.jpg``, one more photo of the dog class. The only settings are the environment's:
``KDSEARCH_HOME``, and ``KDSEARCH_THREADS=1`` because the suite runs two tests at once on two
cores. A line that fails, or leaves out what it should write or print, fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from image_folders import own_images
from PIL import Image

from kdsearch import api

ROOT = Path(__file__).resolve().parents[1]
DOG = "n02102040"  # Imagenette's English springer, the second of its first three classes
CLASSES = ("n01440764", DOG, "n02979186")


def readme_block() -> list[str]:
    """The command lines of the first fenced block under "## Your own images"."""
    section = (ROOT / "README.md").read_text().split("\n## Your own images\n", 1)[1]
    found = re.search(r"^```[^\n]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert found, "README's Your own images section has no fenced block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def photos(home: Path) -> None:
    """``home/data/dogs`` (train/ 13, 12, 13 and val/ 4 photos per class) and ``my_dog.jpg``,
    every photo a real one saved as a 40 px JPEG, as a user's camera folder would be .jpg."""
    folder = own_images(home / "data" / "dogs", classes=3, train=13, val=4, source="imagenette")
    for path in sorted(folder.rglob("*.JPEG")):
        with Image.open(path) as img:
            img.convert("RGB").resize((40, 40), Image.Resampling.BICUBIC).save(
                path.with_suffix(".jpg"), quality=90
            )
        path.unlink()
    mine = sorted((folder / "train" / DOG).iterdir())[-1]
    mine.rename(home / "my_dog.jpg")


def _left_behind(command: str, home: Path, out: str) -> None:
    """What each command of the block must write or print (``out``: its stdout and stderr)."""
    url = f"sqlite:///{home / 'kd.db'}"
    if command == "init":
        assert (home / "studies" / "dogs.yaml").is_file(), out
    elif command == "validate":
        assert "studies/dogs.yaml: ok" in out, out
    elif command == "train-teacher":
        assert (home / "models" / "dogs-teacher.pt").is_file(), out
    elif command == "create-study":
        assert api.study_status(url, "dogs")[0]["states"]["complete"] == 0, out
    elif command == "worker":
        (status,) = api.study_status(url, "dogs")
        assert status["finished"] == status["n_trials"] and status["best"], out
    elif command == "export-model":
        assert (home / "dogs.onnx").is_file() and "wrote dogs.onnx" in out, out
    elif command == "predict":
        (line,) = out.splitlines()
        name, _, top = line.partition(": ")
        assert name == "my_dog.jpg", line
        assert sorted(entry.split()[0] for entry in top.split(", ")) == sorted(CLASSES), line
    else:
        pytest.fail(f"no check for `kdsearch {command}` in the README block: add one")


@pytest.mark.slow
def test_the_own_images_block_runs_as_written(tmp_path: Path) -> None:
    lines = readme_block()
    commands = [line.split()[1] for line in lines]
    assert all(line.startswith("kdsearch ") for line in lines), lines
    photos(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSEARCH_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "KDSEARCH_HOME": str(tmp_path),
        "KDSEARCH_THREADS": "1",
    }
    for line, command in zip(lines, commands, strict=True):
        proc = subprocess.run(
            ["bash", "-c", line],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
        _left_behind(command, tmp_path, proc.stdout + proc.stderr)
