"""The client-side reference for `ingest-kafka`: confluent-kafka (librdkafka's own
Python client) producing the very messages `pitwall ingest` sent, with the same
producer settings (idempotent, acks=all, lz4, murmur2 keys), to another topic.

Usage: peer_producer.py BROKERS SOURCE_TOPIC TARGET_TOPIC
Reads SOURCE_TOPIC whole into memory first (not timed), then produces and flushes
(timed) and prints: "peer EVENTS WALL_S CPU_S" (CPU: this process, librdkafka's
threads included).
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def read_all(brokers, topic):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-peer-reader",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    tps = [TopicPartition(topic, p, 0) for p in parts]
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign(tps)
    messages, done = [], {p for p, end in ends.items() if end == 0}
    while len(done) < len(parts):
        batch = c.consume(10000, timeout=5)
        if not batch:
            raise SystemExit(f"{topic}: stopped reading before the end offsets {ends}")
        for m in batch:
            if m.error():
                continue
            messages.append((m.key(), m.value()))
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
    c.close()
    return messages, len(parts)


def main():
    brokers, source, target = sys.argv[1:4]
    messages, partitions = read_all(brokers, source)
    # The target topic as pitwall creates its own: as many partitions as the source.
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(target, num_partitions=partitions, replication_factor=1)]).values():
        f.result()
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
                  "compression.type": "lz4", "linger.ms": 5, "batch.size": 1000000,
                  "partitioner": "murmur2_random", "queue.buffering.max.messages": 1000000})
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    cpu0, t0 = time.process_time(), time.perf_counter()
    for key, value in messages:
        while True:
            try:
                p.produce(target, value, key, on_delivery=report)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    p.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if failed:
        raise SystemExit(f"{len(failed)} deliveries failed, the first: {failed[0]}")
    print(f"peer {len(messages)} {wall:.3f} {cpu:.3f}")


if __name__ == "__main__":
    main()
