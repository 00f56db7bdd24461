"""Cost of each GROK, DISSECT, RLIKE and LIKE pattern of Elastic's AWS ES|QL rules, hostile values.

Run: .venv/bin/python -m bench.patterns_bench [--shared DIR] [--size BYTES] [--timeout S]

The patterns are read at run time from the ES|QL rule files in ../shared/elastic-rules/aws
(or DIR/elastic-rules/aws); without them the script says so and exits 0. For each pattern it
builds values of --size characters (1 MB by default) meant to defeat it: long runs of the
pattern's own literal text that almost match, runs of the characters its classes accept, and
a plain run of one letter. It reports, per pattern, the worst microseconds per call over those
values for our matcher (RE2, or DISSECT's linear scan), the nanoseconds per character that
makes, and the same for Python's backtracking `re` on the equivalent expression, each Python
call run in a child process that is stopped after --timeout seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import SHARED
from consumer.rules import patterns
from consumer.rules.grok_library import ECS_V1


@dataclass(frozen=True)
class Found:
    kind: str  # GROK, DISSECT, RLIKE, LIKE
    pattern: str
    rule: str
    separator: str = ""


# ------------------------------------------------------------------ extracting the patterns

_TOKEN = re.compile(
    r'(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<raw>""".*?""")|(?P<str>"(?:\\.|[^"\\])*")'
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>\S)|\s+",
    re.DOTALL,
)
_UNESCAPE = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _string(token: str) -> str:
    if token.startswith('"""'):
        return token[3:-3]
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), "\\" + m.group(1)), body)


