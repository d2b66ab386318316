#!/usr/bin/env python3
"""Reports import cycles between the top-level modules of a crate (default: node/src).

Each top-level module (`node/src/<name>.rs` or `node/src/<name>/`) is a node of a graph; a file
of module A that names `crate::B::...` (in a `use`, grouped `use crate::{B::x, C}`, or an inline
path) is an edge A -> B. Comments and string literals are skipped; test code counts like any other
code (a test module that reaches up is still a cycle for the reader). Any strongly connected set of
two or more modules is reported with one cycle through it and the file:line of every edge inside
the set, and the script exits 1. It exits 0 with a one-line summary of the layers otherwise.

Usage: scripts/check-module-cycles.py [SRC_DIR]   (run from anywhere; default node/src)
"""

import os
import re
import sys
from collections import defaultdict

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip_comments_and_strings(text):
    """Replaces comments, string and char literals with spaces, keeping newlines (so lines count)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}') or a lifetime ('a): skip only literals.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_heads(text, start):
    """Top-level names of the brace group opening at text[start] == '{': [(name, offset)]."""
    heads, depth, i, expect = [], 0, start, True
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            expect = depth == 1
            i += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
            i += 1
        elif c == "," and depth == 1:
            expect = True
            i += 1
        elif c.isspace():
            i += 1
        else:
            m = IDENT.match(text, i)
            if m:
                if expect and depth == 1:
                    heads.append((m.group(0), i))
                expect = False
                i = m.end()
            else:
                i += 1
    return heads


def module_edges(src):
    """{(from, to): [(file, line)]} over the top-level modules of `src`."""
    modules = set()
    for entry in os.listdir(src):
        path = os.path.join(src, entry)
        if os.path.isdir(path):
            modules.add(entry)
        elif entry.endswith(".rs") and entry not in ("lib.rs", "main.rs"):
            modules.add(entry[:-3])
    edges = defaultdict(list)
    for root, _dirs, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)
            top = rel.split(os.sep)[0]
            top = top[:-3] if top.endswith(".rs") else top
            if top not in modules:
                continue  # lib.rs, main.rs: the crate roots
            with open(path, encoding="utf-8") as f:
                text = strip_comments_and_strings(f.read())
            for m in re.finditer(r"\bcrate\s*::\s*", text):
                rest = m.end()
                if rest < len(text) and text[rest] == "{":
                    targets = group_heads(text, rest)
                else:
                    ident = IDENT.match(text, rest)
                    targets = [(ident.group(0), rest)] if ident else []
                for target, offset in targets:
                    if target in modules and target != top:
                        line = text.count("\n", 0, offset) + 1
                        edges[(top, target)].append((os.path.join(src, rel), line))
    return modules, edges


def strongly_connected(nodes, succ):
    """Tarjan's algorithm: the strongly connected components, each a sorted list."""
    index, low, stack, on_stack, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return comps


def shortest_cycle(start, comp, succ):
    """A shortest cycle through `start` inside `comp`, as a list of modules (first == last)."""
    prev, frontier, seen = {}, [start], {start}
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(succ[v]):
                if w not in comp:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start] + list(reversed(path[:-1])) + [start] if len(path) > 1 else [start, v, start]
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.relpath(os.path.join(here, "..", "node", "src"))
    modules, edges = module_edges(src)
    succ = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    cycles = [c for c in strongly_connected(modules, succ) if len(c) > 1]
    if not cycles:
        print(f"check-module-cycles: {src}: {len(modules)} top-level modules, {len(edges)} edges, no cycle")
        return 0
    for comp in cycles:
        members = set(comp)
        cycle = shortest_cycle(comp[0], members, succ)
        print(f"check-module-cycles: {src}: modules {', '.join(comp)} import each other", file=sys.stderr)
        print(f"  a cycle: {' -> '.join(cycle)}", file=sys.stderr)
        print("  every import inside this set (break enough of them to make it a chain):", file=sys.stderr)
        for (a, b), sites in sorted(edges.items()):
            if a in members and b in members:
                where = ", ".join(f"{f}:{l}" for f, l in sites[:4])
                more = f" (+{len(sites) - 4} more)" if len(sites) > 4 else ""
                print(f"    {a} -> {b}: {where}{more}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
