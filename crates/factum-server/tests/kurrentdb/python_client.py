"""KurrentDB's official Python client (PyPI `kurrentdbclient`), unchanged, against `factum serve`.

Run by tests/kurrentdb_python.rs in a virtual environment it makes:

    python python_client.py plain <port>
    python python_client.py secure <port> <ca.pem>

`plain`: a server without tokens, reached over HTTP/2 without TLS. `secure`: a server with TLS
and the tokens of the Rust test (the Python client sends credentials only over TLS). Each
operation is checked, and each of the client's typed exceptions where KurrentDB raises it.
Prints "ok" and exits 0 when everything holds.
"""

import faulthandler
import json
import os
import sys
import threading
import time
import uuid

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import (
    AccessDeniedError,
    AlreadyExistsError,
    FailedPreconditionError,
    GrpcError,
    KurrentDBClientError,
    NotFoundError,
    StreamIsDeletedError,
    UnauthenticatedError,
    WrongCurrentVersionError,
)


def event(kind, n):
    return NewEvent(type=kind, data=json.dumps({"n": n}).encode())


def numbers(events):
    return [json.loads(e.data)["n"] for e in events]


def raises(kind, call):
    try:
        call()
    except kind as error:
        return error
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"expected {kind.__name__}, got {type(error).__name__}: {error}")
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


def streams(client):
    # One event per call (Append) and several (BatchAppend), every expected version.
    name = f"order-{uuid.uuid4().hex[:8]}"
    commit = client.append_to_stream(name, events=event("Placed", 0), current_version=StreamState.NO_STREAM)
    assert commit > 0, commit
    client.append_to_stream(name, events=[event("Paid", 1), event("Paid", 2)], current_version=0)
    assert client.get_current_version(name) == 2
    error = raises(WrongCurrentVersionError, lambda: client.append_to_stream(
        name, events=event("Placed", 9), current_version=StreamState.NO_STREAM))
    assert error.actual_version == 2, error.actual_version
    raises(WrongCurrentVersionError, lambda: client.append_to_stream(
        name, events=[event("Placed", 9), event("Placed", 9)], current_version=5))
    raises(WrongCurrentVersionError, lambda: client.append_to_stream(
        f"order-none-{uuid.uuid4().hex[:6]}", events=event("Placed", 9), current_version=StreamState.EXISTS))
    raises(WrongCurrentVersionError, lambda: client.append_to_stream(
        f"order-none-{uuid.uuid4().hex[:6]}", events=[event("P", 9), event("P", 9)], current_version=0))
    client.append_to_stream(name, events=event("Shipped", 3), current_version=StreamState.EXISTS)
    client.append_to_stream(name, events=event("Shipped", 4), current_version=StreamState.ANY)
    assert client.get_current_version(name) == 4

    # Reads of a stream, as recorded, both ways, from a position, with limits.
    read = client.get_stream(name)
    assert numbers(read) == [0, 1, 2, 3, 4], numbers(read)
    assert [e.stream_position for e in read] == [0, 1, 2, 3, 4]
    assert all(e.stream_name == name and e.content_type == "application/json" for e in read)
    assert read[0].recorded_at is not None and abs(read[0].recorded_at.timestamp() - time.time()) < 60
    assert read[0].commit_position == commit, (read[0].commit_position, commit)
    assert read[0].commit_position == read[0].prepare_position
    assert numbers(client.get_stream(name, backwards=True, limit=2)) == [4, 3]
    assert numbers(client.get_stream(name, stream_position=2, limit=2)) == [2, 3]
    assert numbers(client.get_stream(name, stream_position=1, backwards=True)) == [1, 0]
    raises(NotFoundError, lambda: client.get_stream(f"order-404-{uuid.uuid4().hex[:6]}"))
    assert client.get_current_version(f"order-404-{uuid.uuid4().hex[:6]}") is StreamState.NO_STREAM
    return name


