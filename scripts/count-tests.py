"""Totals the test cases of meson test logs (testlog.json, one JSON object per test).

A doctest executable counts its test cases, read from its summary line; any other test
counts as one case. A test that failed without a doctest summary (a crash, a timeout)
counts as one failure. Prints 'N passed, N failed' and exits 1 when anything failed.
"""
import json
import re
import sys

SUMMARY = re.compile(r"\[doctest\] test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed")

args = sys.argv[1:]
passed = failed = 0
if args[:1] == ["--failed"]:
    failed = int(args[1])
    args = args[2:]
for path in args:
    with open(path, encoding="utf-8") as log:
        for line in log:
            test = json.loads(line)
            ok = test["result"] in ("OK", "EXPECTEDFAIL")
            found = SUMMARY.findall(test.get("stdout", ""))
            if found:
                total, p, f = map(int, found[-1])
                passed += p
                failed += f + (0 if ok or f else 1)
            elif ok:
                passed += 1
            elif test["result"] != "SKIP":
                failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or passed == 0 else 0)
