"""Issue 22's fault matrix: a small night on the real stack (PostgreSQL, a live MLflow server and a live
Prefect server, as `make services` starts them), one fault injected per case at an exact point, then the next
night, then the checks. `make faults` runs every case; `make faults-quick` (CI) three of them.

    python benchmarks/faults.py [--only NAME ...] [--list] [--home DIR] [--json FILE]

The night is `python -m flows.pipeline` run with the stack's client environment (a process whose pid the
matrix knows, as under cron). It stops itself at a stage boundary (VAE_PIPELINE_HOLD_AT, flows/nights.drill)
or the matrix waits for the first trial checkpoint (mid-training); then the fault: SIGKILL of the night,
SIGSTOP of a service for a while, SIGKILL of a service and `python -m vae.services restart` after a while,
`task_timeout` firing in 2-process DDP, a learning rate that turns the weights NaN, a hand promote or a hand
rollback released at the moment the night promotes. After each case (fault_checks.py):
- the next night (same settings, no fault) exits 0;
- no process seen under the faulted night is alive 30 s after it ended;
- every registered version of the case's model carries a promotion decision;
- no two versions share a candidate key;
- the `champion` alias is the last entry of the champion history;
- no run in the model's experiment is left RUNNING, and every FAILED or KILLED run says why.
It prints one line per case and ends with `faults: S of N survived` (exit 1 unless S = N).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from vae import credentials

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fault_checks  # noqa: E402  (benchmarks/ is not a package)
from train_speed import matmul_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
NIGHT = ["--subset", "300", "--trials", "1", "--epochs", "1", "--min-epochs", "1", "--iw-samples", "0"]
MID = ["--epochs", "4"]  # a trial long enough to be caught between its first checkpoint and its end
QUICK = ("kill-after-register", "mlflow-kill-mid-trial", "nan-weights")


class Stack:
    """The services of one home, started once for the whole matrix, and the faults a case does to them."""

    def __init__(self, home: Path, base_port: int) -> None:
        self.home = home
        self._services("start", "--base-port", str(base_port))
        self.env = credentials.read_env(home / "client.env")

    def _services(self, *args: str) -> None:
        done = subprocess.run(
            [PY, "-m", "vae.services", *args, "--home", str(self.home)], cwd=ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:  # the services' own message, not a bare CalledProcessError
            raise SystemExit(f"faults: vae.services {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-2000:]}")

    def procs(self, name: str) -> list[psutil.Process]:
        """The processes of one service: a server's process group, or the postmaster and its backends."""
        if name == "postgres":
            leader = psutil.Process(int((self.home / "pg" / "postmaster.pid").read_text().split()[0]))
        else:
            leader = psutil.Process(json.loads((self.home / "pids.json").read_text())[name]["pid"])
        return [leader, *leader.children(recursive=True)]

    def signal(self, name: str, sig: int) -> None:
        for proc in self.procs(name):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)

    def restart(self, name: str) -> None:
        self._services("restart", name)

    def stop(self) -> None:
        self._services("stop")


@dataclass
class Case:
    name: str
    at: str | None  # a stage boundary, "mid-trial", or None (the fault needs no hold)
    fault: Callable[[Stack, Night], None]
    args: list[str] = field(default_factory=list)
    setup: list[list[str]] = field(default_factory=list)  # earlier nights of the same model, run first
    recovery_args: list[str] | None = None  # the next night's own arguments (default: the faulted night's)
    expect: str | None = None  # what the faulted night's log must show, where the fault is in its own arguments


LIVE: list[Night] = []  # every night started, killed if the matrix is stopped before it ends


