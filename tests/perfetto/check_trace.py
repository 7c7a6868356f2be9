#!/usr/bin/env python3
"""Reads a Perfetto trace written by `trace-query perfetto` with Perfetto's
own compiled protos (the `perfetto` Python package's perfetto_trace_pb2, see
requirements.txt), checks the rules a trace processor relies on, and prints
what the trace holds as JSON for tests/tests/perfetto.rs to compare with the
capture.

    check_trace.py TRACE > summary.json

Checked (exit 1 with the reason on stderr otherwise):
- the file parses as a `Trace` and every packet is on one packet sequence
  (`trusted_packet_sequence_id`), the first one clearing its incremental
  state (SEQ_INCREMENTAL_STATE_CLEARED), every packet that uses interned
  names saying it needs it (SEQ_NEEDS_INCREMENTAL_STATE);
- every interned name (event name, debug annotation name) an event uses was
  defined in that packet or an earlier one of the sequence, and never
  redefined to another string;
- every event is on a declared track, every parent track is declared;
- on each track, in timestamp order (ties in file order, as the trace
  processor sorts), slice ends match slice begins (never an end with no
  open slice) and no slice is left open.

Output: {"tracks": [{uuid, name, parent, description, rank}],
         "events": [{track, ts, type: "instant"|"begin"|"end", name, args}],
         "slices": [{track, name, begin, end, depth, args}]}
"""

import json
import sys

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

TYPES = {
    pb.TrackEvent.TYPE_INSTANT: "instant",
    pb.TrackEvent.TYPE_SLICE_BEGIN: "begin",
    pb.TrackEvent.TYPE_SLICE_END: "end",
}


def fail(msg):
    print(f"check_trace.py: {msg}", file=sys.stderr)
    sys.exit(1)


def annotation_value(a):
    kind = a.WhichOneof("value")
    if kind is None:
        fail(f"debug annotation without a value: {a}")
    return getattr(a, kind)


def main(path):
    trace = pb.Trace()
    with open(path, "rb") as f:
        trace.ParseFromString(f.read())
    if not trace.packet:
        fail("no packets")

    tracks = {}
    event_names = {}
    annotation_names = {}
    events = []
    sequence = None
    for i, p in enumerate(trace.packet):
        if not p.HasField("trusted_packet_sequence_id"):
            fail(f"packet {i} has no trusted_packet_sequence_id")
        if sequence is None:
            sequence = p.trusted_packet_sequence_id
            if not p.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED:
                fail("the first packet does not clear the incremental state")
        elif p.trusted_packet_sequence_id != sequence:
            fail(f"packet {i} is on sequence {p.trusted_packet_sequence_id}, not {sequence}")
        elif p.sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED:
            fail(f"packet {i} clears the incremental state again")

        for table, entries in (
            (event_names, p.interned_data.event_names),
            (annotation_names, p.interned_data.debug_annotation_names),
        ):
            for e in entries:
                if table.get(e.iid, e.name) != e.name:
                    fail(f"packet {i} redefines iid {e.iid} as {e.name!r}")
                table[e.iid] = e.name

        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            if d.uuid in tracks:
                fail(f"track {d.uuid} declared twice")
            tracks[d.uuid] = {
                "uuid": d.uuid,
                "name": d.name,
                "parent": d.parent_uuid if d.HasField("parent_uuid") else None,
                "description": d.description,
                "rank": d.sibling_order_rank if d.HasField("sibling_order_rank") else None,
            }
        if p.HasField("track_event"):
            e = p.track_event
            uses_interning = e.HasField("name_iid") or len(e.debug_annotations) > 0
            if uses_interning and not p.sequence_flags & (
                pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
                | pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            ):
                fail(f"packet {i} uses interned names without SEQ_NEEDS_INCREMENTAL_STATE")
            if e.type not in TYPES:
                fail(f"packet {i}: unexpected event type {e.type}")
            if not p.HasField("timestamp"):
                fail(f"packet {i}: event without a timestamp")
            name = None
            if e.HasField("name_iid"):
                if e.name_iid not in event_names:
                    fail(f"packet {i}: event name iid {e.name_iid} was never interned")
                name = event_names[e.name_iid]
            elif e.HasField("name"):
                name = e.name
            args = {}
            for a in e.debug_annotations:
                if a.name_iid not in annotation_names:
                    fail(f"packet {i}: annotation name iid {a.name_iid} was never interned")
                args[annotation_names[a.name_iid]] = annotation_value(a)
            events.append({
                "track": e.track_uuid,
                "ts": p.timestamp,
                "type": TYPES[e.type],
                "name": name,
                "args": args,
            })

    for t in tracks.values():
        if t["parent"] is not None and t["parent"] not in tracks:
            fail(f"track {t['name']!r} has an undeclared parent {t['parent']}")
    for e in events:
        if e["track"] not in tracks:
            fail(f"event {e} is on an undeclared track")
        if e["type"] in ("instant", "begin") and e["name"] is None:
            fail(f"event {e} has no name")

    # Slices per track, as the trace processor builds them: events in
    # timestamp order (stable), an end closing the innermost open slice.
    slices = []
    open_slices = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        stack = open_slices.setdefault(e["track"], [])
        if e["type"] == "begin":
            stack.append({
                "track": e["track"], "name": e["name"], "begin": e["ts"],
                "end": None, "depth": len(stack), "args": e["args"],
            })
        elif e["type"] == "end":
            if not stack:
                fail(f"slice end at {e['ts']} on track {tracks[e['track']]['name']!r} with no open slice")
            s = stack.pop()
            s["end"] = e["ts"]
            slices.append(s)
    for track, stack in open_slices.items():
        if stack:
            fail(f"{len(stack)} slices left open on track {tracks[track]['name']!r}")
    slices.sort(key=lambda s: (s["track"], s["begin"], s["depth"]))

    json.dump({
        "tracks": sorted(tracks.values(), key=lambda t: t["uuid"]),
        "events": events,
        "slices": slices,
    }, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: check_trace.py TRACE")
    main(sys.argv[1])