def all_reads(client):
    tag = uuid.uuid4().hex[:6]
    for n in range(6):
        stream = f"acct{tag}-a" if n % 2 == 0 else f"inv{tag}-b"
        client.append_to_stream(stream, events=event("Opened" if n % 3 == 0 else "Noted", n),
                                current_version=StreamState.ANY)
    mine = [e for e in client.read_all() if tag in e.stream_name]
    assert numbers(mine) == [0, 1, 2, 3, 4, 5], numbers(mine)
    # The default filter leaves out system events with a regular expression with look-ahead.
    assert all(not e.type.startswith("$") for e in client.read_all())
    last = list(client.read_all(backwards=True, limit=2))
    assert numbers(last) == [5, 4], numbers(last)
    third = mine[2].commit_position
    assert numbers(list(client.read_all(commit_position=third, limit=2))) == [2, 3]
    assert numbers(list(client.read_all(commit_position=third, backwards=True, limit=2))) == [1, 0]
    by_stream = list(client.read_all(filter_include=[f"inv{tag}-.*"], filter_by_stream_name=True))
    assert numbers(by_stream) == [1, 3, 5], numbers(by_stream)
    by_prefix = list(client.read_all(filter_include=[f"acct{tag}"], filter_by_stream_name=True,
                                     filter_by_prefix=True))
    assert numbers(by_prefix) == [0, 2, 4], numbers(by_prefix)
    opened = [e for e in client.read_all(filter_include=["Opened"]) if tag in e.stream_name]
    assert numbers(opened) == [0, 3], numbers(opened)


def subscriptions(client):
    tag = uuid.uuid4().hex[:6]
    stream = f"live{tag}-1"
    before, during = 200, 400
    client.append_to_stream(stream, events=[event("Tick", n) for n in range(before)],
                            current_version=StreamState.NO_STREAM)
    start = client.get_commit_position()
    subscription = client.subscribe_to_all(
        filter_include=[f"live{tag}-.*"], filter_by_stream_name=True,
        include_checkpoints=True, include_caught_up=True, window_size=8,
        checkpoint_interval_multiplier=1, timeout=60)
    follower = client.subscribe_to_stream(stream, include_caught_up=True, timeout=60)

    def write():
        for n in range(before, before + during):
            client.append_to_stream(stream, events=event("Tick", n), current_version=StreamState.ANY)
            client.append_to_stream(f"noise{tag}", events=event("Tock", n), current_version=StreamState.ANY)

    writer = threading.Thread(target=write)
    writer.start()
    total = before + during
    seen, checkpoints, caught_up = [], 0, False
    for message in subscription:
        if message.is_checkpoint:
            checkpoints += 1
            continue
        if message.is_caught_up:
            caught_up = True
            if len(seen) == total:
                break
            continue
        assert message.stream_name == stream, message.stream_name
        seen.append(message.stream_position)
        if len(seen) == total and caught_up:
            break
        if len(seen) == total:
            writer.join()
    subscription.stop()
    assert seen == list(range(total)), "no gap, no duplicate"
    assert checkpoints > 0, "checkpoints while filtering"
    assert caught_up, "caught up once live"
    followed = []
    for message in follower:
        if message.is_caught_up:
            continue
        followed.append(message.stream_position)
        if len(followed) == total:
            break
    follower.stop()
    assert followed == list(range(total))
    writer.join()
    # A subscription from a commit position starts after it.
    resumed = client.subscribe_to_all(commit_position=start, filter_include=[f"live{tag}-.*"],
                                      filter_by_stream_name=True)
    first = next(iter(resumed))
    resumed.stop()
    assert first.stream_position == before, first.stream_position


