#!/usr/bin/env python3
"""Writes a deterministic tarball of a source-tree-like file tree for scripts/bench.

usage: make-tree.py OUT.tar NFILES TOTAL_BYTES

Same arguments, same bytes: the random generator has a fixed seed and every
header field (mtime, owner, mode) is fixed. The tree has three directory levels
(8 x 8 x 8), NFILES regular files with heavy-tailed sizes (many of a few KiB,
a few of around a MiB) that add up to about TOTAL_BYTES of incompressible data,
and one relative symlink per 100 files.
"""
import io
import random
import sys
import tarfile

MTIME = 1_700_000_000
SEED = 0xC41_0F5


def main() -> None:
    out, nfiles, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(SEED)

    dirs = ["tree"]
    for a in range(8):
        dirs.append(f"tree/d{a}")
        for b in range(8):
            dirs.append(f"tree/d{a}/s{b}")
            for c in range(8):
                dirs.append(f"tree/d{a}/s{b}/l{c}")

    # Log-normal sizes (median ~3 KiB before scaling), scaled to the total.
    weights = [rng.lognormvariate(8.0, 1.6) for _ in range(nfiles)]
    scale = total / sum(weights)
    sizes = [int(w * scale) for w in weights]

    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = MTIME
            tar.addfile(info)
        for i, size in enumerate(sizes):
            # Three in four files go to the leaves, the rest to upper levels.
            d = dirs[rng.randrange(73, len(dirs))] if rng.random() < 0.75 else dirs[rng.randrange(0, 73)]
            name = f"f{i:05d}.dat"
            info = tarfile.TarInfo(f"{d}/{name}")
            info.size = size
            info.mode = 0o644
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(rng.randbytes(size)))
            if i % 100 == 0:
                link = tarfile.TarInfo(f"{d}/link{i:05d}")
                link.type = tarfile.SYMTYPE
                link.linkname = name
                link.mode = 0o777
                link.mtime = MTIME
                tar.addfile(link)


if __name__ == "__main__":
    main()
