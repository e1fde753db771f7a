"""Cold start: the import time of each Lambda handler's module, against `import boto3` alone.

Every measurement is a fresh interpreter, as a Lambda cold start is. The handlers, their code folders
and their environment come from the translated template. Bytecode is cached in a temporary folder
(PYTHONPYCACHEPREFIX, filled by one discarded warm-up run per command) so that every timed run reads
compiled bytecode and nothing is written into the source tree. Runs alternate between the commands, so
a slow spell of the machine hits all of them alike.
"""

import os
import statistics
import subprocess
import sys
import tempfile

from local.cloudformation import translate

from .common import ROOT, row, run_metadata

RUNS = 5
TARGET_RATIO = 1.5
TOP_IMPORTS = 5
RUN_TIMEOUT_SECONDS = 60
LAYER = ROOT / "layers" / "common"
TIMED = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def handlers() -> list[dict]:
    """Each AWS::Lambda::Function of the template: code folder, handler and environment."""
    cfn, parameters = translate()
    found = []
    for logical_id, resource in cfn["Resources"].items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        props = resource["Properties"]
        variables = props.get("Environment", {}).get("Variables", {})
        found.append(
            {
                "function": logical_id,
                "code_dir": props["Code"]["S3Key"],
                "handler": props["Handler"],
                "environment": {name: _placeholder(value, parameters) for name, value in variables.items()},
            }
        )
    return found


def _placeholder(value, parameters: dict[str, str]) -> str:
    """A parameter's value, or a stand-in for a resource name (nothing is called at import time)."""
    if isinstance(value, str):
        return value
    ref = value.get("Ref") if isinstance(value, dict) else None
    if ref in parameters:
        return parameters[ref]
    return f"bench-{ref or 'value'}"