def deletes_and_metadata(client):
    tag = uuid.uuid4().hex[:6]
    name = f"gone{tag}"
    client.append_to_stream(name, events=[event("Made", n) for n in range(3)], current_version=StreamState.NO_STREAM)
    error = raises(WrongCurrentVersionError, lambda: client.delete_stream(name, current_version=1))
    assert error.actual_version == 2, error.actual_version
    raises(NotFoundError, lambda: client.delete_stream(f"never{tag}", current_version=0))
    client.delete_stream(name, current_version=2)
    raises(NotFoundError, lambda: client.get_stream(name))
    metadata, _ = client.get_stream_metadata(name)
    assert metadata.get("$tb") == 2**63 - 1, metadata
    client.append_to_stream(name, events=event("Made", 3), current_version=StreamState.NO_STREAM)
    assert [e.stream_position for e in client.get_stream(name)] == [3]
    metadata, _ = client.get_stream_metadata(name)
    assert metadata.get("$tb") == 3, metadata
    client.tombstone_stream(name, current_version=StreamState.ANY)
    raises(StreamIsDeletedError, lambda: client.get_stream(name))
    raises(StreamIsDeletedError, lambda: client.get_current_version(name))
    raises(StreamIsDeletedError, lambda: client.tombstone_stream(name, current_version=StreamState.ANY))
    raises(StreamIsDeletedError, lambda: client.append_to_stream(
        name, events=[event("Made", 9), event("Made", 10)], current_version=StreamState.ANY))
    # One event goes by Append, whose status this client does not type: the node's message.
    error = raises(FailedPreconditionError, lambda: client.append_to_stream(
        name, events=event("Made", 9), current_version=StreamState.ANY))
    assert "is deleted" in str(error), error

    # Metadata the client sets, Factum enforces.
    meta = f"meta{tag}"
    client.append_to_stream(meta, events=[event("Made", n) for n in range(5)], current_version=StreamState.NO_STREAM)
    assert client.get_stream_metadata(meta) == ({}, StreamState.NO_STREAM)
    wanted = {"$maxCount": 2, "$maxAge": 3600, "$acl": {"$r": "$all"}, "owner": "billing"}
    client.set_stream_metadata(meta, metadata=wanted, current_version=StreamState.NO_STREAM)
    assert numbers(client.get_stream(meta)) == [3, 4], "$maxCount 2 is enforced"
    read_back, version = client.get_stream_metadata(meta)
    assert read_back == wanted, read_back
    raises(WrongCurrentVersionError, lambda: client.set_stream_metadata(
        meta, metadata={"$maxCount": 1}, current_version=StreamState.NO_STREAM))
    client.set_stream_metadata(meta, metadata={"$maxCount": 1}, current_version=version)
    assert numbers(client.get_stream(meta)) == [4]


def bad_input(client):
    # A stream a user may not write, and an event type too long: refused, nothing written.
    for stream, kind in [("$system", "Made"), ("fine-1", "T" * 300)]:
        try:
            client.append_to_stream(stream, events=event(kind, 0), current_version=StreamState.ANY)
        except KurrentDBClientError as error:
            assert "INVALID_ARGUMENT" in str(error) or "invalid" in str(error).lower(), error
        else:
            raise AssertionError(f"an append to {stream!r} of {kind[:10]!r} was accepted")
    raises(NotFoundError, lambda: client.get_stream("fine-1"))


def take(subscription, n, handle):
    """Reads n events from a persistent subscription, handing each to handle(event)."""
    got = []
    for recorded in subscription:
        got.append((json.loads(recorded.data)["n"], recorded.retry_count))
        handle(recorded)
        if len(got) == n:
            return got
    raise AssertionError(f"the subscription ended after {got}")


def wait_for(what, check):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within 10 s: {what}")


