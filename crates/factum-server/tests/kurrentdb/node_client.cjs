// KurrentDB's official Node client (npm `@kurrent/kurrentdb-client`), unchanged, against
// `factum serve`: a smoke test of append, read and subscribe. Run by tests/kurrentdb_node.rs,
// which installs the client and sets NODE_PATH to it:
//
//     node node_client.cjs <port>
//
// Prints "ok" and exits 0 when everything holds. The client appends with BatchAppend (it has
// no credentials here), reads through its bundled Rust bridge and subscribes through grpc-js.

const assert = require("node:assert/strict");
const { randomUUID } = require("node:crypto");
const {
  KurrentDBClient,
  jsonEvent,
  NO_STREAM,
  STREAM_EXISTS,
  ANY,
  FORWARDS,
  BACKWARDS,
  START,
  END,
  WrongExpectedVersionError,
  StreamNotFoundError,
  streamNameFilter,
} = require("@kurrent/kurrentdb-client");

const event = (type, n) => jsonEvent({ type, data: { n } });
const numbers = (events) => events.map((e) => e.event.data.n);

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

async function rejects(kind, call) {
  try {
    await call();
  } catch (error) {
    assert.ok(error instanceof kind, `expected ${kind.name}, got ${error?.constructor?.name}: ${error}`);
    return error;
  }
  assert.fail(`expected ${kind.name}, nothing was thrown`);
}

async function main(port) {
  const client = KurrentDBClient.connectionString(`kurrentdb://localhost:${port}?tls=false`);
  const tag = randomUUID().slice(0, 8);
  const name = `order-${tag}`;

  // Appends: one event, several, every expected state, and the typed refusal.
  const first = await client.appendToStream(name, event("Placed", 0), { streamState: NO_STREAM });
  assert.equal(first.success, true);
  assert.equal(first.nextExpectedRevision, 0n);
  const second = await client.appendToStream(name, [event("Paid", 1), event("Paid", 2)], { streamState: 0n });
  assert.equal(second.nextExpectedRevision, 2n);
  assert.ok(second.position.commit > first.position.commit);
  const refused = await rejects(WrongExpectedVersionError, () =>
    client.appendToStream(name, event("Placed", 9), { streamState: NO_STREAM }),
  );
  assert.equal(refused.actualState, 2n);
  await rejects(WrongExpectedVersionError, () =>
    client.appendToStream(`order-none-${tag}`, event("Placed", 9), { streamState: STREAM_EXISTS }),
  );
  await client.appendToStream(name, event("Shipped", 3), { streamState: ANY });

  // Reads of the stream both ways and with limits, of $all, and of a stream that is not there.
  const read = await collect(client.readStream(name));
  assert.deepEqual(numbers(read), [0, 1, 2, 3]);
  assert.deepEqual(read.map((e) => e.event.revision), [0n, 1n, 2n, 3n]);
  assert.ok(read.every((e) => e.event.streamId === name && e.event.isJson));
  assert.equal(read[0].event.type, "Placed");
  assert.ok(Math.abs(new Date(read[0].event.created).getTime() - Date.now()) < 60_000);
  assert.deepEqual(numbers(await collect(client.readStream(name, { direction: BACKWARDS, fromRevision: END, maxCount: 2 }))), [3, 2]);
  assert.deepEqual(numbers(await collect(client.readStream(name, { direction: FORWARDS, fromRevision: 1n, maxCount: 2 }))), [1, 2]);
  await rejects(StreamNotFoundError, () => collect(client.readStream(`order-404-${tag}`)));
  const all = (await collect(client.readAll({ fromPosition: START }))).filter((e) => e.event?.streamId === name);
  assert.deepEqual(numbers(all), [0, 1, 2, 3]);
  const newest = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 1 }));
  assert.equal(newest[0].event.streamId, name);

  // Subscriptions: from the start of a stream, and to $all filtered by stream name, caught up
  // and then live while events are written: every event once, in order.
  const follower = client.subscribeToStream(name, { fromRevision: START });
  const everything = client.subscribeToAll({
    fromPosition: START,
    filter: streamNameFilter({ prefixes: [name] }),
  });
  let caughtUp = false;
  everything.on("caughtUp", () => {
    caughtUp = true;
  });
  const live = 50;
  const writer = (async () => {
    for (let n = 4; n < 4 + live; n++) {
      await client.appendToStream(name, event("Noted", n), { streamState: ANY });
      await client.appendToStream(`noise-${tag}`, event("Tock", n), { streamState: ANY });
    }
  })();
  const take = async (subscription, count) => {
    const seen = [];
    for await (const resolved of subscription) {
      seen.push(resolved.event.data.n);
      if (seen.length === count) break;
    }
    await subscription.unsubscribe();
    return seen;
  };
  const expected = Array.from({ length: 4 + live }, (_, n) => n);
  assert.deepEqual(await take(follower, expected.length), expected);
  assert.deepEqual(await take(everything, expected.length), expected);
  await writer;
  assert.ok(caughtUp, "the $all subscription said it caught up");

  await client.dispose();
}

main(Number(process.argv[2])).then(
  () => {
    console.log("ok");
    process.exit(0);
  },
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
