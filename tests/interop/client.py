"""A push backend written in Python, for the interoperability test (tests/tests/e2e/interop.rs).

It talks to a real hexcast push server with stubs generated from proto/ by grpcio-tools:
checks authentication and validation errors, upserts subscriptions (Upsert and the
BulkUpsert client stream), reads one back, then subscribes, disconnects in the middle of a
notification record, and resumes from its last cursor. The Rust side publishes incidents
between the steps and checks what this client received, and the labels a backend hands to
APNs/FCM (expiry, collapse key, idempotency keys, part and piece labels).

Protocol: one JSON object per line on stdout (events), one word per line on stdin (go
signals from the test). Any failed check raises, which exits non-zero.
"""

import argparse
import json
import queue
import sys
import threading
import time

import grpc

from hexcast.v1 import geo_pb2, services_pb2, services_pb2_grpc, subscription_pb2


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def wait_for(word):
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"client.py: expected {word!r} on stdin, got {line!r}")


def auth(token):
    return (("authorization", f"Bearer {token}"),)


def expect_error(code, fn, field=None):
    try:
        fn()
    except grpc.RpcError as e:
        if e.code() != code:
            raise AssertionError(f"expected {code}, got {e.code()}: {e.details()}") from e
        if field is not None and field not in (e.details() or ""):
            raise AssertionError(f"error does not name {field!r}: {e.details()!r}") from e
        return e.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def subscription(sub):
    return subscription_pb2.Subscription(
        subscriber_id=sub["id"],
        areas=[geo_pb2.Area(point=geo_pb2.LatLng(lat=sub["lat"], lng=sub["lng"]))],
        delivery=subscription_pb2.DeliveryPreferences(languages=sub.get("languages", [])),
    )


