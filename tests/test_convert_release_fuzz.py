"""The release converter on a few hundred damaged released graphs: a sound conversion or a clear refusal.

Each damaged copy of a released workflow (tests/released_workflows.py) loses a field, gets a dangling
or duplicated link, a value of the wrong type, a duplicated or missing node id, ... (seeded). The
converter must either refuse it with ``ConversionError`` / ``NotAReleasedGraph`` and one line that
names where (never a KeyError, IndexError or AttributeError, and never its own safety net,
``UnexpectedGraph``), or convert it into a graph whose soundness check against the server's
``/object_info`` finds nothing the damaged input did not already have (the converter keeps the
user's own nodes as they are). The route answers 400 and the CLI exits 1 with one line for the same
refusals.
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys

import pytest

from aceplus_host.convert_release import ConversionError, NotAReleasedGraph, UnexpectedGraph, convert
from aceplus_host.workflows import check_workflow
from bad_input_cases import CONVERTER_CASES
from released_workflows import released_workflows
from test_convert_release import MODEL_FILES, as_loaded

pytestmark = pytest.mark.server
RELEASED = released_workflows()
NAMES = sorted(RELEASED)
ROUNDS = 300
BAD_VALUES = (None, "x", -1, 10**12, 1.5, float("nan"), float("inf"), True, [], {}, [1, 2, 3], {"0": 1})


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))] if seq else None


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _entries(nodes: list) -> list[tuple[dict, str, int]]:
    return [(n, side, i) for n in nodes for side in ("inputs", "outputs") for i, e in enumerate(_list(n.get(side)))
            if isinstance(e, dict) and e]


def damage(wf: dict, rng: random.Random) -> str:
    """Damage ``wf`` in place in one random way (also when an earlier damage broke it); returns what was done."""
    nodes = [n for n in _list(wf.get("nodes")) if isinstance(n, dict)]
    links = [lk for lk in _list(wf.get("links")) if isinstance(lk, list) and lk]
    node = _pick(rng, [n for n in nodes if n])
    kind = rng.randrange(14)
    if kind == 0 and node:
        key = _pick(rng, sorted(node))
        del node[key]
        return f"node {node.get('id')}: deleted {key}"
    if kind == 1:
        entry = _pick(rng, _entries(nodes))
        if entry:
            n, side, i = entry
            key = _pick(rng, sorted(n[side][i]))
            if key:
                del n[side][i][key]
                return f"node {n['id']} {side}[{i}]: deleted {key}"
    if kind == 2:
        entry = _pick(rng, [e for e in _entries(nodes) if e[1] == "inputs"])
        if entry:
            n, _, i = entry
            n["inputs"][i]["link"] = 100000
            return f"node {n['id']} input {i}: dangling link"
    if kind == 3 and links:
        lk = _pick(rng, links)
        wf["links"].remove(lk)
        return f"link {lk[0]} removed from links"
    if kind == 4 and links:
        lk = _pick(rng, [lk for lk in links if len(lk) > 3])
        if lk:
            lk[_pick(rng, [1, 3])] = 99999
            return f"link {lk[0]}: to a missing node"
    if kind == 5 and links:
        lk = _pick(rng, [lk for lk in links if len(lk) > 4])
        if lk:
            lk[_pick(rng, [2, 4])] = 50
            return f"link {lk[0]}: slot out of range"
    if kind == 6 and node:
        key = _pick(rng, sorted(node))
        node[key] = _pick(rng, BAD_VALUES)
        return f"node {node.get('id')}: {key} = {node[key]!r}"
    if kind == 7 and node and isinstance(node.get("widgets_values"), list) and node["widgets_values"]:
        i = rng.randrange(len(node["widgets_values"]))
        node["widgets_values"][i] = _pick(rng, BAD_VALUES)
        return f"node {node['id']}: widget {i} = {node['widgets_values'][i]!r}"
    if kind == 8 and links:
        lk = _pick(rng, links)
        j = rng.randrange(len(lk))
        lk[j] = _pick(rng, BAD_VALUES)
        return f"link {lk[0]}: field {j} = {lk[j]!r}"
    if kind == 9:
        entry = _pick(rng, _entries(nodes))
        if entry:
            n, side, i = entry
            key = _pick(rng, sorted(n[side][i]))
            n[side][i][key] = _pick(rng, BAD_VALUES)
            return f"node {n['id']} {side}[{i}].{key} = {n[side][i][key]!r}"
    if kind == 10 and len(nodes) > 1:
        a, b = rng.sample(range(len(nodes)), 2)
        nodes[a]["id"] = nodes[b].get("id")
        return f"duplicated node id {nodes[b].get('id')}"
    if kind == 11 and len(links) > 1:
        a, b = rng.sample(range(len(links)), 2)
        links[a][0] = links[b][0]
        return f"duplicated link id {links[b][0]}"
    if kind == 12 and node:
        wf["nodes"].remove(node)
        return f"node {node.get('id')} ({node.get('type')}) deleted"
    key = _pick(rng, ["links", "groups", "last_node_id", "last_link_id", "definitions", "nodes"])
    wf[key] = _pick(rng, BAD_VALUES)
    return f"workflow {key} = {wf[key]!r}"


def damaged(seed: int) -> tuple[object, str]:
    rng = random.Random(seed)
    if seed % 50 == 0:  # a body that is not a workflow at all
        return _pick(rng, [None, [], "workflow", 5, {}, {"nodes": None}]), "not a workflow"
    wf = copy.deepcopy(RELEASED[NAMES[seed % len(NAMES)]])
    done = [damage(wf, rng) for _ in range(1 + rng.randrange(2))]
    return wf, "; ".join(done)


def converted_samples(count: int) -> list[tuple[int, str, dict]]:
    """The first ``count`` damaged graphs that convert: (seed, damage, converted UI graph), for the front end."""
    out = []
    for seed in range(ROUNDS):
        wf, what = damaged(seed)
        try:
            out.append((seed, what, convert(wf).workflow))
        except (ConversionError, NotAReleasedGraph):
            continue
        if len(out) == count:
            break
    return out


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_damaged_released_graphs_convert_soundly_or_are_refused_in_one_line(object_info):
    failures, refused, converted = [], 0, 0
    for seed in range(ROUNDS):
        wf, what = damaged(seed)
        try:
            result = convert(wf)
        except UnexpectedGraph as err:
            failures.append(f"seed {seed} ({what}): the checks let it through: {err}")
            continue
        except (ConversionError, NotAReleasedGraph) as err:
            message = str(err)
            if not message or "\n" in message:
                failures.append(f"seed {seed} ({what}): refusal is not one line: {message!r}")
            refused += 1
            continue
        except Exception as err:  # noqa: BLE001 (the point of the test)
            failures.append(f"seed {seed} ({what}): {type(err).__name__}: {err}")
            continue
        converted += 1
        before = set(check_workflow(as_loaded(wf, object_info), object_info, expected_missing=MODEL_FILES).errors)
        after = check_workflow(as_loaded(result.workflow, object_info), object_info, expected_missing=MODEL_FILES)
        new = [e for e in after.errors if e not in before]
        if new:
            failures.append(f"seed {seed} ({what}): converted into an unsound graph: {new[:3]}")
    assert not failures, f"{len(failures)} of {ROUNDS}:\n" + "\n".join(failures[:25])
    assert refused > ROUNDS // 4 and converted > ROUNDS // 20, (refused, converted)  # both paths are exercised


@pytest.mark.parametrize("case", CONVERTER_CASES, ids=lambda c: c.id)
def test_route_and_cli_refuse_in_one_line(comfy_server, tmp_path, case):
    """The README's converter rows: HTTP 400 from the route and exit 1 with one line from the CLI."""
    wf = case.build() if case.build else None
    status, body = comfy_server.post("/acepp/convert_release", {"workflow": wf})
    assert status == 400, body
    assert all(e in body["error"] for e in case.expect), body
    src = tmp_path / "in.json"
    src.write_text(json.dumps(wf))
    run = subprocess.run([sys.executable, "-m", "aceplus_host", "convert-release", str(src), str(tmp_path / "out.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and all(e in lines[0] for e in case.expect), run.stdout
    assert "Traceback" not in run.stderr and not (tmp_path / "out.json").exists()
