"""Reads pitwall's output topics with kafka-python, a client independent of librdkafka,
and checks them against what the lake holds: message counts per topic, JSON payloads,
keys equal to the record's source id, and partitions where the Java client's murmur2
places those keys.

Usage: kafka_check.py BROKERS EXPECTED_JSON   ({"topic": message_count, ...}; for the
metrics topic, [messages, field rows]: one message per window fire, holding the
aggregates of each of its fields, which are the lake's metrics.windows rows)
Prints "kafka-python agrees" and exits 0, or says what differs and exits 1.
"""

import json
import sys

from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2


def source_id(topic, value):
    if topic.endswith(".clean"):
        tags = value["tags"]
        return tags.get("driver") or tags.get("sensor_id") or tags.get("host")
    return value.get("source_id")


def main():
    brokers, expected = sys.argv[1], json.loads(sys.argv[2])
    problems = []
    for topic, want in expected.items():
        want, want_fields = want if isinstance(want, list) else (want, None)
        fields = 0
        consumer = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False,
                                 consumer_timeout_ms=5000, api_version_auto_timeout_ms=10000)
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        if not partitions:
            problems.append(f"{topic}: no partitions")
            continue
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        got = 0
        per_partition = {tp.partition: 0 for tp in tps}
        seen = {tp.partition: set() for tp in tps}
        repeated = {tp.partition: 0 for tp in tps}
        done = {tp: ends[tp] == 0 for tp in tps}
        # Read to the reported end offsets, then on until nothing more comes: tansu 0.6
        # sometimes reports an end offset below records it serves (seen after a broker
        # freeze), and a reader that trusted it would stop short.
        while True:
            batch = consumer.poll(timeout_ms=5000 if not all(done.values()) else 2000, max_records=5000)
            if not batch:
                if not all(done.values()):
                    problems.append(f"{topic}: stopped before the end offsets {ends}")
                break
            for tp, records in batch.items():
                for r in records:
                    got += 1
                    per_partition[tp.partition] += 1
                    if r.offset in seen[tp.partition]:
                        repeated[tp.partition] += 1
                    seen[tp.partition].add(r.offset)
                    value = json.loads(r.value)
                    if want_fields is not None:
                        fields += len(value["fields"])
                        for name, agg in value["fields"].items():
                            if agg["count"] < 1 or agg["min"] is None or agg["min"] > agg["max"]:
                                problems.append(f"{topic}: {name} of {value['source_id']} has aggregates out of order: {agg}")
                    if not topic.endswith(".dlq"):
                        sid = source_id(topic, value)
                        if r.key is None or r.key.decode() != sid:
                            problems.append(f"{topic}@{tp.partition}/{r.offset}: key {r.key!r}, source id {sid!r}")
                        elif (murmur2(r.key) & 0x7FFFFFFF) % len(partitions) != tp.partition:
                            problems.append(f"{topic}: key {r.key!r} in partition {tp.partition}, murmur2 says otherwise")
                    elif "reason" not in value or "offset" not in value.get("origin", value):
                        problems.append(f"{topic}: DLQ record without reason or origin: {value}")
                    if r.offset + 1 >= ends[tp]:
                        done[tp] = True
        if got != want:
            begins = consumer.beginning_offsets(tps)
            spans = {tp.partition: (begins[tp], ends[tp]) for tp in tps}
            problems.append(f"{topic}: {got} messages, the lake has {want} rows "
                            f"(read per partition {per_partition}, offsets [begin, end) {spans}, "
                            f"offsets read more than once {repeated})")
        elif want_fields is not None and fields != want_fields:
            problems.append(f"{topic}: {got} messages hold {fields} fields' aggregates, the lake has {want_fields} rows")
        else:
            print(f"{topic}: {got} messages, keys and partitions as murmur2 places them")
        consumer.close()
    if problems:
        print("\n".join(problems[:20]))
        sys.exit(1)
    print("kafka-python agrees")


if __name__ == "__main__":
    main()