class Stream:
    """A Subscribe call read by a thread into a queue, so reads can time out."""

    def __init__(self, stub, token, **request):
        self.call = stub.Subscribe(services_pb2.SubscribeRequest(**request), metadata=auth(token))
        self.queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        try:
            for batch in self.call:
                self.queue.put(batch)
            self.queue.put(("end", None))
        except grpc.RpcError as e:
            self.queue.put(("error", e))

    def next(self, timeout):
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, tuple):
            kind, err = item
            if kind == "error" and err.code() == grpc.StatusCode.CANCELLED:
                return None
            raise AssertionError(f"stream ended unexpectedly: {kind} {err}")
        return item

    def cancel(self):
        self.call.cancel()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--other-token", required=True)
    p.add_argument("--subs", required=True, help="JSON file: [{id, lat, lng}]")
    p.add_argument("--expect", type=int, required=True, help="(alert, subscriber) pairs to receive")
    p.add_argument("--max-batch-ids", type=int, default=3)
    p.add_argument("--disconnect-after", type=int, default=5, help="batches before disconnecting")
    p.add_argument("--timeout-secs", type=float, default=120.0)
    args = p.parse_args()

    with open(args.subs) as f:
        subs = json.load(f)
    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    subs_stub = services_pb2_grpc.SubscriptionsStub(channel)
    push_stub = services_pb2_grpc.PushStub(channel)
    first = services_pb2.UpsertRequest(subscription=subscription(subs[0]))

    # Authentication and validation, as any client sees them.
    expect_error(grpc.StatusCode.UNAUTHENTICATED, lambda: subs_stub.Upsert(first))
    expect_error(grpc.StatusCode.UNAUTHENTICATED, lambda: subs_stub.Upsert(first, metadata=auth("not-a-token-0123456789")))
    bad = services_pb2.UpsertRequest(
        subscription=subscription_pb2.Subscription(
            subscriber_id="bad", areas=[geo_pb2.Area(point=geo_pb2.LatLng(lat=123.0, lng=0.0))]
        )
    )
    detail = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: subs_stub.Upsert(bad, metadata=auth(args.token)), "subscription.areas[0]"
    )
    emit("checked", invalid_detail=detail)

    # A few one by one, the rest on the client stream.
    single = subs[:5]
    for s in single:
        resp = subs_stub.Upsert(services_pb2.UpsertRequest(subscription=subscription(s)), metadata=auth(args.token))
        assert resp.subscription.subscriber_id == s["id"], resp
        assert resp.subscription.areas and resp.subscription.areas[0].WhichOneof("shape") == "cell_disc", resp
    bulk = subs_stub.BulkUpsert(
        (services_pb2.UpsertRequest(subscription=subscription(s)) for s in subs[5:]), metadata=auth(args.token)
    )
    assert bulk.upserted == len(subs) - len(single), bulk

    # Get reads the index, which follows the topic: poll until it is there.
    deadline = time.monotonic() + 30
    while True:
        try:
            got = subs_stub.Get(services_pb2.GetRequest(subscriber_id=subs[-1]["id"]), metadata=auth(args.token))
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert got.subscriber_id == subs[-1]["id"] and got.areas[0].WhichOneof("shape") == "cell_disc", got
    # Another tenant cannot read it.
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: subs_stub.Get(services_pb2.GetRequest(subscriber_id=subs[-1]["id"]), metadata=auth(args.other_token)),
    )
    emit("upserted", count=len(subs))

    received = []  # (alert id, subscriber id), in arrival order, duplicates kept
    batches = []
    texts = {}  # subscriber id -> [language, headline] of the last batch that named it
    labels = []  # what a backend hands to APNs/FCM, per streamed batch

    def take(batch):
        assert batch.tenant, batch
        assert len(batch.subscriber_ids) <= args.max_batch_ids, batch
        assert batch.cursor, batch
        assert len(batch.idempotency_keys) == len(batch.subscriber_ids), batch
        batches.append(batch.cursor)
        assert batch.language == (batch.alert.language or "en"), batch
        labels.append(
            {
                "alert": batch.alert.alert_id,
                "expires_at_ms": batch.expires_at_ms,
                "expired": batch.expired,
                "collapse_key": batch.collapse_key,
                "part": batch.part,
                "parts": batch.parts,
                "piece": batch.piece,
                "pieces": batch.pieces,
                "language": batch.language,
                "deferred_from_ms": batch.deferred_from_ms,
                "idempotency_keys": list(batch.idempotency_keys),
            }
        )
        for sid in batch.subscriber_ids:
            received.append((batch.alert.alert_id, sid))
            texts[sid] = [batch.language, batch.alert.headline]

    # First connection: from the beginning, drop the connection after a few batches.
    wait_for("phase1")
    stream = Stream(push_stub, args.token, from_beginning=True, max_batch_ids=args.max_batch_ids)
    deadline = time.monotonic() + args.timeout_secs
    while len(batches) < args.disconnect_after:
        batch = stream.next(max(0.1, deadline - time.monotonic()))
        if batch is None:
            raise AssertionError(f"only {len(batches)} batches before the deadline")
        take(batch)
    stream.cancel()
    cursor = batches[-1]
    emit("disconnected", cursor=cursor, received=len(received))

    # Second connection: resume from the last cursor while more notifications arrive.
    wait_for("phase2")
    stream = Stream(push_stub, args.token, cursor=cursor, max_batch_ids=args.max_batch_ids)
    deadline = time.monotonic() + args.timeout_secs
    while len(received) < args.expect:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"received {len(received)} of {args.expect} pairs before the deadline")
        batch = stream.next(left)
        if batch is not None:
            take(batch)
    # Anything beyond the expected count would be a duplicate or a stray: wait for it.
    while True:
        batch = stream.next(3.0)
        if batch is None:
            break
        take(batch)
    stream.cancel()
    emit("done", pairs=received, batches=len(batches), texts=texts, labels=labels)
    channel.close()


if __name__ == "__main__":
    main()