class Night:
    """One `python -m flows.pipeline` of a case, and every process seen under it while it ran."""

    def __init__(self, stack: Stack, workdir: Path, model: str, args: list[str], hold: str | None = None):
        self.hold_file = workdir.parent / f"{workdir.name}.held"
        self.hold_file.unlink(missing_ok=True)
        env = {**os.environ, **stack.env, "PREFECT_HOME": str(workdir.parent / f"{workdir.name}.prefect")}
        if hold and hold != "mid-trial":
            env |= {"VAE_PIPELINE_HOLD_AT": hold, "VAE_PIPELINE_HOLD_FILE": str(self.hold_file)}
        cmd = [PY, "-m", "flows.pipeline", *NIGHT, *args, "--workdir", str(workdir), "--model-name", model]
        self.log = open(workdir.parent / f"{workdir.name}.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.workdir, self.model, self.seen, self._done = workdir, model, {}, threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        LIVE.append(self)

    def kill(self) -> None:
        """The night and everything seen under it (the matrix itself was stopped mid-case)."""
        for pid in [self.proc.pid, *self.seen]:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    self.seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass
            time.sleep(0.2)

    def wait_point(self, at: str, seconds: float = 600) -> None:
        """Until the night stops at its hold point, or its first trial checkpoint is on disk."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            if at == "mid-trial" and list(self.workdir.glob("studies/*/trial-*/checkpoint.pt")):
                return
            if at != "mid-trial" and self.hold_file.exists():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the night ended (exit {self.proc.returncode}) before reaching {at}")
            time.sleep(0.1)
        raise RuntimeError(f"the night did not reach {at} within {seconds} s")

    def go_on(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def finish(self, seconds: float = 1200) -> int:
        try:
            rc = self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self.log.write(f"\nfaults: the night hung for {seconds} s and was killed\n".encode())
        self._done.set()
        self.log.close()
        return rc


def kill_night(stack: Stack, night: Night) -> None:
    night.proc.kill()


def pause(service: str, seconds: float) -> Callable[[Stack, Night], None]:
    def fault(stack: Stack, night: Night) -> None:
        stack.signal(service, signal.SIGSTOP)
        night.go_on()
        time.sleep(seconds)
        stack.signal(service, signal.SIGCONT)

    return fault


def crash(service: str, down: float) -> Callable[[Stack, Night], None]:
    def fault(stack: Stack, night: Night) -> None:
        stack.signal(service, signal.SIGKILL)
        night.go_on()
        time.sleep(down)
        for _ in range(50):  # the killed processes must be gone before the same port and data are taken again
            if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in _safe_procs(stack, service)):
                break
            time.sleep(0.2)
        stack.restart(service)

    return fault


def _safe_procs(stack: Stack, service: str) -> list[psutil.Process]:
    try:
        return stack.procs(service)
    except (psutil.Error, OSError, KeyError, ValueError):
        return []


def hand(action: list[str]) -> Callable[[Stack, Night], None]:
    """A person's `vae registry ...` started at the moment the held night goes on to promote."""

    def fault(stack: Stack, night: Night) -> None:
        env = {**os.environ, **stack.env}
        cmd = [PY, "-m", "vae", "registry", *action, "--name", night.model]
        person = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        night.go_on()
        out = person.communicate(timeout=300)[0].decode()
        night.log.write(f"\nfaults: hand {' '.join(action)}: exit {person.returncode}: {out.strip()[-400:]}\n".encode())

    return fault


def no_injection(stack: Stack, night: Night) -> None:
    """The fault is in the night's own arguments: a --task-timeout shorter than its 2-process training, or a
    learning rate that diverges."""
    night.go_on()


def cases(space: Path) -> list[Case]:
    boundaries = ("fetch", "tune", "candidate", "evaluate", "register", "gate")
    out = [Case(f"kill-after-{b}", b, kill_night) for b in boundaries]
    out.append(Case("kill-mid-trial", "mid-trial", kill_night, MID))
    for service in ("mlflow", "prefect", "postgres"):
        out.append(Case(f"{service}-pause-mid-trial", "mid-trial", pause(service, 30), MID))
        out.append(Case(f"{service}-kill-mid-trial", "mid-trial", crash(service, 20), MID))
        out.append(Case(f"{service}-pause-before-register", "evaluate", pause(service, 30)))
        out.append(Case(f"{service}-kill-before-register", "evaluate", crash(service, 20)))
    out.append(Case("mlflow-kill-before-promote", "gate", crash("mlflow", 20)))
    out.append(Case("postgres-kill-before-tune", "fetch", crash("postgres", 20)))
    ddp = ["--nproc", "2", "--subset", "3000", "--epochs", "30", "--task-timeout", "40"]
    timeout = "was stopped after its timeout of 40 s"
    out.append(Case("task-timeout-ddp", None, no_injection, ddp, recovery_args=["--nproc", "2"], expect=timeout))
    nan = ["--trials", "2", "--space", str(space)]
    out.append(Case("nan-weights", None, no_injection, nan, recovery_args=[], expect="training diverged"))
    two = [[], ["--epochs", "2"]]
    out.append(
        Case("hand-promote-race", "gate", hand(["promote", "--version", "2", "--force"]), ["--epochs", "3"], setup=two)
    )
    out.append(Case("hand-rollback-race", "gate", hand(["rollback"]), ["--epochs", "3"], setup=two))
    return out


def run_case(stack: Stack, case: Case, root: Path) -> dict:
    model = f"fault-{case.name}"
    workdir = root / case.name
    for i, args in enumerate(case.setup):
        rc = Night(stack, workdir, model, args).finish()
        if rc != 0:
            return {"case": case.name, "survived": False, "failures": [f"setup night {i + 1} exited {rc}"]}
    t0 = time.time()
    night = Night(stack, workdir, model, case.args, case.at)
    try:
        if case.at:
            night.wait_point(case.at)
        case.fault(stack, night)
        faulted = night.finish()
    except RuntimeError as e:
        night.finish(5)
        return {"case": case.name, "survived": False, "failures": [f"fault not injected: {e}"]}
    seen = (workdir.parent / f"{workdir.name}.log").read_text(errors="replace")
    recovery = case.args if case.recovery_args is None else case.recovery_args
    rc = Night(stack, workdir, model, recovery).finish()
    failures = fault_checks.check(stack.env, model, rc, night.seen)
    if case.expect and case.expect not in seen:  # else the case passes without its fault having happened
        failures.insert(0, f"the fault did not happen: the faulted night's log never says {case.expect!r}")
    return {
        "case": case.name,
        "faulted_exit": faulted,
        "next_exit": rc,
        "seconds": round(time.time() - t0, 1),
        "survived": not failures,
        "failures": failures,
    }


def write_results(path: Path, results: list[dict], peak: float) -> None:
    survived = sum(r["survived"] for r in results)
    doc = {"results": results, "survived": survived, "of": len(results), "matmul_gflops": round(peak)}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME", help="these cases (default: all)")
    p.add_argument("--quick", action="store_true", help=f"CI's subset: {', '.join(QUICK)}")
    p.add_argument("--list", action="store_true", help="print the cases and stop")
    p.add_argument("--home", type=Path, help="the stack's home (default: a new temporary folder)")
    p.add_argument("--base-port", type=int, default=6300)
    p.add_argument("--json", type=Path, help="write the results here")
    a = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="vae-faults-")) if a.home is None else a.home.resolve()
    if a.home is None:  # mkdtemp's 0700 would shut out PostgreSQL, which runs as the `postgres` user under root
        root.chmod(0o755)
    space = root / "diverge.toml"
    todo = cases(space)
    names = [c.name for c in todo]
    wanted = list(QUICK) if a.quick else (a.only or names)
    if unknown := sorted(set(wanted) - set(names)):
        p.error(f"unknown case(s) {', '.join(unknown)}: expected some of {', '.join(names)}")
    if a.list:
        print("\n".join(names))
        return 0
    (root / "cases").mkdir(parents=True, exist_ok=True)
    # The largest learning rate a config accepts (10) on batches of 8 turns the loss NaN within the first epoch
    # (a real divergence, not a planted NaN; lr = 50 is refused as bad input since the config checks its range).
    # The night's second trial draws it, after the seed recipe.
    space.write_text('model = "vae"\nlr = 10.0\nbatch_size = 8\n')
    peak = matmul_peak()  # the machine's speed beside the cases' seconds (2 cores AVX2 and AVX-512 differ ~3x)
    print(f"faults: stack and cases under {root}; float32 matmul peak {peak:.0f} GFLOP/s", flush=True)
    # SIGTERM (a CI timeout, a kill) ends the matrix through its finally: no held night or stack left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack = Stack(root / "stack", a.base_port)
    results = []
    try:
        for case in (c for c in todo if c.name in wanted):
            result = run_case(stack, case, root / "cases")
            results.append(result)
            if a.json:  # after each case: a matrix stopped half-way keeps what it found
                write_results(a.json, results, peak)
            why = "" if result["survived"] else ": " + "; ".join(result["failures"])
            print(
                f"{case.name}: {'survived' if result['survived'] else 'LOST'} ({result.get('seconds')} s){why}",
                flush=True,
            )
    finally:
        for night in LIVE:
            if night.proc.poll() is None:
                night.kill()
        stack.stop()
    survived = sum(r["survived"] for r in results)
    print(f"faults: {survived} of {len(results)} survived")
    return 0 if survived == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
