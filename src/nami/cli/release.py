"""`nami release download` / `nami release check`: the released NAMI-2B and the encoders it runs with, fetched
from the Hugging Face Hub into the folder `experiments/nami_2b_official.yaml` reads ($NAMI_WEIGHTS, default
./weights), and that folder checked piece by piece.

The layout is the one the release's own inference code (360CVGroup/NAMI-T2I, src/infer.py) loads:

    weights/
      transformer/pytorch_model_fsdp.bin   the NAMI-2B MM-DiT        <- qihoo360/NAMI-T2I transformer/
      bridge_flow.bin                      its scalar_bias bridge    <- qihoo360/NAMI-T2I
      vae/                                 AutoencoderKL             <- qihoo360/NAMI-T2I vae/
      mclip/clip_text_encoder/             multilingual CLIP (BERT)  <- Tencent-Hunyuan/HunyuanDiT
                                                                        t2i/clip_text_encoder/
      mclip/tokenizer/                     its tokenizer             <- Tencent-Hunyuan/HunyuanDiT t2i/tokenizer/
      mt5/                                 mT5-XXL                   <- google/mt5-xxl

Named `release` (not `download`) because it handles one thing, the release, the way `nami convert official`
converts it, and holds both verbs: fetching it and checking a folder someone else filled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..errors import ConfigError

NAMI_REPO, HUNYUAN_REPO, MT5_REPO = "qihoo360/NAMI-T2I", "Tencent-Hunyuan/HunyuanDiT", "google/mt5-xxl"
WEIGHTS_ENV, DEFAULT_WEIGHTS = "NAMI_WEIGHTS", "weights"  # what nami_2b_official.yaml reads (a test ties them)
STAGING = ".nami-download"  # inside the weights folder: same disk, so a finished file is moved, not copied
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a transformers model folder holds one of them


@dataclass(frozen=True)
class Piece:
    """One part of the release: where it lies under the weights folder and where it is published."""

    name: str
    folder: str  # under the weights folder ("" = the folder itself)
    repo: str
    repo_folder: str  # in the repository ("" = its root)
    required: tuple[tuple[str, ...], ...]  # each: one of these files (the first the repository has is fetched)
    optional: tuple[str, ...] = ()  # fetched when the repository has them
    reader: str = ""  # the config key (or command option) that reads it
    signature: str | None = None  # a path suffix only this piece has: found elsewhere, the piece is misplaced


@cache
def pieces() -> tuple[Piece, ...]:
    """The release, piece by piece (the transformer and bridge file names are `nami convert official`'s)."""
    from ..artifacts.convert import OFFICIAL_BRIDGE, OFFICIAL_TRANSFORMER, OFFICIAL_TRANSFORMER_FILES

    transformer = OFFICIAL_TRANSFORMER
    return (
        Piece("transformer", str(transformer.parent), NAMI_REPO, "transformer", (OFFICIAL_TRANSFORMER_FILES,),
              ("config.json",), "nami convert official --transformer", transformer.name),
        Piece("bridge", "", NAMI_REPO, "", ((OFFICIAL_BRIDGE,),), (), "nami convert official --bridge",
              OFFICIAL_BRIDGE),
        Piece("VAE", "vae", NAMI_REPO, "vae",
              (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")), (),
              "autoencoder.path", "vae/config.json"),
        Piece("mCLIP text tower", "mclip/clip_text_encoder", HUNYUAN_REPO, "t2i/clip_text_encoder",
              (("config.json",), WEIGHT_FILES), (), "text_encoder.pooled_path", "clip_text_encoder/config.json"),
        Piece("mCLIP tokenizer", "mclip/tokenizer", HUNYUAN_REPO, "t2i/tokenizer",
              (("vocab.txt", "tokenizer.json"), ("tokenizer_config.json",)), ("special_tokens_map.json",),
              "text_encoder.pooled_path's sibling tokenizer/", "tokenizer/tokenizer_config.json"),
        Piece("mT5-XXL", "mt5", MT5_REPO, "", (("config.json",), WEIGHT_FILES, ("spiece.model", "tokenizer.json")),
              ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"), "text_encoder.path"),
    )  # fmt: skip


def default_weights() -> str:
    return os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS


def _present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _still_needed(root: Path, piece: Piece) -> tuple[list[tuple[str, ...]], list[str]]:
    """The required groups none of whose files is there yet, and the optional files not there yet (a piece
    that lacks only its tokenizer does not fetch its 50 GB of weights again)."""
    where = root / piece.folder
    groups = [group for group in piece.required if not any(_present(where / name) for name in group)]
    return groups, [name for name in piece.optional if not _present(where / name)]


# ---- check -------------------------------------------------------------------------------------------------
@dataclass
class PieceStatus:
    piece: Piece
    where: Path  # the piece's folder under the weights folder
    missing: list[str] = field(default_factory=list)  # "DIR/vae/config.json", "DIR/mt5/model.safetensors (or ...)"
    found_elsewhere: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.missing

    def what_is_wrong(self) -> str:
        found = f" (found {self.found_elsewhere}: misplaced)" if self.found_elsewhere else ""
        return f"no {self.missing[0]}{found}"

    def problem(self) -> str:
        """One line naming the piece and the path where it was looked for."""
        return f"{self.piece.name}: {self.what_is_wrong()}"

    def line(self) -> str:
        """`ok` and the piece's first file, or `missing` and what is wrong; then what reads the piece."""
        if self.ok:
            first = next(self.where / name for name in self.piece.required[0] if _present(self.where / name))
            return f"ok       {self.piece.name:<17} {first}  ({self.piece.reader})"
        return f"missing  {self.piece.name:<17} {self.what_is_wrong()}  ({self.piece.reader})"


def _find(root: Path, suffix: str, skip: set[Path], depth: int = 4) -> Path | None:
    """A file under `root` (at most `depth` folders down, outside `skip` and the download staging) whose path
    ends with `suffix`."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if d != STAGING and len((here / d).relative_to(root).parts) <= depth]
        for name in files:
            path = here / name
            if path.as_posix().endswith("/" + suffix) and path not in skip and _present(path):
                return path
    return None


def check_piece(root: Path, piece: Piece) -> PieceStatus:
    status = PieceStatus(piece, root / piece.folder)
    for group in _still_needed(root, piece)[0]:
        others = f" (or {', '.join(group[1:])})" if len(group) > 1 else ""
        status.missing.append(f"{status.where / group[0]}{others}")
    if status.missing and piece.signature and root.is_dir():
        expected = {status.where / Path(piece.signature).name}
        status.found_elsewhere = _find(root, piece.signature, expected)
    return status


def check_layout(root: str | Path) -> list[PieceStatus]:
    """Every piece of the release under `root`: the files each needs, present and non-empty."""
    return [check_piece(Path(root), piece) for piece in pieces()]


def cmd_check(args: argparse.Namespace) -> int:
    """Check a weights folder against the layout experiments/nami_2b_official.yaml reads."""
    root = Path(args.dir or default_weights())
    statuses = check_layout(root)
    missing = [s for s in statuses if not s.ok]
    if args.json:
        print(json.dumps({"dir": str(root), "complete": not missing, "pieces": [
            {"name": s.piece.name, "path": str(s.where), "ok": s.ok, "missing": s.missing, "reader": s.piece.reader,
             "found_elsewhere": str(s.found_elsewhere) if s.found_elsewhere else None} for s in statuses]}))
    else:
        print("\n".join(s.line() for s in statuses))
    if missing:
        raise ConfigError(str(root), f"{len(missing)} of {len(pieces())} pieces missing or misplaced, first "
                                     f"{missing[0].problem()}; `nami release download --out {root}` fetches "
                                     f"what is missing")  # fmt: skip
    return 0


# ---- download ----------------------------------------------------------------------------------------------
def _innermost(err: BaseException) -> str:
    """The first line of the deepest cause (huggingface_hub wraps 'offline mode is enabled' in a DryRunError)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _repo_path(piece: Piece, name: str) -> str:
    return f"{piece.repo_folder}/{name}" if piece.repo_folder else name


def _local_path(root: Path, piece: Piece, repo_file: str) -> Path:
    """Where a file of the repository goes under the weights folder."""
    inside = Path(repo_file).relative_to(piece.repo_folder) if piece.repo_folder else Path(repo_file)
    return root / piece.folder / inside


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HTTPError  # the HTTP client's errors that are not OSErrors (proxy, TLS)

    return (OSError, HTTPError)


def plan_repo(repo: str, todo: list[Piece], root: Path, staging: Path) -> tuple[dict[Piece, list[str]], int]:
    """Ask the hub what `repo` holds of what the pieces still need (snapshot_download's dry run): the repository
    paths to fetch per piece (of each missing required group, the first file the repository has; the optional
    files it has) and the bytes still to download. Unreachable, or a required file absent, is one line."""
    from huggingface_hub import snapshot_download

    needs = {piece: _still_needed(root, piece) for piece in todo}
    wanted = sorted({_repo_path(piece, name) for piece, (groups, optional) in needs.items()
                     for name in (*(n for group in groups for n in group), *optional)})  # fmt: skip
    try:
        listing = snapshot_download(repo, allow_patterns=wanted, local_dir=staging, dry_run=True)
    except _hub_errors() as err:
        names = ", ".join(p.name for p in todo)
        raise ConfigError(f"https://huggingface.co/{repo}", f"cannot reach it to fetch {names} "
                                                            f"({_innermost(err)})") from None  # fmt: skip
    listed = {info.filename for info in listing}
    chosen: dict[Piece, list[str]] = {}
    for piece, (groups, optional) in needs.items():
        files = []
        for group in groups:
            found = next((_repo_path(piece, n) for n in group if _repo_path(piece, n) in listed), None)
            if found is None:
                names = " or ".join(_repo_path(piece, n) for n in group)
                raise ConfigError(piece.name, f"{repo} has no {names}; nothing was downloaded")
            files.append(found)
        chosen[piece] = files + [_repo_path(piece, n) for n in optional if _repo_path(piece, n) in listed]
    fetched = {f for files in chosen.values() for f in files}
    size = sum(info.file_size or 0 for info in listing if info.will_download and info.filename in fetched)
    return chosen, size


def fetch_repo(repo: str, chosen: dict[Piece, list[str]], root: Path, staging: Path) -> list[str]:
    """Download the chosen files of `repo` into `staging` (resumable: the same command continues an interrupted
    download), move each into its piece's folder under `root`, and remove the staging folder. Returns one
    report line per piece."""
    from huggingface_hub import snapshot_download

    files = sorted({f for paths in chosen.values() for f in paths})
    try:
        snapshot_download(repo, allow_patterns=files, local_dir=staging)
    except _hub_errors() as err:
        raise ConfigError(f"https://huggingface.co/{repo}", f"the download stopped ({_innermost(err)}); the same "
                                                            f"command continues it")  # fmt: skip
    lines = []
    for piece, paths in chosen.items():
        target = root / piece.folder
        moved = 0
        for repo_file in paths:
            source = staging / repo_file
            if not source.is_file():
                raise ConfigError(piece.name, f"{repo} gave no {repo_file} (looked for {source})")
            destination = _local_path(root, piece, repo_file)
            destination.parent.mkdir(parents=True, exist_ok=True)
            moved += source.stat().st_size
            os.replace(source, destination)
        lines.append(f"fetched  {piece.name:<17} {target}{os.sep}  <- {repo}: {', '.join(paths)} "
                     f"({_size(moved)})")  # fmt: skip
    shutil.rmtree(staging)
    return lines


def download(root: str | Path, report=print) -> None:
    """Fetch every piece of the release that is not complete under `root` (complete ones are not asked for,
    so a complete folder needs no network), reporting each line as it goes. Every repository is asked first
    (reachable? holds the files? room on the disk?), then fetched one after another."""
    root = Path(root)
    statuses = check_layout(root)
    for status in statuses:
        if status.ok:
            report(f"complete {status.piece.name:<17} {status.where}{os.sep}")
    todo = [s.piece for s in statuses if not s.ok]
    staging = root / STAGING
    plans = {}
    for repo in dict.fromkeys(p.repo for p in todo):
        folder = staging / repo.replace("/", "--")
        plans[repo] = (plan_repo(repo, [p for p in todo if p.repo == repo], root, folder), folder)
    needed = sum(size for (_, size), _ in plans.values())
    existing = next(p for p in (root, *root.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise ConfigError(str(root), f"{_size(needed)} to download, {_size(free)} free; nothing was downloaded")
    if plans:
        report(f"downloading {_size(needed)} from {', '.join(plans)} (an interrupted download continues where "
               f"it stopped when the command is run again)")  # fmt: skip
    for repo, ((chosen, _), folder) in plans.items():
        for line in fetch_repo(repo, chosen, root, folder):
            report(line)
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    missing = [s for s in check_layout(root) if not s.ok]
    if missing:  # the hub listed a file that did not arrive
        raise ConfigError(str(root), f"still incomplete after the download: {missing[0].problem()}")


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch the released NAMI-2B, its VAE and text encoders into the layout nami_2b_official.yaml reads."""
    root = Path(args.out or default_weights())
    download(root, lambda line: print(line, flush=True))
    transformer, bridge = pieces()[:2]
    bridge_file = root / bridge.folder / bridge.required[0][0]
    print(f"{root}: all {len(pieces())} pieces of the release in place; next: nami convert official "
          f"--transformer {root / transformer.folder} --bridge {bridge_file} --out DIR")  # fmt: skip
    return 0


def add_commands(sub) -> None:
    release = sub.add_parser("release", help="the released NAMI-2B: fetch it from the Hugging Face Hub, check a "
                                             "weights folder")  # fmt: skip
    verbs = release.add_subparsers(dest="verb", required=True, metavar="VERB")
    fetch = verbs.add_parser("download", help=cmd_download.__doc__.splitlines()[0])
    fetch.add_argument("--out", help=f"the weights folder (default ${WEIGHTS_ENV}, else ./{DEFAULT_WEIGHTS})")
    fetch.set_defaults(func=cmd_download)
    check = verbs.add_parser("check", help=cmd_check.__doc__.splitlines()[0])
    check.add_argument("dir", nargs="?", metavar="DIR",
                       help=f"the weights folder (default ${WEIGHTS_ENV}, else ./{DEFAULT_WEIGHTS})")  # fmt: skip
    check.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    check.set_defaults(func=cmd_check)