def _environment(extra: dict[str, str], pycache: str) -> dict[str, str]:
    """A clean environment: what Lambda would set, not what this shell (or a local stack) has set."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    env.update(
        PYTHONPATH=str(LAYER),
        PYTHONPYCACHEPREFIX=pycache,
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
    )
    env.update(extra)
    return env


def _run(args: list[str], cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{done.stderr[-2000:]}")
    return done


def _timed_import(module: str, cwd, env: dict[str, str]) -> float:
    return float(_run(["-c", TIMED.format(module=module)], cwd, env).stdout.strip())


def _importtime(module: str, cwd, env: dict[str, str]) -> list[tuple[int, str, float]]:
    """`-X importtime` as (depth, name, cumulative ms), in the order Python finished the imports:
    a module comes after everything it imported, and its importer is the next line one level up."""
    stderr = _run(["-X", "importtime", "-c", f"import {module}"], cwd, env).stderr
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _self_us, cumulative_us, name_field = line[len("import time:") :].split("|", 2)
        depth = (len(name_field) - len(name_field.lstrip()) - 1) // 2
        entries.append((depth, name_field.strip(), int(cumulative_us) / 1000))
    return entries


def heaviest_imports(module: str, cwd, env: dict[str, str]) -> list[dict]:
    """The heaviest imports of other packages made by the project's own code (the handler module and
    the xjobs package): the import statements to make lazy.

    An import is charged to the module that imported it first, with everything it imported in turn
    (cumulative); `includes` names the other package that makes up most of it, if one does.
    """
    entries = _importtime(module, cwd, env)
    root = max(i for i, (depth, name, _) in enumerate(entries) if depth == 0 and name == module)
    begin = max((i for i in range(root) if entries[i][0] == 0), default=-1) + 1

    def top(name: str) -> str:
        return name.split(".")[0]

    def own(name: str) -> bool:
        return top(name) in (module, "xjobs")

    charged = []
    for i in range(begin, root):
        depth, name, cumulative_ms = entries[i]
        importer = next(entries[j][1] for j in range(i + 1, root + 1) if entries[j][0] < depth)
        if own(name) or not own(importer):
            continue
        entry = {"import": name, "imported_by": importer, "cumulative_ms": cumulative_ms, "includes": None}
        below = []
        for k in range(i - 1, begin - 1, -1):
            if entries[k][0] <= depth:
                break
            if "." not in entries[k][1] and top(entries[k][1]) != top(name):
                below.append(entries[k])
        heaviest = max(below, key=lambda e: e[2], default=None)
        if heaviest and heaviest[2] >= cumulative_ms / 2:
            entry["includes"] = {"import": heaviest[1], "cumulative_ms": heaviest[2]}
        charged.append(entry)
    charged.sort(key=lambda entry: entry["cumulative_ms"], reverse=True)
    return charged[:TOP_IMPORTS]


def run() -> dict:
    functions = handlers()
    with tempfile.TemporaryDirectory(prefix="xjobs-bench-pycache-") as pycache:
        # What is timed: `import boto3` (the baseline), and each distinct handler module once.
        commands = {"boto3": ("boto3", ROOT, _environment({}, pycache))}
        for fn in functions:
            module = fn["handler"].rsplit(".", 1)[0]
            key = f"{fn['code_dir']}{module}"
            commands.setdefault(
                key, (module, ROOT / fn["code_dir"], _environment(fn["environment"], pycache))
            )
            fn["module"] = key

        for module, cwd, env in commands.values():  # warm-up: compiles bytecode into the cache
            _timed_import(module, cwd, env)
        samples: dict[str, list[float]] = {key: [] for key in commands}
        for _ in range(RUNS):
            for key, (module, cwd, env) in commands.items():
                samples[key].append(_timed_import(module, cwd, env))
        top = {
            key: heaviest_imports(module, cwd, env)
            for key, (module, cwd, env) in commands.items()
            if key != "boto3"
        }

    boto3_ms = statistics.median(samples["boto3"]) * 1000
    results, rows = [], []
    for fn in functions:
        ms = statistics.median(samples[fn["module"]]) * 1000
        ratio = ms / boto3_ms
        results.append(
            {
                "function": fn["function"],
                "handler": fn["handler"],
                "code_dir": fn["code_dir"],
                "import_ms_median": ms,
                "import_ms_runs": [s * 1000 for s in samples[fn["module"]]],
                "ratio_to_boto3": ratio,
                "target_met": ratio <= TARGET_RATIO,
                "heaviest_imports": top[fn["module"]],
            }
        )
        rows.append(
            row(
                f"{fn['function']} import ({fn['code_dir']}{fn['handler']})",
                ms,
                boto3_ms,
                "ms",
                f"≤ {TARGET_RATIO}× import boto3",
                ratio <= TARGET_RATIO,
            )
        )
    return {
        "benchmark": "cold_start",
        **run_metadata(),
        "method": (
            f"median of {RUNS} fresh interpreters per module (after one warm-up run), "
            "time.perf_counter() around the import; baseline: `import boto3` in the same runs"
        ),
        "runs": RUNS,
        "baseline": {
            "import": "boto3",
            "ms_median": boto3_ms,
            "ms_runs": [s * 1000 for s in samples["boto3"]],
        },
        "handlers": results,
        "rows": rows,
    }


def report(result: dict) -> str:
    """The heaviest imports per handler module, for the summary."""
    lines, seen = [], set()
    for fn in result["handlers"]:
        key = fn["code_dir"] + fn["handler"].rsplit(".", 1)[0]
        if key in seen:
            continue
        seen.add(key)
        users = [f["function"] for f in result["handlers"] if f["code_dir"] == fn["code_dir"]]
        lines.append(f"Heaviest imports made by project code in `{key}.py` ({', '.join(users)}):")
        for entry in fn["heaviest_imports"]:
            name, ms, importer = entry["import"], entry["cumulative_ms"], entry["imported_by"]
            line = f"- `{name}` {ms:.0f} ms, imported by `{importer}`"
            if includes := entry["includes"]:
                line += f" (includes `{includes['import']}` {includes['cumulative_ms']:.0f} ms)"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)
