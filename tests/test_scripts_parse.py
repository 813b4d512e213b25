"""Every main.py / evaluate-accuracy.py / processorca.py invocation in the repo's shell scripts and README/docs code
blocks parses with the real argument parsers (the reference's scripts passed a flag its CLI lacked).

Each invocation runs the script's own entry point with argparse intercepted right after parsing,
so whatever parser the script really builds is the one checked, and nothing else runs.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import sys

import pytest

from loadgen_fixtures import REPO

SCRIPTS = ("main.py", "evaluate-accuracy.py", "processorca.py")
SKIP_DIRS = {".git", ".venv", "node_modules", ".devcarry", "__pycache__", ".pytest_cache"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "<", "2>", "|&"}


def _shell_sources() -> list[tuple[str, str]]:
    """(label, text) of every *.sh and every ```bash/sh/console``` block of README.md and docs/*.md."""
    sources = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, REPO)
            if name.endswith(".sh"):
                sources.append((rel, open(path, encoding="utf-8").read()))
            elif name.endswith(".md") and (rel == "README.md" or rel.startswith("docs" + os.sep)):
                text = open(path, encoding="utf-8").read()
                for i, block in enumerate(re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S)):
                    sources.append((f"{rel}#block{i}", block))
    return sources


def _known_values(text: str) -> dict[str, str]:
    """Values the script itself gives its variables: `VAR=value` and the first item of `for VAR in ...`."""
    values = {}
    for name, value in re.findall(r"^\s*(?:export\s+)?(\w+)=\"?([^\"\s;$]*)", text, re.M):
        values.setdefault(name, value)
    for name, items in re.findall(r"\bfor\s+(\w+)\s+in\s+([^;\n]+)", text):
        values.setdefault(name, items.split()[0])
    return values


def _arrays(text: str) -> dict[str, str]:
    """The items the script gives its arrays, in order: `NAME=(...)` then every `NAME+=(...)`, as shell text."""
    arrays: dict[str, str] = {}
    for name, plus, items in re.findall(r"\b(\w+)(\+?)=\(([^)]*)\)", text):
        arrays[name] = f"{arrays.get(name, '')} {items}" if plus else items
    return arrays


def _substitute(line: str, values: dict[str, str], arrays: dict[str, str] | None = None) -> str:
    """Shell variables -> the script's own value or `:-default`, else a placeholder parsing as path or int;
    `"${NAME[@]}"` -> the script's items of that array."""
    line = line.replace('"$@"', "").replace("$@", "")
    line = re.sub(r'"?\$\{(\w+)\[@\]\}"?', lambda m: (arrays or {}).get(m.group(1), m.group(0)), line)
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: values.get(m.group(1), m.group(2)), line)
    return re.sub(r"\$\{(\w+)(?::[?=+][^}]*)?\}|\$(\w+)",
                  lambda m: values.get(m.group(1) or m.group(2)) or "1", line)


def _unwrap_synopsis(line: str) -> str:
    """Docs write optional flags as `[--flag VALUE]`: check the flag, with an ALL-CAPS metavar as "1"."""
    def unwrap(match):
        return " ".join("1" if re.fullmatch(r"[A-Z_]+", w) else w for w in match.group(1).split())

    return re.sub(r"\[(--?[^\]]*)\]", unwrap, line)


def invocations() -> list[tuple[str, str, list[str]]]:
    """(label, script, args) for every call of a SCRIPTS entry, line continuations joined."""
    found = []
    for label, text in _shell_sources():
        joined = re.sub(r"\\\n", " ", text)
        values, arrays = _known_values(joined), _arrays(joined)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("#") or not any(s in line for s in SCRIPTS):
                continue
            try:
                words = shlex.split(_unwrap_synopsis(_substitute(line, values, arrays)), comments=True)
            except ValueError:
                continue
            for i, word in enumerate(words):
                script = os.path.basename(word)
                if script in SCRIPTS and (i == 0 or "python" in os.path.basename(words[i - 1])
                                          or words[i - 1] == "-u"):
                    args = []
                    for arg in words[i + 1:]:
                        if arg in SHELL_OPERATORS or arg.startswith((">", "2>", "|")):
                            break
                        args.append(arg)
                    found.append((label, script, args))
    return found


class _Parsed(Exception):
    pass


def _parse_with_real_parser(script: str, args: list[str], monkeypatch) -> argparse.Namespace:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise _Parsed(original(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(str(REPO))
    with pytest.raises(_Parsed) as parsed:
        runpy.run_path(str(REPO / script), run_name="__main__")
    return parsed.value.args[0]


CASES = invocations()


def test_the_run_scripts_are_found():
    labels = {(label, script) for label, script, _ in CASES}
    for expected in (("run_accuracy.sh", "main.py"), ("run_accuracy.sh", "evaluate-accuracy.py"),
                     ("run_offline.sh", "main.py"), ("run_server.sh", "main.py")):
        assert expected in labels, sorted(labels)


@pytest.mark.parametrize("label,script,args", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_invocation_parses(label, script, args, monkeypatch):
    if not (REPO / script).exists():
        pytest.skip(f"{script} is not on this branch yet; {label} calls it")
    try:
        _parse_with_real_parser(script, args, monkeypatch)
    except SystemExit as exc:
        pytest.fail(f"{label}: `{script} {' '.join(args)}` does not parse (exit {exc.code})")


def test_a_flag_main_py_lacks_is_caught(monkeypatch):
    # The reference's scripts pass --mlperf-conf, which its main.py no longer has.
    with pytest.raises(SystemExit):
        _parse_with_real_parser("main.py", ["--mlperf-conf", "mlperf.conf"], monkeypatch)
    parsed = _parse_with_real_parser("main.py", ["--scenario", "Server", "--batch-size", "4"], monkeypatch)
    assert (parsed.scenario, parsed.batch_size) == ("Server", 4)