def persistent(client):
    # A group on a stream: acks, a nack to park, a nack to retry, info, replay, list, delete.
    name = f"invoice-{uuid.uuid4().hex[:8]}"
    client.append_to_stream(name, events=[event("Issued", n) for n in range(5)], current_version=StreamState.NO_STREAM)
    client.create_subscription_to_stream(
        "mailer", name, consumer_strategy="RoundRobin", message_timeout=2.0, max_retry_count=2,
        checkpoint_after=0.05, min_checkpoint_count=1)
    raises(AlreadyExistsError, lambda: client.create_subscription_to_stream("mailer", name))
    subscription = client.read_subscription_to_stream("mailer", name, max_ack_delay=0.05)

    def handle(recorded):
        n = json.loads(recorded.data)["n"]
        if n == 1:
            subscription.nack(recorded, action="park")
        elif n == 3 and recorded.retry_count == 0:
            subscription.nack(recorded, action="retry")
        else:
            subscription.ack(recorded)

    got = take(subscription, 6, handle)
    assert sorted(got) == [(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (4, 0)], got
    wait_for("the parked message counted", lambda: client.get_subscription_info("mailer", name).parked_message_count == 1)
    info = client.get_subscription_info("mailer", name)
    assert (info.group_name, info.event_source, info.max_retry_count) == ("mailer", name, 2), info
    assert info.consumer_strategy == "RoundRobin", info
    wait_for("the checkpoint past every settled message",
             lambda: client.get_subscription_info("mailer", name).last_checkpointed_event_position == "4")
    client.replay_parked_events("mailer", name)
    again = take(subscription, 1, lambda recorded: subscription.ack(recorded))
    assert again == [(1, 0)], again
    wait_for("nothing parked after the replay", lambda: client.get_subscription_info("mailer", name).parked_message_count == 0)
    assert [i.group_name for i in client.list_subscriptions_to_stream(name)] == ["mailer"]
    subscription.stop()
    client.update_subscription_to_stream("mailer", name, max_retry_count=4)
    assert client.get_subscription_info("mailer", name).max_retry_count == 4

    # A group on $all, filtered by a regular expression on stream names.
    receipts = f"receipt{uuid.uuid4().hex[:8]}"
    client.append_to_stream(f"{receipts}-1", events=[event("Printed", 0), event("Printed", 1)], current_version=StreamState.NO_STREAM)
    client.create_subscription_to_all(
        "receipts", filter_include=[f"{receipts}-.*"], filter_by_stream_name=True,
        checkpoint_after=0.05, min_checkpoint_count=1)
    on_all = client.read_subscription_to_all("receipts", max_ack_delay=0.05)
    assert take(on_all, 2, lambda recorded: on_all.ack(recorded)) == [(0, 0), (1, 0)]
    on_all.stop()
    groups = sorted(i.group_name for i in client.list_subscriptions())
    assert "mailer" in groups and "receipts" in groups, groups
    assert client.get_subscription_info("receipts").event_source == "$all"

    client.delete_subscription("mailer", name)
    client.delete_subscription("receipts")
    raises(NotFoundError, lambda: client.get_subscription_info("mailer", name))
    raises(NotFoundError, lambda: client.delete_subscription("mailer", name))
    assert client.list_subscriptions_to_stream(name) == []


def plain(port):
    client = KurrentDBClient(uri=f"kdb://localhost:{port}?Tls=false")
    streams(client)
    all_reads(client)
    subscriptions(client)
    deletes_and_metadata(client)
    bad_input(client)
    persistent(client)
    client.close()
    # With discovery the client asks gossip for the leader, and connects to it.
    discovering = KurrentDBClient(uri=f"kdb+discover://localhost:{port}?Tls=false")
    members = discovering.read_gossip()
    assert [(m.state, m.port) for m in members] == [("NODE_STATE_LEADER", port)], members
    assert discovering.get_current_version(f"order-404-{uuid.uuid4().hex[:6]}") is StreamState.NO_STREAM
    discovering.close()


def secure(port, ca):
    with open(ca) as f:
        pem = f.read()
    def connect(credentials):
        return KurrentDBClient(uri=f"kdb://{credentials}localhost:{port}?Tls=true", root_certificates=pem)
    orders = connect("orders:orders-0123456789@")
    name = f"order-{uuid.uuid4().hex[:8]}"
    orders.append_to_stream(name, events=[event("Placed", 0), event("Paid", 1)], current_version=StreamState.NO_STREAM)
    assert numbers(orders.get_stream(name)) == [0, 1]
    raises(AccessDeniedError, lambda: orders.append_to_stream("cart-1", events=event("Added", 0), current_version=StreamState.ANY))
    raises(AccessDeniedError, lambda: list(orders.read_all(filter_exclude=())))
    reader = connect("reader:reader-0123456789@")
    raises(AccessDeniedError, lambda: reader.append_to_stream(name, events=event("Placed", 2), current_version=StreamState.ANY))
    assert numbers(reader.get_stream(name)) == [0, 1]
    wrong = connect("orders:not-the-secret-000@")
    raises(UnauthenticatedError, lambda: wrong.get_stream(name))
    raises(UnauthenticatedError, lambda: wrong.append_to_stream(name, events=event("Placed", 2), current_version=StreamState.ANY))
    # (This client will not connect over TLS without credentials; the Rust test covers that.)
    assert orders.get_current_version(name) == 1, "nothing more was written"
    for client in [orders, reader, wrong]:
        client.close()


if __name__ == "__main__":
    # A check that hangs shows where, well before the test gives up on it.
    faulthandler.dump_traceback_later(150, exit=True)
    mode, port = sys.argv[1], int(sys.argv[2])
    try:
        if mode == "plain":
            plain(port)
        else:
            secure(port, sys.argv[3])
    except GrpcError as error:
        print(f"gRPC error: {error}", file=sys.stderr)
        raise
    print("ok", flush=True)
    # Every check is done. grpcio can hang at interpreter exit while collecting a call object
    # whose lock a finished daemon thread held (seen about once in six runs, after "ok"), so
    # leave without the interpreter's teardown.
    sys.stderr.flush()
    os._exit(0)
