#!/usr/bin/env python3
"""Checks hark_client.py against a running harkd with the stock grpcio package.

    python3 test_client.py SOCKET WAV [--expect WORD] [--min-events N] [--duration S]

Runs `subscribe --duration S` in the background (every line a JSON event; at least N of them),
then `status` and `transcribe WAV` (non-empty text, containing WORD if given), each as its own
process with a timeout, and exits non-zero if any fails. No channel options are set unless
`--authority` is given: the point is that a stock client works on the daemon's Unix socket.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent / "hark_client.py"


def run(base: list[str], args: list[str], timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(CLIENT), *base, *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, 124, e.stdout or "", f"timed out after {timeout} s")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("socket", help="harkd's Unix socket (or unix:PATH / HOST:PORT)")
    p.add_argument("wav", help="audio file to transcribe")
    p.add_argument("--expect", help="a word the transcript must contain (case-insensitive)")
    p.add_argument("--min-events", type=int, default=0)
    p.add_argument("--duration", type=float, default=3.0, help="seconds to subscribe")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per step")
    p.add_argument("--authority", help="pass --authority to the client (old daemons)")
    p.add_argument("--proto", help="hark.proto, if not in the repository next to this file")
    a = p.parse_args()

    if a.socket.startswith("unix:") or ("/" not in a.socket and ":" in a.socket):
        target = a.socket  # unix:PATH or HOST:PORT
    else:
        target = "unix:" + a.socket
    base = ["--target", target]
    if a.authority:
        base += ["--authority", a.authority]
    if a.proto:
        base += ["--proto", a.proto]

    results = []

    def check(name: str, ok: bool, proc: subprocess.CompletedProcess, why: str = ""):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {why}"))
        if not ok:
            print(f"  exit {proc.returncode}\n  stdout: {proc.stdout[-2000:]!r}\n  stderr: {proc.stderr[-2000:]!r}")

    # Subscribe first and in the background, so a daemon whose source is a short file still has
    # events to send while status and transcribe run.
    sub_cmd = [sys.executable, str(CLIENT), *base, "subscribe", "--duration", str(a.duration),
               "--min-events", str(a.min_events)]
    sub = subprocess.Popen(sub_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    r = run(base, ["status"], a.timeout)
    try:
        ok = r.returncode == 0 and "version" in json.loads(r.stdout)
    except ValueError:
        ok = False
    check("status", ok, r, "no JSON status with a version")

    r = run(base, ["transcribe", a.wav], a.timeout)
    text = r.stdout.strip()
    ok = r.returncode == 0 and bool(text) and (not a.expect or a.expect.lower() in text.lower())
    check("transcribe", ok, r, f"text {text!r}" + (f" lacks {a.expect!r}" if a.expect else ""))
    if ok:
        print(f"  text: {text}")

    try:
        out, err = sub.communicate(timeout=a.duration + a.timeout)
    except subprocess.TimeoutExpired:
        sub.kill()
        out, err = sub.communicate()
        err += "\ntimed out"
    r = subprocess.CompletedProcess(sub_cmd, sub.returncode, out, err)
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    try:
        events = [json.loads(line) for line in lines]
        ok = r.returncode == 0 and all("kind" in e for e in events)
    except ValueError:
        events, ok = [], False
    check("subscribe", ok, r, "exit status or output")
    if ok:
        kinds = sorted({e["kind"] for e in events})
        print(f"  {len(events)} events: {', '.join(kinds) or '-'}")

    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
