"""The client-side references for the Kafka scenarios: confluent-kafka (librdkafka's
own Python client) with the producer settings of `pitwall` (idempotent, acks=all,
lz4, murmur2 keys).

Usage: peer_producer.py BROKERS SOURCE_TOPIC TARGET_TOPIC [--passthrough]
Without --passthrough (the peer of `ingest-kafka`): reads SOURCE_TOPIC whole into
memory first (not timed), then produces its messages to TARGET_TOPIC and flushes
(timed). With --passthrough (the Kafka floor under `process`, which reads raw and
writes every event again to the clean topic): reads SOURCE_TOPIC and produces each
message to TARGET_TOPIC as it arrives, both timed, no processing and no lake.
Prints: "peer EVENTS WALL_S CPU_S" (CPU: this process, librdkafka's threads and the
Python loop included).
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def consumer(brokers, topic):
    """A consumer assigned every partition of `topic` from its start, and their end offsets."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-peer-reader",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
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


def main():
    brokers, source, target = sys.argv[1:4]
    passthrough = "--passthrough" in sys.argv[4:]
    c, ends = consumer(brokers, source)
    messages = []
    if not passthrough:
        read_each(c, source, ends, lambda m: messages.append((m.key(), m.value())))
    # The target topic as pitwall creates its own: as many partitions as the source.
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(target, num_partitions=len(ends), replication_factor=1)]).values():
        f.result()
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
                  "compression.type": "lz4", "linger.ms": 5, "batch.size": 1000000,
                  "partitioner": "murmur2_random", "queue.buffering.max.messages": 1000000})
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    def send(key, value):
        while True:
            try:
                p.produce(target, value, key, on_delivery=report)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    if passthrough:
        n = read_each(c, source, ends, lambda m: send(m.key(), m.value()))
    else:
        for key, value in messages:
            send(key, value)
        n = len(messages)
    p.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c.close()
    if failed:
        raise SystemExit(f"{len(failed)} deliveries failed, the first: {failed[0]}")
    print(f"peer {n} {wall:.3f} {cpu:.3f}")


if __name__ == "__main__":
    main()
