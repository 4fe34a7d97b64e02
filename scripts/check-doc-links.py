#!/usr/bin/env python3
"""Every relative link in the Markdown docs points at a file that exists, and every #anchor at
a heading of that file (GitHub's slugs). The README links into docs/, so a moved section or a
renamed heading would otherwise leave dead links behind."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slugs(path):
    out, seen = set(), {}
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def main():
    files = [ROOT / "README.md", ROOT / "bench/README.md", ROOT / "deploy/README.md",
             ROOT / "helm/README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = []
    for md in files:
        if not md.exists():
            continue
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            where = f"{md.relative_to(ROOT)}: {target}"
            if not dest.exists():
                bad.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
                bad.append(f"{where}: no heading with that anchor in {dest.relative_to(ROOT)}")
    for line in bad:
        print(line, file=sys.stderr)
    print(f"check-doc-links: {len(files)} files, {len(bad)} broken links")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
