"""The client-side references for the Kafka scenarios: confluent-kafka (librdkafka's
own Python client) with the producer settings of `pitwall` (idempotent, acks=all,
lz4, murmur2 keys).

Usage: peer_producer.py BROKERS SOURCE_TOPIC TARGET_TOPIC [--outputs] [--quiet]
Without --outputs (the peer of `ingest-kafka`): reads SOURCE_TOPIC whole into memory
first (not timed), then produces its messages to TARGET_TOPIC and flushes (timed).
With --outputs (the Kafka floor under `process`): reads the messages `pitwall process`
wrote to its output topics (clean, metrics, anomalies, dlq and late under
SOURCE_TOPIC's prefix) into memory first (not timed), then reads SOURCE_TOPIC and
produces those messages as the raw ones arrive, in step, each to TARGET_TOPIC.<its
suffix> (timed): the Kafka reads and writes of the processor, with no processing and
no lake.
Prints: "peer EVENTS WALL_S CPU_S", and on stderr, unless --quiet, the messages and bytes
of each output topic read (CPU: this process, librdkafka's threads and the
Python loop included).
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def consumer(brokers, topic):
    """A consumer assigned every partition of `topic` from its start, and their end offsets."""
    # pitwall's fetch settings (kafka.fetch-wait, kafka.fetch-bytes): tansu holds every
    # fetch that is not full for the whole wait (librdkafka's default is 500 ms).
    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-peer-reader",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "fetch.wait.max.ms": 10, "fetch.max.bytes": 2 << 20})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    return c, ends


def read_each(c, topic, ends, take):
    """Calls take(message) for every message of the assigned partitions up to their ends."""
    done = {p for p, end in ends.items() if end == 0}
    n, idle = 0, 0.0
    while len(done) < len(ends):
        # consume() waits for the whole batch or the timeout: a short timeout keeps the
        # last, partial batch of each partition from adding a wait to the time.
        batch = c.consume(10000, timeout=0.05)
        if not batch:
            idle += 0.05
            if idle >= 5:
                raise SystemExit(f"{topic}: stopped reading before the end offsets {ends}")
            continue
        idle = 0.0
        for m in batch:
            if m.error():
                continue
            take(m)
            n += 1
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
    return n


def read_topic(brokers, topic):
    c, ends = consumer(brokers, topic)
    messages = []
    read_each(c, topic, ends, lambda m: messages.append((m.key(), m.value())))
    c.close()
    return messages


def main():
    brokers, source, target = sys.argv[1:4]
    outputs = "--outputs" in sys.argv[4:]
    quiet = "--quiet" in sys.argv[4:]
    admin = AdminClient({"bootstrap.servers": brokers})
    # (target topic, key, value) to send, and the target topics with their partitions.
    sends, targets = [], {}
    if outputs:
        prefix = source.rsplit(".", 1)[0] + "."
        topics = admin.list_topics(timeout=10).topics
        outputs = [prefix + t for t in ("clean", "metrics", "anomalies", "dlq", "late")]
        for name in (t for t in outputs if t in topics):
            to = f"{target}.{name[len(prefix):]}"
            targets[to] = len(topics[name].partitions)
            messages = read_topic(brokers, name)
            sends.extend((to, k, v) for k, v in messages)
            if messages and not quiet:
                print(f"  ({name}: {len(messages)} messages, {sum(len(v or b'') for _, v in messages)} bytes)", file=sys.stderr)
    else:
        messages = read_topic(brokers, source)
        sends = [(target, k, v) for k, v in messages]
    c, ends = consumer(brokers, source)
    targets.setdefault(target, len(ends))
    # Target topics as pitwall creates its own: as many partitions as their sources.
    for f in admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in targets.items()]).values():
        f.result()
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
                  "compression.type": "lz4", "linger.ms": 5, "batch.size": 1000000,
                  "partitioner": "murmur2_random", "queue.buffering.max.messages": 1000000})
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    def send(upto):
        while send.next < upto:
            to, key, value = sends[send.next]
            try:
                p.produce(to, value, key, on_delivery=report)
                send.next += 1
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    send.next = 0

    cpu0, t0 = time.process_time(), time.perf_counter()
    if outputs:
        total = sum(ends.values())

        def take(_m):
            take.n += 1
            send(min(len(sends), len(sends) * take.n // total))
        take.n = 0
        n = read_each(c, source, ends, take)
        send(len(sends))
    else:
        send(len(sends))
        n = len(sends)
    p.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c.close()
    if failed:
        raise SystemExit(f"{len(failed)} deliveries failed, the first: {failed[0]}")
    print(f"peer {n} {wall:.3f} {cpu:.3f}")


if __name__ == "__main__":
    main()
