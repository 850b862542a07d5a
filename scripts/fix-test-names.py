#!/usr/bin/env python3
"""Renames snake_case methods declared under tests/ to PascalCase, with every reference to them.

The rule (tests/README.md; enforced by tests/Vism.Host.Tests/TestNamingTests.cs): a method name is
PascalCase words, optionally split into Method_Condition_Result parts by underscores, each part
itself PascalCase. A name breaking the rule is converted by dropping its underscores and
capitalising each part: a lowercase part gets a capital first letter (`are` -> `Are`), an
all-caps part of two or more letters becomes one word (`ERR` -> `Err`, `EVENT_VECTOR` ->
`EventVector`, `VERSION_1` -> `Version1`), anything else keeps its letters (`GiB`, `WaitEvent`).
  Defaults_are_valid_and_claim_the_socket -> DefaultsAreValidAndClaimTheSocket

Declarations: methods and local functions in tests/**/*.cs (not bin/, obj/). P/Invoke
declarations (extern, or partial with LibraryImport/DllImport) keep their C names.
References: every whole-word occurrence of an old name in tests/, scripts/, .ci/, docs/,
benchmarks/, fuzz/, tools/ and the top-level *.md files (nameof(...), --filter strings, docs).
Refuses (exit 1, nothing written) when two names would become one or a new name is already used.

Usage: scripts/fix-test-names.py [--dry-run]   (from anywhere in the checkout; idempotent)
"""
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DECL_DIRS = ["tests"]
REF_DIRS = ["tests", "scripts", ".ci", "docs", "benchmarks", "fuzz", "tools"]
SKIP_DIRS = {"bin", "obj", ".git", "node_modules"}
TEXT_EXT = {".cs", ".md", ".sh", ".py", ".yml", ".yaml", ".json", ".props", ".targets", ".csproj", ".txt", ".toml", ""}

# A method or local function declaration: modifiers, a return type, the name, then ( or <.
DECL = re.compile(
    r"^[ \t]*((?:(?:public|private|internal|protected|static|async|override|virtual|sealed|new|unsafe|extern|partial)\s+)*)"
    r"([A-Za-z_][\w.]*(?:<[^;{}()=]*?>)?(?:\[\])*\??|\([^;{}]*?\))\s+"
    r"([A-Za-z][A-Za-z0-9_]*)\s*(?:<[^;{}()=]*?>)?\s*\(",
    re.M)
NOT_TYPES = {"return", "await", "throw", "else", "new", "yield", "in", "is", "as", "case", "goto", "out", "ref", "using", "not", "and", "or"}
GOOD_PART = re.compile(r"^[A-Z][A-Za-z0-9]*$")
ALL_CAPS = re.compile(r"^[A-Z][A-Z0-9]+$")


def is_good(name: str) -> bool:
    """The lint's rule: each underscore-separated part is a PascalCase word (all caps only for a one-part name such as U64)."""
    parts = name.split("_")
    return all(GOOD_PART.match(p) and (len(parts) == 1 or not ALL_CAPS.match(p)) for p in parts)


def pascal(name: str) -> str:
    out = []
    for part in name.split("_"):
        if not part:
            continue
        if ALL_CAPS.match(part):
            part = part[0] + part[1:].lower()
        out.append(part[0].upper() + part[1:])
    return "".join(out)


def walk(dirs):
    for d in dirs:
        top = os.path.join(ROOT, d)
        if not os.path.isdir(top):
            continue
        for base, subdirs, files in os.walk(top):
            subdirs[:] = [s for s in subdirs if s not in SKIP_DIRS]
            for f in files:
                yield os.path.join(base, f)


def main() -> int:
    dry = "--dry-run" in sys.argv[1:]
    renames = {}
    declared = set()
    for path in walk(DECL_DIRS):
        if not path.endswith(".cs"):
            continue
        text = open(path, encoding="utf-8").read()
        for m in DECL.finditer(text):
            modifiers, kind, name = m.group(1), m.group(2), m.group(3)
            if kind in NOT_TYPES:
                continue  # a statement (return X(...), await X(...)), not a declaration
            declared.add(name)
            if "extern" in modifiers.split() or "partial" in modifiers.split():
                continue  # P/Invoke: the C name
            if name in {"if", "while", "for", "foreach", "switch", "using", "lock", "return", "catch", "nameof", "new", "typeof", "sizeof", "default"}:
                continue
            if not is_good(name):
                renames[name] = pascal(name)
    if not renames:
        print("fix-test-names: every method name under tests/ is PascalCase")
        return 0

    # Collisions: two old names to one new name, or a new name that something already uses.
    problems = []
    by_new = {}
    for old, new in renames.items():
        by_new.setdefault(new, []).append(old)
    for new, olds in by_new.items():
        if len(olds) > 1:
            problems.append(f"{', '.join(sorted(olds))} would all become {new}")
        elif new in declared:
            problems.append(f"{olds[0]} would become {new}, which is already declared")
    if problems:
        for p in problems:
            print("fix-test-names: " + p, file=sys.stderr)
        return 1

    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, renames), key=len, reverse=True)) + r")\b")
    files = list(walk(REF_DIRS)) + [os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".md")]
    changed = 0
    for path in files:
        if os.path.splitext(path)[1] not in TEXT_EXT:
            continue
        try:
            text = open(path, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        new_text, n = pattern.subn(lambda m: renames[m.group(1)], text)
        if n:
            changed += 1
            if not dry:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new_text)
            print(f"{os.path.relpath(path, ROOT)}: {n} reference(s)")
    for elsewhere in ("src", "plugins"):
        for path in walk([elsewhere]):
            if path.endswith((".cs", ".md")):
                text = open(path, encoding="utf-8", errors="replace").read()
                for m in pattern.finditer(text):
                    print(f"fix-test-names: warning: {os.path.relpath(path, ROOT)} mentions {m.group(1)} (left alone)", file=sys.stderr)
    print(f"fix-test-names: {len(renames)} method name(s) renamed in {changed} file(s){' (dry run)' if dry else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
