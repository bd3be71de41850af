"""Reliability figures: hostile inputs against the real CLI and Python API, each in its own process with a timeout.

The cases (bench/reliability_cases.py): corrupt, truncated, fake and decompression-bomb images; zip-bomb and
tampered bundles; text files invalid in UTF-8 and in their declared encoding; 5 MB texts; malformed tables; and
failing runs pointed at outputs an earlier run wrote. Each ends in one outcome:

  ok               exit 0, and what the case needs said is said (a bad file skipped and counted, an error row)
  clean error      exit != 0 with one `error: ...` line and no traceback
  traceback        a Python traceback on stderr
  hang             no exit within --timeout seconds (killed)
  crash            killed by a signal (out of memory, segfault) or exit != 0 with no one-line error
  lost output      an output file written before the run is missing or changed afterwards
  wrong answer     exit 0 where a clean error was due, an error where exit 0 was due, or the row's error unsaid

Target: every case ok or a clean error, as its `expect` says. By default each case is a fork of this process after
`import headstart.cli` (the parent never runs torch, so no thread pool is inherited), calling the console script's
`main()` with the case's arguments: the same code path as `headstart ...`, without 5 s of imports per case.
`--fresh` runs `python -m headstart.cli` instead, a new interpreter per case.

  PYTHONPATH=. python bench/reliability.py [--jobs 2] [--timeout 60] [--fresh] [--only WORD]

Writes bench/results/reliability.json (commit, machine, arguments, date, every case) and prints a summary.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from reliability_cases import Case, bundle_cases, image_cases, lost_output_cases, setup_cases, table_cases, text_cases  # noqa: E402

RESULTS = os.path.join(HERE, "results", "reliability.json")
BAD = ("traceback", "hang", "crash", "lost output", "wrong answer")


def _digest(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Running:
    """One case's process: forked from here (default) or a fresh interpreter (--fresh)."""

    def __init__(self, case: Case, folder: str, fresh: bool) -> None:
        self.case, self.started = case, time.perf_counter()
        self.protected = []
        for src, dst in case.protect:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
            self.protected.append((dst, _digest(dst)))
        self.out, self.err = (os.path.join(folder, f"{id(case)}.{s}") for s in ("out", "err"))
        if fresh:
            cmd = ([sys.executable, "-m", "headstart.cli", *case.argv] if case.argv is not None
                   else [sys.executable, "-c", case.python])
            with open(self.out, "wb") as out, open(self.err, "wb") as err:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
            self.pid = self.proc.pid
        else:
            self.proc = None
            self.pid = os.fork()
            if self.pid == 0:
                _child(case, self.out, self.err)

    def poll(self):
        """(exit code or -signal, peak RSS in MB) once ended, else None."""
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        return code, round(usage.ru_maxrss / 1024)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it ended just now
            os.killpg(self.pid, signal.SIGKILL) if self.proc else os.kill(self.pid, signal.SIGKILL)
        os.wait4(self.pid, 0)


def _child(case: Case, out: str, err: str) -> None:
    """In the forked process: the console script's main() with the case's arguments, or the case's Python."""
    code = 1
    try:
        for fd, path in ((1, out), (2, err)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        import torch  # imported, never run, by the parent

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        if case.argv is not None:
            from headstart.cli import main

            sys.argv = ["headstart", *case.argv]
            main()
        else:
            exec(compile(case.python, "<case>", "exec"), {"__name__": "__main__"})
        code = 0
    except SystemExit as stop:  # as the interpreter would: None is 0, a message is printed and exits 1
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter would print for an uncaught exception
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def classify(case: Case, code: int | None, stdout: str, stderr: str, changed: list[str]) -> tuple[str, str]:
    """(outcome, first line of the error or of what went wrong)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    first = errors[0] if errors else ""
    if code is None:
        return "hang", "killed after the timeout"
    if "Traceback (most recent call last)" in stderr:
        return "traceback", lines[-1] if lines else ""
    if code < 0:
        return "crash", f"killed by signal {-code}"
    if changed:
        return "lost output", f"{first or 'exit ' + str(code)}; changed: {', '.join(changed)}"
    if code == 0:
        if case.expect == "error":
            return "wrong answer", "exit 0 where a clean error was due"
        if case.mention and case.mention not in stdout + stderr:
            return "wrong answer", f"exit 0 without saying '{case.mention}'"
        return "ok", ""
    if len(errors) != 1:
        return "crash", f"exit {code} without one error line: {(lines or [''])[-1][:200]}"
    if case.expect == "ok":
        return "wrong answer", first
    return "clean error", first


def run_all(cases: list[Case], folder: str, jobs: int, timeout: float, fresh: bool) -> list[dict]:
    """Run `cases` (setup ones first, one at a time), at most `jobs` at once; results in the cases' order."""
    results: dict[int, dict] = {}
    pending = collections.deque(enumerate(cases))
    running: dict[int, Running] = {}
    while pending or running:
        while pending and len(running) < (1 if pending[0][1].setup or any(
                r.case.setup for r in running.values()) else jobs):
            i, case = pending.popleft()
            running[i] = Running(case, folder, fresh)
        time.sleep(0.05)
        for i, run in list(running.items()):
            ended = run.poll()
            seconds = time.perf_counter() - run.started
            if ended is None and seconds < timeout:
                continue
            if ended is None:
                run.kill()
            del running[i]
            code, rss = ended if ended else (None, None)
            with open(run.out, errors="replace") as f:
                stdout = f.read()
            with open(run.err, errors="replace") as f:
                stderr = f.read()
            changed = [os.path.basename(p) for p, before in run.protected if _digest(p) != before]
            outcome, detail = classify(run.case, code, stdout, stderr, changed)
            results[i] = {"case": run.case.name, "group": run.case.group, "expect": run.case.expect,
                          "outcome": outcome, "error": detail[:300], "exit": code, "seconds": round(seconds, 1),
                          "peak_rss_mb": rss,
                          "command": (["headstart", *run.case.argv] if run.case.argv is not None else "python")}
            if outcome in BAD:
                results[i]["stderr_tail"] = stderr[-1500:]
            mark = "  " if outcome in ("ok", "clean error") else "!!"
            print(f"{mark} {outcome:<12} {seconds:5.1f}s  {run.case.name}: {detail[:110]}", flush=True)
    return [results[i] for i in range(len(cases))]


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "system": platform.platform(), "python": platform.python_version(), "load_avg": os.getloadavg()}


def commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", HERE, *args], capture_output=True, text=True).stdout.strip()

    code = ("..", ":(exclude)results")  # what the results measure; the results files themselves are not code
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *code))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    ap.add_argument("--fresh", action="store_true", help="a new interpreter per case instead of a fork")
    ap.add_argument("--only", help="comma-separated words: run the cases whose name or group holds one "
                    "(setup always runs)")
    ap.add_argument("--json", default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("MALLOC_MMAP_MAX_", "0")  # the allocator settings the project's commands run with
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "100000000000")
    os.environ["HEADSTART_CACHE"] = tempfile.mkdtemp(prefix="hs-reliability-cache-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; a case must not wait on it
    # Cases run side by side: each gets its share of the cores, rather than all of them fighting over every core.
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    if not args.fresh:
        import headstart.cli  # noqa: F401 - imported once, inherited by every forked case
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hs-reliability-") as root:
        logs = os.path.join(root, "logs")
        os.makedirs(logs)
        results = run_all(setup_cases(root), logs, 1, args.timeout * 3, args.fresh)
        if any(r["outcome"] != "ok" for r in results):
            print("setup failed: the good runs the cases rely on did not work", file=sys.stderr)
            return 1
        good = os.path.join(root, "good")
        image_bundle, text_bundle = (os.path.join(good, m, "model.hs") for m in ("image", "text"))
        inputs = os.path.join(root, "data", "inputs")
        cases = (image_cases(root, image_bundle) + text_cases(root, text_bundle) + table_cases(root)
                 + bundle_cases(root, image_bundle, inputs) + lost_output_cases(root, good, inputs))
        if args.only:
            words = [w.strip().lower() for w in args.only.split(",") if w.strip()]
            cases = [c for c in cases if any(w in (c.name + " " + c.group).lower() for w in words)]
        results += run_all(cases, logs, args.jobs, args.timeout, args.fresh)
    wall = time.perf_counter() - started
    counts = collections.Counter(r["outcome"] for r in results if r["group"] != "setup")
    summary = {"cases": sum(counts.values()), **{k: counts.get(k, 0) for k in ("ok", "clean error", *BAD)}}
    record = {**commit(), "machine": machine(), "arguments": vars(args),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "wall_s": round(wall, 1), "summary": summary, "cases": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(record, f, indent=2)
    by_group = collections.defaultdict(collections.Counter)
    for r in results:
        by_group[r["group"]][r["outcome"]] += 1
    print(f"\n{'group':<12} {'cases':>5} {'ok':>4} {'clean error':>11} " + " ".join(f"{b:>12}" for b in BAD))
    for group, c in by_group.items():
        print(f"{group:<12} {sum(c.values()):>5} {c['ok']:>4} {c['clean error']:>11} "
              + " ".join(f"{c[b]:>12}" for b in BAD))
    print(f"\n{summary['cases']} cases in {wall:.0f} s: " + ", ".join(f"{v} {k}" for k, v in summary.items()
                                                                     if k != "cases")
          + f"\nresults: {args.json}")
    return 1 if any(summary[b] for b in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
