#!/usr/bin/env python3
"""A small hark client on the stock `grpcio` package.

    python3 hark_client.py status
    python3 hark_client.py subscribe [--kinds vad,transcript] [--count N] [--duration S]
    python3 hark_client.py transcribe FILE [--language en] [--json]

`--target` takes `unix:PATH` or `HOST:PORT` (default: the daemon's default socket, as in
`hark --addr`). The Python code for hark.proto is generated on first use with grpcio-tools into a
cache directory, so nothing generated is checked in.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# Where the daemon is


def default_socket_path() -> str:
    """The daemon's default socket (src/config.rs `default_socket_path`)."""
    if os.environ.get("HARK_SOCKET"):
        return os.environ["HARK_SOCKET"]
    if os.getuid() == 0:
        return "/run/harkd/harkd.sock"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "hark", "harkd.sock")
    # Rust's std::env::temp_dir(): $TMPDIR, else /tmp.
    tmp = os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(tmp, f"hark-{os.getuid()}", "harkd.sock")


def default_target() -> str:
    return "unix:" + default_socket_path()


# ---------------------------------------------------------------------------------------------
# Stubs generated from hark.proto at run time


def find_proto(explicit: str | None) -> Path:
    """hark.proto: --proto, $HARK_PROTO, else the repository's proto/ (examples/python/../../)."""
    candidates = [explicit, os.environ.get("HARK_PROTO"), HERE.parent.parent / "proto/hark/v1/hark.proto"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c).resolve()
    sys.exit("hark_client: cannot find hark.proto; pass --proto PATH or set HARK_PROTO")


def load_stubs(proto: Path):
    """Returns (hark_pb2, hark_pb2_grpc), generating them once per proto content."""
    from grpc_tools import protoc  # grpcio-tools

    # hark.proto declares `package hark.v1`, so it must be compiled from the directory two levels
    # up (proto/) as hark/v1/hark.proto for the generated imports to line up.
    root = proto.parent.parent.parent
    rel = proto.relative_to(root)
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()[:16]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    out = Path(cache_home) / "hark-python" / digest
    if not (out / "hark/v1/hark_pb2_grpc.py").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        # Generate into a private directory and rename it into place, so concurrent runs never
        # see half-written files.
        tmp = Path(tempfile.mkdtemp(prefix=digest + ".", dir=out.parent))
        well_known = Path(protoc.__file__).parent / "_proto"
        rc = protoc.main(["grpc_tools.protoc", f"-I{root}", f"-I{well_known}",
                          f"--python_out={tmp}", f"--grpc_python_out={tmp}", str(rel)])
        if rc != 0:
            sys.exit(f"hark_client: protoc failed on {proto} (exit {rc})")
        for d in (tmp / "hark", tmp / "hark/v1"):
            (d / "__init__.py").touch()
        try:
            tmp.rename(out)
        except OSError:
            pass  # another run won the race; its copy is identical
    sys.path.insert(0, str(out))
    return (importlib.import_module("hark.v1.hark_pb2"),
            importlib.import_module("hark.v1.hark_pb2_grpc"))


# ---------------------------------------------------------------------------------------------
# Commands