def _tokens(query: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(query):
        kind = m.lastgroup
        if kind in (None, "comment"):
            continue
        if kind in ("raw", "str"):
            out.append(("str", _string(m.group())))
        else:
            out.append((kind, m.group()))
    return out


def extract(query: str, rule: str) -> list[Found]:
    """The pattern literals of GROK, DISSECT, [NOT] LIKE and [NOT] RLIKE in one query."""
    toks = _tokens(query)
    found: list[Found] = []
    for i, (kind, text) in enumerate(toks):
        word = text.upper() if kind == "word" else ""
        if word in ("GROK", "DISSECT"):
            j = i + 1
            while j < len(toks) and toks[j][0] != "str" and toks[j][1] != "|":
                j += 1
            if j < len(toks) and toks[j][0] == "str":
                sep = ""
                if (
                    j + 3 < len(toks)
                    and toks[j + 1][1].upper() == "APPEND_SEPARATOR"
                    and toks[j + 3][0] == "str"
                ):
                    sep = toks[j + 3][1]
                found.append(Found(word, toks[j][1], rule, sep))
        elif word in ("LIKE", "RLIKE") and i + 1 < len(toks):
            if toks[i + 1][0] == "str":
                found.append(Found(word, toks[i + 1][1], rule))
            elif toks[i + 1][1] == "(":
                j = i + 2
                while j < len(toks) and toks[j][1] != ")":
                    if toks[j][0] == "str":
                        found.append(Found(word, toks[j][1], rule))
                    j += 1
    return found


def rule_patterns(rules_dir: Path) -> list[Found]:
    out: list[Found] = []
    for path in sorted(rules_dir.glob("*.toml")):
        rule = tomllib.loads(path.read_text(encoding="utf-8")).get("rule", {})
        if rule.get("language") == "esql" and isinstance(rule.get("query"), str):
            out.extend(extract(rule["query"], path.name))
    unique: dict[tuple[str, str, str], Found] = {}
    for f in out:
        unique.setdefault((f.kind, f.pattern, f.separator), f)
    return list(unique.values())


# ------------------------------------------------------------------ hostile values


def _literals(pattern: str) -> list[str]:
    """Runs of plain characters in a pattern, longest first: the text an attacker repeats."""
    runs = re.findall(r"(?:\\.|[A-Za-z0-9=:/_\-{}, \"'.@])+", pattern)
    cleaned = {re.sub(r"\\(.)", r"\1", r).strip(".") for r in runs}
    return sorted((r for r in cleaned if len(r) >= 2), key=len, reverse=True)[:4]


def hostile_values(pattern: str, size: int) -> dict[str, str]:
    def fill(unit: str) -> str:
        return (unit * (size // max(len(unit), 1) + 1))[:size]

    values = {"one letter": fill("a"), "digits": fill("1"), "commas": fill(",")}
    lits = _literals(pattern)
    if lits:
        joined = "".join(lits)
        values["all literals, cut short"] = fill(joined[:-1])
        for lit in lits[:3]:
            values[f"repeated {lit[:20]!r}"] = fill(lit)
            values[f"{lit[:20]!r} + class run"] = (lit + fill("A1b-"))[:size]
    return values


# ------------------------------------------------------------------ matchers under test


def ours(found: Found) -> Callable[[str], Any]:
    if found.kind == "LIKE":
        return patterns.like(found.pattern)
    if found.kind == "RLIKE":
        return patterns.rlike(found.pattern)
    if found.kind == "GROK":
        return patterns.compile_grok(found.pattern)
    return patterns.compile_dissect(found.pattern, found.separator)


def _python_source(found: Found) -> tuple[str, str] | None:
    """The equivalent Python `re` expression and how it is applied (fullmatch or search)."""
    if found.kind == "LIKE":
        body = "".join(
            ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in found.pattern
        )
        return "(?s)" + body, "fullmatch"
    if found.kind == "RLIKE":
        source = patterns._LuceneRegex(found.pattern, False).parse()
        return re.sub(r"\\x\{([0-9a-f]+)\}", lambda m: f"\\U{int(m.group(1), 16):08x}", source), (
            "fullmatch"
        )
    if found.kind == "GROK":
        expanded = patterns._expand_grok(found.pattern, ECS_V1)
        tree = patterns._OnigParser(expanded, found.pattern).parse()
        return patterns._to_python(tree), "search"
    return None


def _python_worker(source: str, how: str, text: str, out: Any) -> None:
    compiled = re.compile(source, re.MULTILINE)
    call = compiled.fullmatch if how == "fullmatch" else compiled.search
    start = time.perf_counter()
    call(text)
    out.put(time.perf_counter() - start)


def python_seconds(source: str, how: str, text: str, timeout: float) -> float | None:
    """One Python `re` call in a child process; None when it did not finish in time."""
    queue: Any = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_python_worker, args=(source, how, text, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return None
    return float(queue.get()) if not queue.empty() else None


def best_of(call: Callable[[str], Any], text: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call(text)
        best = min(best, time.perf_counter() - start)
    return best


def table(found: list[Found], size: int, timeout: float) -> None:
    """One markdown row per pattern: our worst cost and Python re's on the hostile values."""
    small = max(size // 16, 1)
    print(
        f"| kind | pattern | engine | ours: worst µs/call | ns/char | ns/char at {small:,} chars "
        "| Python re: worst µs/call | worst value for Python |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|")
    for f in found:
        shown = f.pattern if len(f.pattern) <= 70 else f.pattern[:67] + "..."
        shown = shown.replace("|", "\\|")
        try:
            matcher = ours(f)
        except patterns.PatternError as exc:
            print(f"| {f.kind} | `{shown}` | refused: {exc} | | | | | |")
            continue
        engine = {"DISSECT": "scan", "LIKE": "like"}.get(f.kind, "re2")
        values = hostile_values(f.pattern, size)
        worst = max(best_of(matcher, v) for v in values.values())
        worst_small = max(best_of(matcher, v[:small]) for v in values.values())
        py = _python_source(f)
        py_cell, py_worst_name = "n/a (no regex)", ""
        if py is not None:
            py_worst = 0.0
            for name, value in values.items():
                took = python_seconds(py[0], py[1], value, timeout)
                if took is None:
                    py_worst, py_worst_name = float("inf"), name
                    break
                if took > py_worst:
                    py_worst, py_worst_name = took, name
            timed_out = py_worst == float("inf")
            py_cell = f"> {timeout * 1e6:,.0f}" if timed_out else f"{py_worst * 1e6:,.0f}"
        print(
            f"| {f.kind} | `{shown}` | {engine} | {worst * 1e6:,.0f} | "
            f"{worst * 1e9 / size:.2f} | {worst_small * 1e9 / small:.2f} | {py_cell} | "
            f"{py_worst_name} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    rules_dir = args.shared / "elastic-rules" / "aws"
    if not rules_dir.is_dir():
        print(f"skipped: {rules_dir} is absent (../shared ships only beside the team's checkout)")
        return 0
    found = rule_patterns(rules_dir)
    print(
        f"{len(found)} distinct patterns from the ES|QL rules in {rules_dir}; values of "
        f"{args.size:,} characters; Python re calls stopped after {args.timeout:g} s\n"
    )
    table(found, args.size, args.timeout)
    spec = args.shared / "conformance" / "esql-spec" / "specs" / "grok.csv-spec"
    if spec.is_file():
        library = [
            f
            for f in extract(spec.read_text(encoding="utf-8"), spec.name)
            if f.kind == "GROK" and "%{" in f.pattern
        ]
        unique = list({f.pattern: f for f in library}.values())
        print(f"\n{len(unique)} distinct GROK patterns of {spec} that use the pattern library\n")
        table(unique, args.size, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
