#!/usr/bin/env python3
"""Print each test that did not pass in the given .trx files: outcome, project, name, and the
first lines of its error message and stack trace. Used by scripts/test.sh above its summary."""
import sys
import xml.etree.ElementTree as ET

NS = {"t": "http://microsoft.com/schemas/VisualStudio/TeamTest/2010"}
MESSAGE_LINES = 6
STACK_LINES = 4


def first_lines(text, n):
    lines = (text or "").strip().splitlines()
    more = f"  ... ({len(lines) - n} more lines)" if len(lines) > n else None
    return lines[:n] + ([more] if more else [])


def main(paths):
    count = 0
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as e:
            print(f"{path}: unreadable ({e})")
            continue
        project = path.rsplit("/", 1)[-1].removesuffix(".trx")
        for result in root.iterfind(".//t:UnitTestResult", NS):
            outcome = result.get("outcome", "")
            if outcome in ("Passed", "NotExecuted"):
                continue
            count += 1
            print(f"[{outcome}] {project}: {result.get('testName')} ({result.get('duration')})")
            info = result.find("t:Output/t:ErrorInfo", NS)
            if info is not None:
                for line in first_lines(info.findtext("t:Message", "", NS), MESSAGE_LINES):
                    print(f"    {line}")
                for line in first_lines(info.findtext("t:StackTrace", "", NS), STACK_LINES):
                    print(f"    {line}")
    if count == 0:
        print("(no failed test result in the trx files: a test project crashed or hung; see above)")


if __name__ == "__main__":
    main(sys.argv[1:])