def connect(args):
    options = [
        # Transcribe replies can be large (segments and words); allow up to 64 MiB.
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    if args.authority:
        # Only needed for a harkd that predates its :authority fix: older daemons reset streams
        # whose :authority is a socket path, which is what grpcio sends for unix: targets.
        options.append(("grpc.default_authority", args.authority))
    return grpc.insecure_channel(args.target, options=options)


def to_dict(message) -> dict:
    """A message as a dict with proto field names; unlike protobuf's JSON mapping, 64-bit
    integers stay numbers (as in `hark ... --json`)."""
    from google.protobuf.json_format import MessageToDict

    return _ints64(message.DESCRIPTOR, MessageToDict(message, preserving_proto_field_name=True))


_INT64 = {3, 4, 6, 16, 18}  # FieldDescriptor.TYPE_INT64, UINT64, FIXED64, SFIXED64, SINT64


def _ints64(descriptor, d: dict) -> dict:
    for name, value in d.items():
        fd = descriptor.fields_by_name.get(name)
        if fd is None:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vf = fd.message_type.fields_by_name["value"]
            if vf.type in _INT64:
                d[name] = {k: int(v) for k, v in value.items()}
            elif vf.message_type is not None:
                d[name] = {k: _ints64(vf.message_type, v) for k, v in value.items()}
        elif fd.message_type is not None:
            if isinstance(value, list):
                d[name] = [_ints64(fd.message_type, v) for v in value]
            else:
                d[name] = _ints64(fd.message_type, value)
        elif fd.type in _INT64:
            d[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return d


def event_json(event) -> str:
    """One event as a JSON line, in the shape of `hark subscribe --json`."""
    kind = event.WhichOneof("kind") or "unknown"
    line = {
        "kind": kind,
        "t": event.stream_time_s,
        "sample": event.sample,
        "seq": event.seq,
        "stream": event.stream,
        "wall_us": event.wall_time_unix_us,
    }
    if kind != "unknown":
        line.update(to_dict(getattr(event, kind)))
    return json.dumps(line)


def cmd_subscribe(args, pb2, pb2_grpc) -> int:
    kinds = []
    for name in filter(None, (k.strip() for k in args.kinds.split(","))):
        try:
            kinds.append(pb2.EventKind.Value("EVENT_KIND_" + name.upper()))
        except ValueError:
            valid = [n[len("EVENT_KIND_"):].lower() for n in pb2.EventKind.keys()][1:]
            sys.exit(f"hark_client: unknown kind {name!r}; valid kinds: {', '.join(valid)}")
    with connect(args) as channel:
        stub = pb2_grpc.HarkStub(channel)
        call = stub.Subscribe(pb2.SubscribeRequest(kinds=kinds), timeout=args.duration)
        seen = 0
        try:
            for event in call:
                print(event_json(event), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    call.cancel()
                    break
        except grpc.RpcError as e:
            # --duration ends the call with DEADLINE_EXCEEDED: that is the normal way out.
            if not (args.duration and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        if args.min_events and seen < args.min_events:
            print(f"hark_client: got {seen} events, expected at least {args.min_events}", file=sys.stderr)
            return 1
    return 0


def cmd_transcribe(args, pb2, pb2_grpc) -> int:
    audio = Path(args.file).read_bytes()
    request = pb2.TranscribeRequest(audio=audio, language=args.language or "", task=args.task or "")
    with connect(args) as channel:
        reply = pb2_grpc.HarkStub(channel).Transcribe(request, timeout=args.timeout)
    if args.json:
        print(json.dumps(to_dict(reply)))
    else:
        print(reply.text.strip())
    return 0


def cmd_status(args, pb2, pb2_grpc) -> int:
    with connect(args) as channel:
        status = pb2_grpc.HarkStub(channel).GetStatus(pb2.GetStatusRequest(), timeout=args.timeout)
    print(json.dumps(to_dict(status)))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="hark client (stock grpcio)")
    p.add_argument("--target", default=default_target(),
                   help="unix:PATH or HOST:PORT (default: %(default)s)")
    p.add_argument("--authority", help="set :authority (grpc.default_authority), e.g. localhost; "
                   "only needed with a harkd that refuses socket paths as :authority")
    p.add_argument("--proto", help="hark.proto (default: $HARK_PROTO or the repository's proto/)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for unary calls")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("subscribe", help="print live events as JSON lines")
    s.add_argument("--kinds", default="", help="comma-separated: vad, level, source, transcript, sound")
    s.add_argument("--count", type=int, default=0, help="stop after N events")
    s.add_argument("--duration", type=float, help="stop after S seconds")
    s.add_argument("--min-events", type=int, default=0, help="exit 1 if fewer events arrived")
    s.set_defaults(run=cmd_subscribe)

    t = sub.add_parser("transcribe", help="transcribe an audio file, print the text")
    t.add_argument("file")
    t.add_argument("--language", help='language code, or "auto"')
    t.add_argument("--task", choices=["transcribe", "translate"])
    t.add_argument("--json", action="store_true", help="print the whole response as JSON")
    t.set_defaults(run=cmd_transcribe)

    st = sub.add_parser("status", help="print the daemon's status as JSON")
    st.set_defaults(run=cmd_status)

    args = p.parse_args(argv)
    pb2, pb2_grpc = load_stubs(find_proto(args.proto))
    try:
        return args.run(args, pb2, pb2_grpc)
    except grpc.RpcError as e:
        print(f"hark_client: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
